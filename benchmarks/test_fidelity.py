"""Fidelity benchmark: our load generator against `vllm bench serve`, same server, same workload.

    pytest benchmarks/test_fidelity.py --gpu cpu -s        (add --gpu h100 ... on a GPU)
    FIDELITY_TURNS=4 FIDELITY_LEVELS=1,64 pytest ...       (fewer turns or levels: a GPU call of limited time)

For each concurrency level of the GPU profile the two clients take turns on the same running
base server with the same lengths (random prompts of exact length, ignore_eos). The order
alternates (ours first, then vLLM's first, ...) and each turn's two runs form a pair: the
figure compared is the median over turns of ours/vLLM's per pair, so a server that drifts during
the benchmark (a shared host speeding up or slowing down) moves both sides of a pair alike.
Target: output throughput, TTFT p50 and TPOT p50 within ±5%. The figures are printed and written
to ``.pytest_vllm/reports/fidelity.json``; the test fails when a ratio misses the target.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

import pytest

from pytest_vllm.load.runner import run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.metrics import compute
from pytest_vllm.server.handle import ServerHandle

from .vllm_bench import run_vllm_bench

TURNS = int(os.environ.get("FIDELITY_TURNS", "7"))  # pairs of runs per level
LEVELS = os.environ.get("FIDELITY_LEVELS", "")  # "1,64": these concurrencies instead of the profile's
TARGET = 0.05
PAIRS = (("output_throughput", "output_throughput"), ("ttft_p50", "median_ttft_ms"), ("tpot_p50", "median_tpot_ms"))


# Prefix caching off: the two clients' prompts differ, and a cache hit for one of them would be a
# difference in the workload, not in the measurement.
@pytest.mark.vllm_server(enable_prefix_caching=False)
def test_fidelity_against_vllm_bench_serve(base_server, vllm_session) -> None:
    profile = vllm_session.profile
    base = Workload(name="fidelity", input_len=256, output_len=64, repeats=1)
    levels = [int(c) for c in LEVELS.split(",")] if LEVELS else list(profile.concurrency_levels)
    rows: list[dict[str, Any]] = []
    misses: list[str] = []
    per_slot = profile.requests_per_slot
    for concurrency in levels:
        workload = base.with_(concurrency=concurrency, num_requests=max(16, 2 * per_slot * concurrency),
                              name=f"fidelity_c{concurrency}")
        pairs: list[tuple[dict[str, float], dict[str, float]]] = []
        for turn in range(TURNS):
            if turn % 2 == 0:
                mine = _ours(base_server, workload.with_(seed=turn))
                theirs = _vllm_bench(base_server, vllm_session, workload.with_(seed=turn))
            else:
                theirs = _vllm_bench(base_server, vllm_session, workload.with_(seed=turn))
                mine = _ours(base_server, workload.with_(seed=turn))
            pairs.append((mine, theirs))
            vllm_session.say(f"fidelity c{concurrency} turn {turn + 1}/{TURNS} ({'ours' if turn % 2 == 0 else 'vllm'} "
                             f"first): " + ", ".join(f"{key} {mine[key]:.2f}/{theirs[key]:.2f}" for key, _ in PAIRS))
        for metric, _ in PAIRS:
            ratios = [m[metric] / t[metric] for m, t in pairs if t[metric]]
            ratio = statistics.median(ratios) if ratios else float("nan")
            ok = abs(ratio - 1) <= TARGET
            rows.append({"concurrency": concurrency, "metric": metric,
                         "ours": statistics.median(m[metric] for m, _ in pairs),
                         "vllm": statistics.median(t[metric] for _, t in pairs),
                         "ratio": ratio, "pair_ratios": ratios, "ok": ok})
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


def _ours(server: ServerHandle, workload: Workload) -> dict[str, float]:
    run = run_workload(server.url, server.model, workload).runs[0]
    mine = compute(run)
    assert not mine.errors, mine.errors[:3]
    return {key: mine[key] for key, _ in PAIRS}


def _vllm_bench(server: ServerHandle, vllm_session: Any, workload: Workload) -> dict[str, float]:
    concurrency = workload.concurrency or 1
    result = run_vllm_bench(python=vllm_session.config.python, base_url=server.url, model=server.model,
                            tokenizer=server.spec.model if server.spec else server.model, input_len=workload.input_len,
                            output_len=workload.output_len, num_prompts=workload.num_requests,
                            concurrency=concurrency, warmups=concurrency, seed=workload.seed,
                            out_dir=vllm_session.config.report_dir / "vllm-bench",
                            label=f"c{concurrency}-{workload.seed}")
    assert result["completed"] == workload.num_requests, result.get("errors")
    return {key: float(result[their_key]) for key, their_key in PAIRS}


def _table(rows: list[dict[str, Any]], where: str) -> list[str]:
    lines = [f"fidelity on {where}, {TURNS} pairs of runs in alternating order; medians, and the median of the "
             "per-pair ratios:",
             f"{'conc':>5} {'metric':<18} {'ours':>10} {'vllm':>10} {'ratio':>7}  within ±{TARGET:.0%}  "
             "per-pair ratios"]
    return lines + [f"{r['concurrency']:>5} {r['metric']:<18} {r['ours']:10.2f} {r['vllm']:10.2f} {r['ratio']:7.3f}  "
                    f"{'yes' if r['ok'] else 'NO ':<10} {' '.join(f'{x:.3f}' for x in r['pair_ratios'])}"
                    for r in rows]
