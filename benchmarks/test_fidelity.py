"""Fidelity benchmark: our load generator against `vllm bench serve`, same server, same workload.

    pytest benchmarks/test_fidelity.py --gpu cpu -s        (add --gpu h100 ... on a GPU)
    FIDELITY_TURNS=3 pytest ...                            (fewer turns: a GPU call of limited time)

For each concurrency level of the GPU profile the two clients take turns (ours, vLLM's, ours, ...)
on the same running base server with the same lengths (random prompts of exact length,
ignore_eos), and the medians of their runs are compared. Target: output throughput, TTFT p50 and
TPOT p50 within ±5% of vLLM's. The figures are printed and written to
``.pytest_vllm/reports/fidelity.json``; the test fails when a ratio misses the target.
"""

from __future__ import annotations

import json
import os
import statistics

import pytest

from pytest_vllm.load.runner import run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.metrics import compute

from .vllm_bench import run_vllm_bench

TURNS = int(os.environ.get("FIDELITY_TURNS", "5"))  # runs per client per level, interleaved
TARGET = 0.05
PAIRS = (("output_throughput", "output_throughput"), ("ttft_p50", "median_ttft_ms"), ("tpot_p50", "median_tpot_ms"))


# Prefix caching off: the two clients' prompts differ, and a cache hit for one of them would be a
# difference in the workload, not in the measurement.
@pytest.mark.vllm_server(enable_prefix_caching=False)
def test_fidelity_against_vllm_bench_serve(base_server, vllm_session) -> None:
    profile = vllm_session.profile
    base = Workload(name="fidelity", input_len=256, output_len=64, repeats=1)
    rows, misses = [], []
    per_slot = profile.requests_per_slot
    for concurrency in profile.concurrency_levels:
        workload = base.with_(concurrency=concurrency, num_requests=max(16, 2 * per_slot * concurrency),
                              name=f"fidelity_c{concurrency}")
        ours: dict[str, list[float]] = {k: [] for k, _ in PAIRS}
        theirs: dict[str, list[float]] = {k: [] for k, _ in PAIRS}
        for turn in range(TURNS):
            runs = run_workload(base_server.url, base_server.model, workload.with_(seed=turn))
            run = runs.runs[0]
            mine = compute(run.records, run.duration)
            assert not mine.errors, mine.errors[:3]
            result = run_vllm_bench(python=vllm_session.config.python, base_url=base_server.url,
                                    model=base_server.model, tokenizer=base_server.spec.model,
                                    input_len=workload.input_len, output_len=workload.output_len,
                                    num_prompts=workload.num_requests, concurrency=concurrency,
                                    warmups=concurrency, seed=turn,
                                    out_dir=vllm_session.config.report_dir / "vllm-bench",
                                    label=f"c{concurrency}-{turn}")
            assert result["completed"] == workload.num_requests, result.get("errors")
            for ours_key, their_key in PAIRS:
                ours[ours_key].append(mine[ours_key])
                theirs[ours_key].append(float(result[their_key]))
            vllm_session.say(f"fidelity c{concurrency} turn {turn + 1}/{TURNS}: ours {mine['output_throughput']:.1f} "
                             f"tok/s, vllm {float(result['output_throughput']):.1f} tok/s")
        for metric, _ in PAIRS:
            a, b = statistics.median(ours[metric]), statistics.median(theirs[metric])
            ratio = a / b if b else float("nan")
            ok = abs(ratio - 1) <= TARGET
            rows.append({"concurrency": concurrency, "metric": metric, "ours": a, "vllm": b, "ratio": ratio, "ok": ok})
            if not ok:
                misses.append(f"c{concurrency} {metric}: ratio {ratio:.3f}")
        # written after every level, so a run cut short (a GPU call's time limit) still leaves its figures
        out = vllm_session.config.report_dir / "fidelity.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"profile": profile.name, "device": vllm_session.device.name, "turns": TURNS,
                                   "rows": rows}, indent=1))
        vllm_session.say("\n".join(_table(rows[-len(PAIRS):], f"c{concurrency}")))
    print("\n" + "\n".join(_table(rows, f"{profile.name} ({vllm_session.device.name})")))
    assert not misses, "outside ±5% of vllm bench serve: " + "; ".join(misses)


def _table(rows: list[dict], where: str) -> list[str]:
    lines = [f"fidelity on {where}, {TURNS} interleaved runs each, medians:",
             f"{'conc':>5} {'metric':<18} {'ours':>10} {'vllm':>10} {'ratio':>7}  within ±{TARGET:.0%}"]
    return lines + [f"{r['concurrency']:>5} {r['metric']:<18} {r['ours']:10.2f} {r['vllm']:10.2f} {r['ratio']:7.3f}  "
                    f"{'yes' if r['ok'] else 'NO'}" for r in rows]
