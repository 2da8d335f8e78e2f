"""A role of two replicas end to end: booted by ``vllm_server(replicas=2)`` on the CPU profile (one
core each), then the same two servers given to an inner session as ``--vllm-url base=URL1,URL2``.

The two replicas boot once, side by side (~40-60 s here); the inner session boots nothing. Checked:
round robin spreads a closed loop so the replicas' counts differ by at most one, least-outstanding
uses both, telemetry samples both (combined and per replica), a conversation keeps to one replica; the inner session's
vllm_bench reports each replica's share and the combined throughput (results.json and summary.md),
and the smoke suite runs once on each replica.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from pytest_vllm.hostclass import EMULATE_AVX2_ENV
from pytest_vllm.load.balancer import LEAST_OUTSTANDING
from pytest_vllm.load.runner import Target, run_workload
from pytest_vllm.load.sessions import ConversationRun, MultiTurnWorkload, run_conversations
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.metrics import compute
from pytest_vllm.perf.replicas import replica_shares

pytestmark = pytest.mark.integration

SMOKE_SUITE = Path(__file__).resolve().parents[2] / "suites" / "test_smoke.py"
WORKLOAD = Workload(name="spread", input_len=32, output_len=8, num_requests=9, concurrency=3, repeats=1)
INNER = """
from pytest_vllm.load.workload import Workload

WORKLOAD = Workload(name="spread", input_len=32, output_len=8, num_requests=9, concurrency=3, repeats=1)

def test_spread(base_server, vllm_bench):
    assert len(base_server.members) == 2
    vllm_bench.run(base_server, WORKLOAD)
"""


@pytest.mark.vllm_server(replicas=2, enforce_eager=True)
def test_two_replicas_share_one_roles_load_booted_and_by_url(base_server, vllm_session, request,
                                                            pytester: pytest.Pytester,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    urls = base_server.replica_urls
    assert len(set(urls)) == 2, base_server.describe()
    servers = vllm_session.servers_used_by(request.node.nodeid)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) == 2:  # the CPU profile splits the cores: one each
        assert sorted(s.plan.env["VLLM_CPU_OMP_THREADS_BIND"] for s in servers) == ["0", "1"]

    run = run_workload(base_server.url, base_server.model, WORKLOAD, api_key=base_server.api_key,
                       replicas=urls).runs[0]
    assert all(r.ok for r in run.records), [r.error for r in run.records]
    counts = Counter(r.replica for r in run.records)
    assert set(counts) == set(urls) and max(counts.values()) - min(counts.values()) <= 1, counts
    shares = replica_shares([run.records], [run.duration])
    combined = compute(run)["output_throughput"]
    assert sum(s.output_throughput for s in shares) == pytest.approx(combined)
    print(f"round robin: {dict(counts)}; combined {combined:.1f} tok/s; "
          + ", ".join(f"{s.replica} {s.output_throughput:.1f} tok/s" for s in shares))

    least = run_workload(base_server.url, base_server.model, WORKLOAD.with_(seed=1), api_key=base_server.api_key,
                         replicas=urls, balance=LEAST_OUTSTANDING).runs[0]
    assert all(r.ok for r in least.records) and {r.replica for r in least.records} == set(urls)

    # /metrics of every replica, read as one server: two streams round robin run one on each, so
    # the role's running peak reaches 2 where either replica alone mostly shows 1.
    sampled = run_workload(base_server.url, base_server.model, WORKLOAD.with_(seed=2, concurrency=2, output_len=24),
                           api_key=base_server.api_key, replicas=urls, telemetry_interval=0.1).runs[0]
    telemetry = sampled.telemetry
    assert telemetry is not None and telemetry.samples >= 3, telemetry
    assert telemetry.requests_running_peak is not None and telemetry.requests_running_peak >= 2, telemetry
    # ... and each replica's own figures over the same ticks: both ran requests, and the role's peak
    # (of the per-tick sums) is at most the sum of theirs.
    assert set(sampled.replica_telemetry) == set(urls), sampled.replica_telemetry
    own = list(sampled.replica_telemetry.values())
    assert all(o.samples == telemetry.samples and (o.requests_running_peak or 0) >= 1 for o in own), own
    assert telemetry.requests_running_peak <= sum(o.requests_running_peak or 0 for o in own), own

    # Conversations over the replicas: every turn of one goes to its replica, whose cache holds its history.
    talks = run_conversations(Target(base_server.url, base_server.model, base_server.api_key, replicas=urls),
                              MultiTurnWorkload(name="sticky", num_requests=2, concurrency=2, turns=2, input_len=112,
                                                output_len=8, warmup_requests=0, repeats=1)).runs[0]
    assert isinstance(talks, ConversationRun) and all(r.ok for r in talks.records), [r.error for r in talks.records]
    by_conversation = [{r.replica for r in talks.records[i:i + 2]} for i in (0, 2)]
    assert by_conversation == [{urls[0]}, {urls[1]}], by_conversation
    assert talks.prefix_cache is not None and talks.prefix_cache.hits > 0, talks.prefix_cache

    # The same two servers started "by hand" for an inner session: --vllm-url base=URL1,URL2.
    monkeypatch.delenv(EMULATE_AVX2_ENV, raising=False)
    pytester.makepyfile(test_inner=INNER, test_smoke=SMOKE_SUITE.read_text())
    reports = pytester.path / "reports"
    inner = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-v", "--vllm-url", f"base={urls[0]},{urls[1]}", "--vllm-report-dir", str(reports),
        "--vllm-baseline-dir", str(pytester.path / "no-baselines"), "--vllm-api-key", base_server.api_key,
        "-k", "spread or models_endpoint")
    inner.assert_outcomes(passed=3, skipped=1)  # test_spread, the smoke test on each replica; no compressed server
    inner.stdout.fnmatch_lines(["*test_models_endpoint_lists_the_served_model?base-replica1? PASSED*",
                                "*test_models_endpoint_lists_the_served_model?base-replica2? PASSED*"])
    measurement = json.loads((reports / "results.json").read_text())["performance"]["measurements"][0]
    by_replica = {share["replica"]: share["requests"] for share in measurement["replicas"]}
    assert set(by_replica) == set(urls) and max(by_replica.values()) - min(by_replica.values()) <= 1, by_replica
    assert all(share["kv_cache_usage_peak"] is not None for share in measurement["replicas"]), measurement["replicas"]
    assert measurement["metrics"]["output_throughput"]["median"] > 0
    summary = (reports / "summary.md").read_text()
    assert "vllm performance: replicas" in summary and "| combined |" in summary
