"""Baseline files: layout, round trip, atomic update, and clear errors for damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vllm import baselines
from pytest_vllm.errors import BaselineError
from pytest_vllm.load.client import RequestRecord
from pytest_vllm.perf.metrics import RepeatedResult, compute_records
from pytest_vllm.perf.results import make_entry

KEY = baselines.BaselineKey("cpu", "smollm2-135m-instruct", "suites/test_perf.py::test_throughput[c4-base]",
                            "throughput_c4", "base")


def result(duration: float) -> RepeatedResult:
    rec = RequestRecord(0, 0.0, 0.0, 0.1, [0.1, 0.2, 0.3], output_tokens=3, prompt_tokens=5)
    return RepeatedResult([compute_records([rec], duration=d) for d in (duration, duration * 1.1, duration * 0.9)])


def entry(duration: float = 1.0) -> dict:
    return make_entry(result(duration), {"key": "srv1", "flags": {}}, {"key": "wl1", "num_requests": 1},
                                {"recorded_at": "now"}, KEY.nodeid, "base")


def test_layout_is_gpu_model_module_function() -> None:
    assert KEY.path(Path("b")) == Path("b/cpu/smollm2-135m-instruct/test_perf/test_throughput.json")
    assert KEY.entry_name == "c4-base/base/throughput_c4"


def test_round_trip_keeps_median_and_spread(tmp_path: Path) -> None:
    baselines.write(tmp_path, KEY, entry())
    stored = baselines.load(tmp_path, KEY)
    assert stored is not None
    assert stored.median("output_throughput") == pytest.approx(3.0)
    assert stored.spread("output_throughput") > 0
    assert stored.server_key == "srv1" and stored.workload_key == "wl1"


def test_update_keeps_other_entries_and_leaves_no_temp_files(tmp_path: Path) -> None:
    other = baselines.BaselineKey(KEY.scope, KEY.model, KEY.nodeid.replace("c4", "c1"), "throughput_c1", "base")
    baselines.write(tmp_path, KEY, entry())
    baselines.write(tmp_path, other, entry(2.0))
    data = json.loads(KEY.path(tmp_path).read_text())
    assert set(data["entries"]) == {KEY.entry_name, other.entry_name}
    assert [p.name for p in KEY.path(tmp_path).parent.iterdir()] == [KEY.path(tmp_path).name]


def test_corrupt_file_is_named_and_never_overwritten(tmp_path: Path) -> None:
    path = KEY.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{ broken")
    with pytest.raises(BaselineError, match=str(path)):
        baselines.load(tmp_path, KEY)
    with pytest.raises(BaselineError):
        baselines.write(tmp_path, KEY, entry())
    assert path.read_text() == "{ broken"


def test_wrong_format_and_damaged_entries_are_errors(tmp_path: Path) -> None:
    path = KEY.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": "something-else", "entries": {}}))
    with pytest.raises(BaselineError, match="not a pytest-vllm-baseline/1 file"):
        baselines.load(tmp_path, KEY)
    path.write_text(json.dumps({"format": baselines.FORMAT, "entries": {KEY.entry_name: {"metrics": {}}}}))
    with pytest.raises(BaselineError, match="damaged"):
        baselines.load(tmp_path, KEY)


def test_missing_entry_is_none(tmp_path: Path) -> None:
    assert baselines.load(tmp_path, KEY) is None


def test_environment_changes_name_what_differs_and_skip_what_was_not_recorded() -> None:
    stored = {"host_cpu": "Intel Xeon 8480", "host_cores": 16, "vllm_version": "0.24.0", "recorded_at": "x"}
    current = {"host_cpu": "AMD EPYC 9654", "host_cores": 16, "vllm_version": "0.24.0", "recorded_at": "y",
               "driver": "580"}
    assert baselines.environment_changes(stored, current) == "host_cpu: Intel Xeon 8480 → AMD EPYC 9654"
    assert baselines.environment_changes(stored, {**stored}) == ""
    assert baselines.host_cpu()  # a name on any machine


def test_git_commit_prefers_the_override_then_git_then_ci_variable(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    head = baselines.git_commit(repo, environ={})
    assert head and len(head) == 40
    assert baselines.git_commit(repo, environ={"PYTEST_VLLM_GIT_COMMIT": "abc123"}) == "abc123"
    # tmp_path is no git checkout: the CI variable is what is left, else nothing
    assert baselines.git_commit(tmp_path, environ={"GITHUB_SHA": "def456"}) == "def456"
    assert baselines.git_commit(tmp_path, environ={}) is None


def recorded(duration: float, when: str, **environment: str) -> dict:
    return make_entry(result(duration), {"key": "srv1", "flags": {}}, {"key": "wl1", "num_requests": 1},
                                {"recorded_at": when, "vllm_version": "0.24.0", **environment}, KEY.nodeid, "base")


def test_pooled_baseline_is_the_median_of_its_recordings(tmp_path: Path) -> None:
    # Three hosts: output throughput 3.0 (duration 1), 1.5 (duration 2) and 2.0 (duration 1.5) tok/s.
    for duration, when in ((1.0, "t1"), (2.0, "t2"), (1.5, "t3")):
        baselines.write(tmp_path, KEY, recorded(duration, when, host_cpu=f"host {when}"), pool=True)
    stored = baselines.load(tmp_path, KEY)
    assert stored is not None
    assert stored.median("output_throughput") == pytest.approx(2.0)
    assert stored.data["metrics"]["output_throughput"]["runs"] == pytest.approx([3.0, 1.5, 2.0])
    assert stored.spread("output_throughput") == pytest.approx((3.0 - 1.5) / 2.0)  # the hosts' range
    assert [r["environment"]["host_cpu"] for r in stored.data["recordings"]] == ["host t1", "host t2", "host t3"]
    assert stored.recorded == "t3"


def test_a_single_recording_joins_a_pool_and_the_pool_keeps_the_newest(tmp_path: Path) -> None:
    baselines.write(tmp_path, KEY, recorded(1.0, "t0"))  # --update-baselines: one recording, no list
    for i in range(1, baselines.MAX_RECORDINGS + 2):
        baselines.write(tmp_path, KEY, recorded(1.0 + i / 10, f"t{i}"), pool=True)
    stored = baselines.load(tmp_path, KEY)
    assert stored is not None
    whens = [r["environment"]["recorded_at"] for r in stored.data["recordings"]]
    assert whens == [f"t{i}" for i in range(2, baselines.MAX_RECORDINGS + 2)]
    # --update-baselines replaces a pool with one recording.
    baselines.write(tmp_path, KEY, recorded(1.0, "t9"))
    stored = baselines.load(tmp_path, KEY)
    assert stored is not None and "recordings" not in stored.data


@pytest.mark.parametrize(("change", "message"), [
    ({"server": {"key": "srv2", "flags": {}}}, "another server"),
    ({"workload": {"key": "wl2"}}, "another workload"),
    ({"environment": {"recorded_at": "t2", "vllm_version": "0.25.0"}}, "vllm_version 0.24.0 stored, 0.25.0 now"),
    ({"environment": {"recorded_at": "t1", "vllm_version": "0.24.0"}}, "run of t1 is already one of its recordings"),
])
def test_runs_that_cannot_be_pooled_are_refused_and_nothing_changes(tmp_path: Path, change: dict,
                                                                      message: str) -> None:
    baselines.write(tmp_path, KEY, recorded(1.0, "t1"), pool=True)
    before = KEY.path(tmp_path).read_text()
    with pytest.raises(BaselineError, match=message) as caught:
        baselines.write(tmp_path, KEY, {**recorded(2.0, "t2"), **change}, pool=True)
    assert "--update-baselines" in str(caught.value) or "already" in message
    assert KEY.path(tmp_path).read_text() == before


def test_a_damaged_recording_is_named(tmp_path: Path) -> None:
    baselines.write(tmp_path, KEY, recorded(1.0, "t1"), pool=True)
    data = json.loads(KEY.path(tmp_path).read_text())
    data["entries"][KEY.entry_name]["recordings"][0]["metrics"]["ttft_p50"] = {"median": "fast"}
    KEY.path(tmp_path).write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="damaged recording"):
        baselines.load(tmp_path, KEY)


def results_file(tmp_path: Path, when: str, duration: float = 1.0, **section: object) -> Path:
    """A results.json as a gate run writes it (report/perf.py's to_json), with one measurement."""
    one = recorded(duration, when)
    measurement = {"test": KEY.nodeid, "role": "base", "model": KEY.model,
                   "workload": {"name": KEY.measurement, "num_requests": 1}, "workload_key": "wl1",
                   "server_key": "srv1", "server_flags": {}, "metrics": one["metrics"]}
    perf = {"settings": {"gpu": "cpu", "update_baselines": False}, "environment": one["environment"],
            "metric_definitions": one["metric_definitions"], "measurements": [measurement], **section}
    path = tmp_path / f"results-{when}.json"
    path.write_text(json.dumps({"run": {}, "performance": perf}))
    return path


def test_results_of_gate_runs_are_added_as_recordings(tmp_path: Path) -> None:
    root = tmp_path / "baselines"
    assert baselines.add_results(root, results_file(tmp_path, "t1")) == [(KEY.path(root), KEY.entry_name, 1)]
    assert baselines.add_results(root, results_file(tmp_path, "t2", 2.0)) == [(KEY.path(root), KEY.entry_name, 2)]
    stored = baselines.load(root, KEY)
    assert stored is not None and stored.median("output_throughput") == pytest.approx((3.0 + 1.5) / 2)
    with pytest.raises(BaselineError, match="(?s)nothing added:.*already one of its recordings"):
        baselines.add_results(root, results_file(tmp_path, "t2", 2.0))


@pytest.mark.parametrize(("section", "message"), [
    ({"environment": None}, "records no environment"),
    ({"settings": {"gpu": "cpu", "update_baselines": True}}, "recorded baselines"),
    ({"measurements": []}, "no performance measurements"),
    ({"measurements": [{"test": "t"}]}, "not a results.json of pytest-vllm"),
])
def test_results_files_that_cannot_serve_are_refused(tmp_path: Path, section: dict, message: str) -> None:
    with pytest.raises(BaselineError, match=message):
        baselines.add_results(tmp_path / "baselines", results_file(tmp_path, "t1", **section))
    assert not (tmp_path / "baselines").exists()


def test_cli_adds_results_and_lists_the_recordings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_vllm.cli import main

    root = tmp_path / "baselines"
    first, second = results_file(tmp_path, "t1"), results_file(tmp_path, "t2", 2.0)
    assert main(["baselines", "add", "--dir", str(root), str(first), str(second)]) == 0
    assert "2 recordings" in capsys.readouterr().out
    assert main(["baselines", "list", str(root)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "recordings" in listed[0] and " 2 " in listed[1]
    assert main(["baselines", "add", "--dir", str(root), str(second)]) == 2  # added twice: refused
    assert "already one of its recordings" in capsys.readouterr().err
