"""The performance judge's pure parts: which baseline a measurement meets and what is said about
it, which budgets apply, the cold-cache rule, per-pair ratios and the classes on record.

Measurements are built from hand-made records (a test double for exact numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm import baselines
from pytest_vllm.gpu import PROFILES
from pytest_vllm.load.client import RequestRecord
from pytest_vllm.load.runner import RunResult, WorkloadRuns
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.budgets import GatePolicy, parse_budget, parse_budgets
from pytest_vllm.perf.judge import cold_cache_problem, judge, missing_baseline, stored_baseline
from pytest_vllm.perf.metrics import RepeatedResult, compute
from pytest_vllm.perf.results import BenchSettings, Measurement, PairComparison, pair_ratios
from pytest_vllm.server.counters import PrefixCacheCounts

CLASS = "cpu-amd-avx512bf16-2c"
WORKLOAD = Workload(name="w", num_requests=1, input_len=100, output_len=3, repeats=3)


def run(duration: float, hits: float | None = 0.0) -> RunResult:
    record = RequestRecord(0, 0.0, 0.0, 0.1, [0.1, 0.2, 0.3], output_tokens=3, prompt_tokens=100)
    cache = None if hits is None else PrefixCacheCounts(hits, 100.0)
    return RunResult([record], 0.0, duration, prefix_cache=cache)


def measurement(durations=(1.0, 1.1, 0.9), hits: float | None = 0.0, flags=None, workload=WORKLOAD,
                role="base") -> Measurement:
    result = RepeatedResult([compute(run(d, hits)) for d in durations])
    return Measurement("suites/test_perf.py::test_t", role, "m", workload, result, "srv", dict(flags or {}))


def settings(tmp_path: Path, record: bool = False) -> BenchSettings:
    return BenchSettings(profile=PROFILES["cpu"], host_class=CLASS, baseline_dir=tmp_path, record=record,
                         missing="auto", policy=GatePolicy(), default_budgets={},
                         environment={"gpu_profile": "cpu", "host_class": CLASS, "vllm_version": "0.32.0"})


def store(tmp_path: Path, m: Measurement, environment=None) -> None:
    baselines.write(tmp_path, m.baseline_key(CLASS), m.entry(environment or {"vllm_version": "0.32.0"}))


def test_a_baseline_of_another_workload_is_not_used(tmp_path: Path) -> None:
    store(tmp_path, measurement(workload=WORKLOAD.with_(output_len=4)))
    found, note = stored_baseline(settings(tmp_path), measurement())
    assert found is None and "another workload or prompt scheme" in note


def test_a_changed_server_is_compared_and_named(tmp_path: Path) -> None:
    stored = measurement(flags={"max_num_seqs": 8})
    store(tmp_path, stored)
    changed = measurement(flags={"max_num_seqs": 1})
    changed.server_key = "other"
    found, note = stored_baseline(settings(tmp_path), changed)
    assert found is not None and "max_num_seqs: 8 → 1" in note


def test_another_environment_is_named_beside_the_verdict(tmp_path: Path) -> None:
    store(tmp_path, measurement(), environment={"vllm_version": "0.31.0"})
    found, note = stored_baseline(settings(tmp_path), measurement())
    assert found is not None and "vllm_version: 0.31.0 → 0.32.0" in note


def test_judge_applies_relative_budgets_against_the_baseline_and_absolute_ones_always(tmp_path: Path) -> None:
    stored = measurement()
    store(tmp_path, stored)
    found, _ = stored_baseline(settings(tmp_path), measurement())
    budgets = parse_budgets({"output_throughput": ">= baseline * 0.9", "ttft_p50": "<= 500 ms"})
    checks = {c.metric: c for c in judge(measurement(), budgets, found, settings(tmp_path))}
    assert checks["output_throughput"].passed and checks["output_throughput"].reference == pytest.approx(3.0)
    assert checks["output_throughput"].resolution is not None and checks["ttft_p50"].passed
    # twice as slow fails
    slow = {c.metric: c for c in judge(measurement((2.0, 2.2, 1.8)), budgets, found, settings(tmp_path))}
    assert not slow["output_throughput"].passed
    # recording replaces: the old baseline judges nothing relative; absolute budgets still apply
    recording = judge(measurement((2.0, 2.2, 1.8)), budgets, found, settings(tmp_path, record=True))
    assert [c.metric for c in recording] == ["ttft_p50"]
    # no baseline: only the absolute budget
    assert [c.metric for c in judge(measurement(), budgets, None, settings(tmp_path))] == ["ttft_p50"]


def test_a_warm_cache_makes_the_measurement_invalid() -> None:
    runs = WorkloadRuns(WORKLOAD)
    assert cold_cache_problem(measurement(hits=2.0), runs) is None  # 2% of the prompt tokens
    problem = cold_cache_problem(measurement(hits=40.0), runs)
    assert problem is not None and "40%" in problem and "--vllm-prompt-seed" in problem
    assert cold_cache_problem(measurement(hits=None), runs) is None  # no counters: said elsewhere, once
    prefix = WORKLOAD.with_(shared_prefix_len=90)
    assert cold_cache_problem(measurement(hits=90.0, workload=prefix), WorkloadRuns(prefix)) is None
    # a chat template's frame is shared by every prompt: its tokens may hit
    chat = WORKLOAD.with_(endpoint="chat")
    assert cold_cache_problem(measurement(hits=20.0, workload=chat), WorkloadRuns(chat, template_tokens=20)) is None


def test_pair_ratios_are_per_pair_of_repetitions_and_gated_on_their_median(tmp_path: Path) -> None:
    reference, candidate = measurement((1.0, 2.0, 1.0)), measurement((0.5, 1.0, 0.4), role="compressed")
    ratios = pair_ratios(reference.result, candidate.result, ["output_throughput"])
    assert ratios.values("output_throughput") == pytest.approx([2.0, 2.0, 2.5])
    pair = PairComparison("suites/test_perf.py::test_t", WORKLOAD, reference, candidate, ratios)
    assert pair.ratio("output_throughput") == pytest.approx(2.0) and pair.role == "compressed_over_base"
    floor = {"output_throughput": parse_budget("output_throughput", ">= 1.5", kind_hint="pair")}
    assert [c.passed for c in judge(pair, floor, None, settings(tmp_path))] == [True]
    # against the recorded ratio
    store(tmp_path, measurement())  # another entry in the same folder does not count
    baselines.write(tmp_path, pair.baseline_key(CLASS), pair.entry({}))
    found, _ = stored_baseline(settings(tmp_path), pair)
    assert found is not None and found.median("output_throughput") == pytest.approx(2.0)
    relative = {"output_throughput": parse_budget("output_throughput", ">= baseline * 0.9", kind_hint="pair")}
    halved = PairComparison(pair.nodeid, WORKLOAD, reference, candidate,
                            pair_ratios(reference.result, measurement((1.0, 2.0, 1.0), role="compressed").result,
                                        ["output_throughput"]))
    assert [c.passed for c in judge(halved, relative, found, settings(tmp_path))] == [False]


def test_classes_with_baselines_are_those_of_the_profile_holding_the_model(tmp_path: Path) -> None:
    for folder in ("cpu-amd-avx2-2c/m", "cpu-intel-avx512vnni-2c/other", "h100-80g/m", "cpu/m"):
        (tmp_path / folder).mkdir(parents=True)
    assert baselines.classes_with_baselines(tmp_path, "cpu", "m") == ["cpu-amd-avx2-2c"]
    assert baselines.classes_with_baselines(tmp_path / "missing", "cpu", "m") == []


def test_a_missing_baseline_is_not_judged_on_an_unrecorded_class_or_test_and_fails_as_a_gap_in_a_file(
        tmp_path: Path) -> None:
    budgets = parse_budgets({"output_throughput": ">= baseline * 0.9"})
    current = measurement()
    elsewhere = tmp_path / "cpu-amd-avx2-2c" / "m"
    elsewhere.mkdir(parents=True)
    unrecorded = missing_baseline(settings(tmp_path), current, budgets)
    assert unrecorded.action == "not judged" and unrecorded.recorded_classes == ("cpu-amd-avx2-2c",)
    assert f"this host is class {CLASS}; baselines of m exist for: cpu-amd-avx2-2c" in unrecorded.message
    strict = BenchSettings(**{**settings(tmp_path).__dict__, "missing": "fail"})
    refused = missing_baseline(strict, current, budgets)
    assert refused.action == "fail" and "classes with baselines of m: cpu-amd-avx2-2c" in refused.message
    # the class has baselines of this model but none of this test: a test newer than the recording
    (tmp_path / CLASS / "m").mkdir(parents=True)
    newer = missing_baseline(settings(tmp_path), current, budgets)
    assert newer.action == "not judged" and newer.new_test and "the test is newer" in newer.message
    # the test's file exists, only not this entry: a gap in the recording, which fails
    store(tmp_path, measurement(workload=WORKLOAD.with_(name="other")))
    gap = missing_baseline(settings(tmp_path), current, budgets)
    assert gap.action == "fail" and f"of host class {CLASS}" in gap.message
    skipping = BenchSettings(**{**settings(tmp_path).__dict__, "missing": "skip"})
    assert missing_baseline(skipping, current, budgets).action == "skip"
    # nothing relative to judge, or recording: nothing missing
    assert missing_baseline(settings(tmp_path), current, parse_budgets({"ttft_p50": "<= 5 s"})).action == "none"
    assert missing_baseline(settings(tmp_path, record=True), current, budgets).action == "none"


class _Item:
    """A test item without markers (a test double for the pytest layer's constructor)."""

    nodeid = "suites/test_perf.py::test_t"

    def iter_markers(self, name: str):  # noqa: ARG002 - the pytest.Item signature
        return iter(())


def test_an_out_of_budget_measurement_is_measured_again_and_the_second_decides(tmp_path: Path) -> None:
    from pytest_vllm.perf.gate import CONFIRMATION_PROMPT_SEED, Bench
    from pytest_vllm.perf.results import BenchState

    said: list[str] = []
    bench = Bench(BenchState(settings(tmp_path)), _Item(), said.append)  # type: ignore[arg-type]
    budgets = parse_budgets({"output_throughput": ">= 2.5 tok/s"})  # an absolute budget: no baseline needed
    attempts: list[Workload] = []

    def measure(durations):
        def one(attempt: Workload) -> Measurement:
            attempts.append(attempt)
            m = measurement(durations[len(attempts) - 1])
            m.checks = judge(m, budgets, None, bench.settings)
            return m
        return one

    transient = bench._confirmed(measure([(2.0, 2.0, 2.0), (1.0, 1.0, 1.0)]), WORKLOAD, gate=True)
    assert transient.passed and transient.first_attempt is not None and not transient.first_attempt.passed
    assert attempts[1].prompt_seed == WORKLOAD.prompt_seed + CONFIRMATION_PROMPT_SEED
    assert "not confirmed: passed" in transient.baseline_note and any("to confirm" in line for line in said)
    attempts.clear()
    regression = bench._confirmed(measure([(2.0, 2.0, 2.0), (2.0, 2.0, 2.0)]), WORKLOAD, gate=True)
    assert not regression.passed and "confirmed: out of budget again" in regression.baseline_note
    attempts.clear()
    healthy = bench._confirmed(measure([(1.0, 1.0, 1.0)]), WORKLOAD, gate=True)
    assert healthy.passed and healthy.first_attempt is None and len(attempts) == 1


class _DeferrableItem(_Item):
    """A test item in its first run, with a later one to come (a test double: pytest's stash, no
    markers, no session)."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from pytest_vllm.perf.deferral import CAN_DEFER

        self.stash = pytest.Stash()
        self.stash[CAN_DEFER] = True
        self.config = SimpleNamespace(stash=pytest.Stash())
        self.added: list[object] = []

    def add_marker(self, marker: object) -> None:
        self.added.append(marker)


def test_an_out_of_budget_measurement_waits_for_the_end_of_the_session(tmp_path: Path) -> None:
    """First run: what passed is kept, the failing measurement is held back (nothing reaches the
    reports); second run: the passed one is replayed, the failing one measured once more."""
    from pytest_vllm.perf.deferral import CAN_DEFER, ConfirmLater, attempts_of
    from pytest_vllm.perf.gate import CONFIRMATION_PROMPT_SEED, Bench
    from pytest_vllm.perf.results import BenchState

    state = BenchState(settings(tmp_path))
    item = _DeferrableItem()
    budgets = parse_budgets({"output_throughput": ">= 2.5 tok/s"})
    attempts: list[Workload] = []

    def measure(duration: float):
        def one(attempt: Workload) -> Measurement:
            attempts.append(attempt)
            m = measurement((duration,) * 3)
            m.checks = judge(m, budgets, None, state.settings)
            return m
        return one

    said: list[str] = []
    first_run = Bench(state, item, said.append)  # type: ignore[arg-type]
    kept = first_run._confirmed(measure(1.0), WORKLOAD, gate=True)
    state.measurements.append(kept)  # as _settle does
    with pytest.raises(ConfirmLater):
        first_run._confirmed(measure(2.0), WORKLOAD.with_(name="slow"), gate=True)
    assert state.measurements == [] and len(attempts) == 2 and any("end of the session" in s for s in said)
    pending = attempts_of(item)  # type: ignore[arg-type]
    assert pending is not None and pending.pending == 1 and pending.settled == {0: kept}
    assert item.added, "the second run's unused pytest-benchmark fixture is not warned about"

    item.stash[CAN_DEFER] = False  # the protocol's second run
    second_run = Bench(state, item, said.append)  # type: ignore[arg-type]
    assert second_run._confirmed(measure(9.9), WORKLOAD, gate=True) is kept and len(attempts) == 2
    confirmed = second_run._confirmed(measure(2.0), WORKLOAD.with_(name="slow"), gate=True)
    assert len(attempts) == 3 and attempts[2].prompt_seed == WORKLOAD.prompt_seed + CONFIRMATION_PROMPT_SEED
    assert not confirmed.passed and confirmed.first_attempt is pending.first
    assert "at the end of the session, confirmed: out of budget again" in confirmed.baseline_note


def test_a_measurement_without_checks_says_why() -> None:
    """Recording, another host class, every budget off (a baseline exists), or no baseline.
    (Plain namespaces stand in for the state and measurement: only these fields are read.)"""
    from types import SimpleNamespace

    from pytest_vllm.gating import Outcome
    from pytest_vllm.perf.report import _unchecked_verdict

    def verdict(record: bool = False, judged: bool = True, baseline: object = None) -> Outcome:
        state = SimpleNamespace(settings=SimpleNamespace(record=record))
        return _unchecked_verdict(state, SimpleNamespace(judged=judged, baseline=baseline)).outcome

    assert verdict(record=True) is Outcome.RECORDED
    assert verdict(judged=False) is Outcome.NOT_JUDGED
    assert verdict(baseline=object()) is Outcome.OFF
    assert verdict() is Outcome.NO_BASELINE


def test_a_report_only_baseline_gate_reports_and_passes(tmp_path: Path) -> None:
    """--vllm-baseline-gate report (the CPU profile's default): a single server out of its
    baseline budget reads OVER (report only) and passes; an absolute budget still fails."""
    from pytest_vllm.gating import Outcome

    store(tmp_path, measurement())
    slow = measurement(durations=(2.0, 2.1, 1.9))
    budgets = parse_budgets({"output_throughput": ">= baseline * 0.9"})
    stored, _ = stored_baseline(settings(tmp_path), slow)
    gating = judge(slow, budgets, stored, settings(tmp_path))
    assert not gating[0].passed and gating[0].verdict.outcome is Outcome.FAIL
    reporting = BenchSettings(**{**settings(tmp_path).__dict__, "baseline_gate_fails": False})
    reported = judge(slow, budgets, stored, reporting)
    assert reported[0].passed and reported[0].verdict.label == "OVER (report only)"
    absolute = judge(slow, parse_budgets({"output_throughput": ">= 2.5 tok/s"}), stored, reporting)
    assert not absolute[0].passed, "absolute budgets always gate"


def test_the_roofline_of_a_single_stream_measurement_is_in_the_table_and_the_json(tmp_path: Path) -> None:
    from pytest_vllm.perf.report import tables, to_json
    from pytest_vllm.perf.results import BenchState
    from pytest_vllm.perf.roofline import roofline

    state = BenchState(settings(tmp_path))
    with_floor, without = measurement(), measurement(role="compressed")
    with_floor.roofline = roofline("NVIDIA H200", 14_764_482_560, 4.552)
    state.measurements += [with_floor, without]
    table = next(t for t in tables(state) if t.title.startswith("vllm performance: roofline"))
    assert [row[1:] for row in table.rows] == [["base", "4.55", "14.76", "4.8", "3.08", "68%"]]
    found = [m["roofline"] for m in to_json(state)["measurements"]]
    assert found[1] is None and found[0]["share"] == pytest.approx(0.676, abs=0.001)
    assert found[0]["floor_ms"] == pytest.approx(3.076, abs=0.001) and found[0]["bandwidth_tb_s"] == 4.8


def test_a_pair_on_roles_of_several_replicas_reports_each_replica_of_both_servers(tmp_path: Path) -> None:
    """The replicas table and results.json split a pair's two measurements (kept among the session's
    measurements, as Bench.compare does) as they do a single one, with each replica's /metrics."""
    from pytest_vllm.perf.report import tables, to_json
    from pytest_vllm.perf.results import BenchState
    from pytest_vllm.server.telemetry import ServerTelemetry

    def on_replicas(role: str, urls: tuple[str, str]) -> Measurement:
        m = measurement(role=role, durations=(1.0,))
        m.records = [[RequestRecord(i, output_tokens=3, replica=urls[i % 2]) for i in range(4)]]
        m.replica_telemetry = [{urls[0]: ServerTelemetry(2, kv_cache_usage_peak=0.5, num_preemptions=1)}]
        return m

    reference = on_replicas("base", ("http://a", "http://b"))
    candidate = on_replicas("compressed", ("http://c", "http://d"))
    state = BenchState(settings(tmp_path))
    state.measurements += [reference, candidate]
    ratios = pair_ratios(reference.result, candidate.result, ["duration"])
    state.pairs.append(PairComparison("t", WORKLOAD, reference, candidate, ratios))
    table = next(t for t in tables(state) if t.title.startswith("vllm performance: replicas"))
    assert [row[1:3] for row in table.rows] == [["base", "http://a"], ["base", "http://b"], ["base", "combined"],
                                                ["compressed", "http://c"], ["compressed", "http://d"],
                                                ["compressed", "combined"]]
    assert table.rows[0][-1] == "KV cache <= 50.0%, preempted 1" and table.rows[1][-1] == "-"
    split = [m["replicas"] for m in to_json(state)["measurements"]]
    assert [s["replica"] for s in split[0]] == ["http://a", "http://b"] and split[0][0]["num_preemptions"] == 1
    assert [s["requests"] for s in split[1]] == [2, 2]
