"""A capacity measurement through the perf machinery: recorded as a baseline, judged against it
(and as a pair ratio), and shown in the report's tables, JSON and goodput plot.

The searches are made of hand-written probes (a test double: a real server cannot be made to give
exact capacities)."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_vllm import baselines
from pytest_vllm.gpu import PROFILES
from pytest_vllm.perf import capacity_report, plots, report
from pytest_vllm.perf.budgets import GatePolicy, parse_budgets
from pytest_vllm.perf.capacity import CapacitySearch, CapacityWorkload, Probe
from pytest_vllm.perf.capacity_bench import CapacityMeasurement, capacity_ratio, capacity_result
from pytest_vllm.perf.judge import judge, stored_baseline
from pytest_vllm.perf.results import BenchSettings, BenchState, PairComparison

CLASS = "cpu-amd-avx512bf16-2c"
WORKLOAD = CapacityWorkload(name="capacity", slo_ms={"ttft": 2000.0, "tpot": 150.0})
LATENCIES = {name: 100.0 for name in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2el_p50", "e2el_p99")}


def search_of(capacity: float) -> CapacitySearch:
    search = CapacitySearch(capacity / 2, precision=0.10)
    while (rate := search.next_rate()) is not None:
        good = 1.0 if rate <= capacity else 0.8
        search.record(Probe(rate, rate, good * rate, good, 10, 0, LATENCIES, False, 10.0,
                            "pass" if good == 1.0 else "fail"))
    return search


def measured(capacity: float, role: str = "base") -> CapacityMeasurement:
    search = search_of(capacity)
    return CapacityMeasurement("suites/test_capacity.py::test_c", role, f"m-{role}", WORKLOAD,
                               capacity_result(search), f"srv-{role}", {}, search=search)


def settings(tmp_path: Path) -> BenchSettings:
    return BenchSettings(profile=PROFILES["cpu"], host_class=CLASS, baseline_dir=tmp_path, record=False,
                         missing="auto", policy=GatePolicy(), default_budgets={}, environment={})


def test_a_capacity_is_recorded_and_judged_like_any_metric(tmp_path: Path) -> None:
    recorded = measured(4.0)
    baselines.write(tmp_path, recorded.baseline_key(CLASS), recorded.entry({}))
    budgets = parse_budgets({"capacity": ">= baseline * 0.85"})
    for current, passes in ((4.0, True), (2.0, False)):
        now = measured(current)
        stored, _ = stored_baseline(settings(tmp_path), now)
        assert stored is not None
        [check] = judge(now, budgets, stored, settings(tmp_path))
        assert check.reference == recorded.value("capacity")
        # the CPU profile reports single-server baseline budgets instead of failing them
        assert (check.verdict.label == "PASS") == passes, check.verdict


def test_a_capacity_pair_ratio_is_judged_against_a_fixed_floor(tmp_path: Path) -> None:
    base, compressed = measured(2.0), measured(3.0, "compressed")
    ratios = capacity_ratio(base, compressed)
    assert ratios.median("capacity") == compressed.value("capacity") / base.value("capacity")
    pair = PairComparison("suites/test_capacity.py::test_c", WORKLOAD, base, compressed, ratios)
    [check] = judge(pair, parse_budgets({"capacity": ">= 1.2"}, kind_hint="pair"), None, settings(tmp_path))
    assert check.passed
    [check] = judge(pair, parse_budgets({"capacity": ">= 2.0"}, kind_hint="pair"), None, settings(tmp_path))
    assert not check.passed


def test_the_report_shows_each_capacity_with_its_probes_and_the_ratio(tmp_path: Path) -> None:
    state = BenchState(settings(tmp_path))
    base, compressed = measured(2.0), measured(3.0, "compressed")
    state.capacities += [base, compressed]
    state.capacity_pairs.append(PairComparison("suites/test_capacity.py::test_c", WORKLOAD, base, compressed,
                                               capacity_ratio(base, compressed)))
    summary, probes, pairs = capacity_report.tables(state)
    assert [row[1] for row in summary.rows] == ["base", "compressed"]
    assert len(probes.rows) == len(base.probes) + len(compressed.probes)
    assert any("cannot see a change smaller" in note for note in summary.notes)
    assert pairs.rows[0][2] == f"{compressed.value('capacity') / base.value('capacity'):.3f}x"
    data = report.to_json(state)
    assert [m["role"] for m in data["capacities"]] == ["base", "compressed"]
    assert data["capacities"][0]["probes"][0]["rate"] == base.probes[0].rate
    assert data["capacity_pairs"][0]["ratio"] == state.capacity_pairs[0].ratio("capacity")
    png = plots.goodput_vs_rate(state)
    assert png is not None and png.startswith(b"\x89PNG")
    section = report.section(state, say=lambda _: None)
    assert section is not None and "goodput_vs_rate.png" in section.plots


def test_a_probe_that_answered_nothing_shows_no_latencies_rather_than_zero() -> None:
    """A probe stopped before its first answer (seen on the 2-core host at 4.7 req/s) printed
    "TTFT p50/p99 0/0 ms", which reads as a fast server; it has no latencies."""
    unanswered = Probe(4.7, 4.7, 0.0, 0.0, 38, 0, {}, False, 3.0, "fail", "stopped once decided")
    answered = Probe(3.3, 3.3, 2.0, 1.0, 27, 0, {**LATENCIES, "ttft_p50": 1262.0}, False, 9.0, "pass")
    assert unanswered.latency_text("ttft") == "-" and "TTFT p50/p99 - ms" in unanswered.describe()
    assert answered.latency_text("ttft") == "1262/100" and "TTFT p50/p99 1262/100 ms" in answered.describe()
    search = CapacitySearch(3.3, precision=0.10)
    search.record(answered)
    search.record(unanswered)
    m = CapacityMeasurement("suites/test_capacity.py::test_c", "base", "m", WORKLOAD, capacity_result(search), "s", {},
                            search=search)
    state = BenchState(settings(Path("/nonexistent")))
    state.capacities.append(m)
    _, probes = capacity_report.tables(state)
    assert probes.rows[1][7:10] == ["-", "-", "-"] and probes.rows[0][7] == "1262/100"


def test_a_results_file_of_capacity_searches_is_added_as_baselines(tmp_path: Path) -> None:
    """`pytest-vllm baselines add` pools a capacity run like any other: both servers' capacities
    and the pair ratio, judged afterwards against what was added."""
    state = BenchState(settings(tmp_path))
    state.settings.environment["recorded_at"] = "2026-12-02T04:00:00+00:00"
    base, compressed = measured(2.0), measured(3.0, "compressed")
    state.capacities += [base, compressed]
    state.capacity_pairs.append(PairComparison("suites/test_capacity.py::test_c", WORKLOAD, base, compressed,
                                               capacity_ratio(base, compressed)))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"performance": report.to_json(state)}))
    root = tmp_path / "baselines"
    added = baselines.add_results(root, results)
    assert sorted(name for _, name, _ in added) == ["base/capacity", "compressed/capacity",
                                                    "compressed_over_base/capacity"]
    stored, note = stored_baseline(settings(root), state.capacity_pairs[0])
    assert stored is not None and note == ""
    assert stored.median("capacity") == state.capacity_pairs[0].ratio("capacity")
