"""Noise-gate benchmark: does the gate stay quiet on A/A reruns and catch a real slowdown?

    pytest benchmarks/test_noise_gate.py --gpu cpu -s      (NOISE_TRIALS=10 for more trials)

A baseline is recorded on the reference server (the default base spec), then trials alternate:
an A/A rerun of the same configuration, and the same server with ``max_num_seqs`` cut below the
workload's concurrency, so it serves fewer requests at once (a real, server-side slowdown of
25% or more in throughput). Each trial is one gated measurement (median of 3 repetitions against
the baseline with the default budgets and noise policy, as the suites use them). Printed: the
false-alarm rate (A/A trials that fail) and the detection rate (slowed trials that fail).
"""

from __future__ import annotations

import json
import os
from typing import Any

from pytest_vllm.bench import settings_for
from pytest_vllm.budgets import evaluate
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.runner import run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.metrics import RepeatedResult, compute

TRIALS = int(os.environ.get("NOISE_TRIALS", "5"))  # A/A and slowed trials each


def workload_for(profile: GPUProfile) -> Workload:
    """Concurrency 4, a few seconds per run: 12 requests on a CPU, 64 on a GPU (12 would last
    a tenth of a second there, all noise)."""
    return Workload(name="noise_gate", num_requests=64 if profile.is_gpu else 12, input_len=128,
                    output_len=32, concurrency=4)


def measure(server, workload: Workload) -> RepeatedResult:
    runs = run_workload(server.url, server.model, workload).runs
    result = RepeatedResult([compute(r.records, r.duration) for r in runs])
    assert not result.errors, result.errors[:3]
    return result


def gate(result: RepeatedResult, baseline: RepeatedResult, settings) -> tuple[bool, list[str]]:
    """True when every default budget passes; the failing checks otherwise."""
    failures = []
    for metric, budget in settings.default_budgets.items():
        check = evaluate(budget, result.median(metric), baseline.median(metric), baseline.spread(metric),
                         settings.noise)
        if not check.passed:
            failures.append(f"{metric} {check.current:.2f} vs limit {check.limit:.2f}")
    return not failures, failures


def test_false_alarm_and_detection_rates(base_server, vllm_server_factory, vllm_session) -> None:
    settings = settings_for(vllm_session.config, vllm_session.profile, vllm_session.device.name,
                            vllm_session.device.driver, vllm_session.vllm_version)
    workload = workload_for(vllm_session.profile)
    slowed = vllm_server_factory(role="slowed", max_num_seqs=max(1, (workload.concurrency or 1) // 2))
    baseline = measure(base_server, workload)
    vllm_session.say(f"baseline: {baseline.median('output_throughput'):.1f} tok/s, spread "
                     f"{baseline.spread('output_throughput'):.1%}")
    rows: list[dict[str, Any]] = []
    for trial in range(TRIALS):
        for kind, server in (("A/A", base_server), ("slowed", slowed)):
            result = measure(server, workload.with_(seed=trial + 1))
            ok, failures = gate(result, baseline, settings)
            change = result.median("output_throughput") / baseline.median("output_throughput") - 1
            rows.append({"trial": trial, "kind": kind, "throughput_change": change, "gate_passed": ok,
                         "failures": failures})
            vllm_session.say(f"trial {trial + 1}/{TRIALS} {kind}: throughput {change:+.1%}, "
                             f"gate {'passed' if ok else 'FAILED: ' + '; '.join(failures)}")
    aa = [r for r in rows if r["kind"] == "A/A"]
    slow = [r for r in rows if r["kind"] == "slowed"]
    false_alarms = sum(not r["gate_passed"] for r in aa) / len(aa)
    detection = sum(not r["gate_passed"] for r in slow) / len(slow)
    mean_slowdown = sum(r["throughput_change"] for r in slow) / len(slow)
    summary = (f"noise gate on {vllm_session.profile.name}: {TRIALS} A/A and {TRIALS} slowed trials "
               f"(noise_k {settings.noise.noise_k}, max tolerance {settings.noise.max_tolerance:.0%}); "
               f"baseline spread {baseline.spread('output_throughput'):.1%}; slowed throughput {mean_slowdown:+.1%}\n"
               f"false-alarm rate {false_alarms:.0%}, detection rate {detection:.0%}")
    print("\n" + summary)
    out = vllm_session.config.report_dir / "noise_gate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "false_alarm_rate": false_alarms, "detection_rate": detection,
                               "slowed_throughput_change": mean_slowdown}, indent=1))
    assert mean_slowdown <= -0.25, "the slowed server must be at least 25% slower for the check to mean anything"
    assert false_alarms <= 0.2 and detection >= 0.8, summary
