"""Noise-gate benchmark: across fresh boots, does the gate stay quiet on healthy servers and catch
slowdowns of a known size?

    pytest benchmarks/test_noise_gate.py --gpu cpu -s          (NOISE_TRIALS=8 for more boots)

What users live with is the noise between boots and hosts, not between two runs of one server, so
every trial is a freshly booted server, two at a time (as the suites' pair boots). Three kinds of
trial, ``NOISE_TRIALS`` boots each (default 6):

* A/A: the reference configuration;
* slowed, about 15% and about 30%: real, server-side slowdowns. On the CPU profile the same server
  without torch.compile (``enforce_eager``: -13% throughput at concurrency 4 on the 2-core host),
  and that with ``max_num_seqs`` cut below the concurrency as well (3 of 4 slots alone: -22.5%);
  on GPU profiles ``max_num_seqs`` at 90% and 60% of the concurrency. Their true size is printed:
  the slowed boots' median throughput against the A/A boots'.

Each trial is one measurement of the suite's own throughput workload at the profile's highest
concurrency, gated by the suites' judge (``pytest_vllm.perf.judge.judge``: default budgets, the
profile's noise prior, 1% false alarms per check) against a pooled baseline of three *other* A/A
boots (leave-one-out), as a host class with three recordings has it. Printed: the false-alarm
rate (A/A trials that fail), the detection rate per slowdown size, each with its 95% Wilson
interval, the between-boot spread measured, and every trial. Written to
``.pytest_vllm/reports/noise_gate.json``.

Its servers are the perf pair's base model (``vllm_perf_pair``): on GPU profiles the 8B-shaped
Llama of random weights that the perf suite gates (``--vllm-perf-model``), whose noise is the
GPU's; on the cpu profile the embedded model, as before. Not yet run on a GPU with it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_vllm import baselines
from pytest_vllm.accuracy.stats import wilson_interval
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.runner import run_workload
from pytest_vllm.perf.gate import settings_for
from pytest_vllm.perf.judge import judge
from pytest_vllm.perf.metrics import RepeatedResult, compute
from pytest_vllm.perf.results import Measurement

pytestmark = pytest.mark.vllm_perf_pair

TRIALS = int(os.environ.get("NOISE_TRIALS", "6"))  # boots of each kind
POOL = 3  # recordings in each trial's baseline
GATED = ("output_throughput", "ttft_p50", "tpot_p50")


@dataclass
class Trial:
    kind: str  # "A/A", "slowed ~15%", "slowed ~30%"
    boot: int
    flags: dict[str, Any]
    result: RepeatedResult | None = None


def slowdowns(profile: GPUProfile, concurrency: int) -> dict[str, dict[str, Any]]:
    """Server flags for about 15% and about 30% less throughput at ``concurrency`` (see above)."""
    if not profile.is_gpu:
        return {"slowed ~15%": {"enforce_eager": True},
                "slowed ~30%": {"enforce_eager": True, "max_num_seqs": max(1, round(concurrency * 0.75))}}
    return {"slowed ~15%": {"max_num_seqs": max(1, round(concurrency * 0.9))},
            "slowed ~30%": {"max_num_seqs": max(1, round(concurrency * 0.6))}}


def measure(server, workload) -> RepeatedResult:
    runs = run_workload(server.url, server.model, workload).runs
    result = RepeatedResult([compute(r) for r in runs])
    assert not result.errors, result.errors[:3]
    return result


def test_false_alarm_and_detection_rates_across_boots(vllm_server_factory, vllm_session, tmp_path: Path) -> None:
    import suites.test_perf as suite

    profile = vllm_session.profile
    workload = suite.throughput(profile, profile.concurrency_levels[-1])
    trials = [Trial("A/A", i, {}) for i in range(TRIALS)]
    for kind, flags in slowdowns(profile, workload.concurrency or 1).items():
        trials += [Trial(kind, i, flags) for i in range(TRIALS)]
    # Interleave the kinds, so a host that drifts over the benchmark moves all of them alike.
    order = sorted(trials, key=lambda t: (t.boot, t.kind))
    for first, second in zip(order[::2], order[1::2] + [None] * (len(order) % 2)):
        pair = [t for t in (first, second) if t is not None]
        servers = [vllm_server_factory(role=f"trial{n}", env={"PYTEST_VLLM_BOOT": f"{t.kind}-{t.boot}"}, **t.flags)
                   for n, t in enumerate(pair)]
        for trial, server in zip(pair, servers):
            trial.result = measure(server, workload)
            vllm_session.say(f"{trial.kind} boot {trial.boot + 1}: {trial.result.median('output_throughput'):.2f} "
                             f"tok/s, TTFT p50 {trial.result.median('ttft_p50'):.0f} ms")

    healthy = [t for t in trials if t.kind == "A/A"]
    settings = settings_for(vllm_session.config, profile, "noise-gate", {})
    settings.baseline_dir = tmp_path

    def gate(trial: Trial, pool: list[Trial]) -> tuple[bool, list[str]]:
        stored = Measurement("noise::gate", "base", "m", workload, pool[0].result, "k", {})
        key = stored.baseline_key("noise-gate")
        for n, recorded in enumerate(pool):
            entry = Measurement("noise::gate", "base", "m", workload, recorded.result, "k", {}).entry(
                {"recorded_at": f"boot-{n}"})
            baselines.write(tmp_path, key, entry, pool=n > 0)
        baseline = baselines.load(tmp_path, key)
        current = Measurement("noise::gate", "base", "m", workload, trial.result, "k", {})
        checks = judge(current, settings.default_budgets, baseline, settings)
        return all(c.passed for c in checks), [f"{c.metric} {c.current:.2f} vs limit {c.limit:.2f}"
                                               for c in checks if not c.passed]

    rows = []
    for trial in trials:
        others = [t for t in healthy if t is not trial]
        start = trial.boot % len(others)
        pool = (others[start:] + others[:start])[:POOL]
        passed, failures = gate(trial, pool)
        rows.append({"kind": trial.kind, "boot": trial.boot, "flags": trial.flags, "passed": passed,
                     "failures": failures, **{m: trial.result.median(m) for m in GATED},
                     "runs": {m: trial.result.values(m) for m in GATED}})

    reference = statistics.median(r["output_throughput"] for r in rows if r["kind"] == "A/A")
    lines = [f"noise gate on {profile.name} ({vllm_session.host_class}), {TRIALS} fresh boots per kind, each judged "
             f"against a pool of {POOL} other A/A boots; workload {workload.describe()}"]
    summary: dict[str, Any] = {}
    for kind in ("A/A", *slowdowns(profile, workload.concurrency or 1)):
        mine = [r for r in rows if r["kind"] == kind]
        failed = sum(not r["passed"] for r in mine)
        low, high = wilson_interval(failed, len(mine))
        size = statistics.median(r["output_throughput"] for r in mine) / reference - 1
        what = "false alarms" if kind == "A/A" else "detected"
        lines.append(f"  {kind:<12} throughput {size:+.1%} against the A/A median: {what} {failed}/{len(mine)} "
                     f"({failed / len(mine):.0%}, 95% interval {low:.0%}-{high:.0%})")
        summary[kind] = {"true_throughput_change": size, "failed": failed, "trials": len(mine),
                         "interval": [low, high]}
    for metric in GATED:
        logs = [math.log(r[metric]) for r in rows if r["kind"] == "A/A"]
        within = statistics.fmean(statistics.stdev(math.log(v) for v in r["runs"][metric])
                                  for r in rows if r["kind"] == "A/A")
        lines.append(f"  {metric}: between boots sd {statistics.stdev(logs):.1%} of the boot medians, within a "
                     f"boot sd {within:.1%} (the profile's prior: {profile.boot_noise_of(metric):.1%})")
        summary[f"{metric}_between_boot_sd"] = statistics.stdev(logs)
        summary[f"{metric}_within_boot_sd"] = within
    lines += [f"    {r['kind']:<12} boot {r['boot'] + 1}: {r['output_throughput']:.2f} tok/s, "
              f"TTFT {r['ttft_p50']:.0f} ms, TPOT {r['tpot_p50']:.1f} ms: "
              f"{'passed' if r['passed'] else 'FAILED ' + '; '.join(r['failures'])}" for r in rows]
    print("\n" + "\n".join(lines))
    out = vllm_session.config.report_dir / "noise_gate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"profile": profile.name, "host_class": vllm_session.host_class,
                               "workload": workload.to_dict(), "summary": summary, "rows": rows}, indent=1))
    assert summary["A/A"]["failed"] <= max(1, TRIALS // 5), "\n".join(lines)
