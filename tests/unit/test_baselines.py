"""Baseline files: layout, round trip, locked atomic updates that keep concurrent writers' entries, and clear
errors for damaged files and for values a gate could not trust."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    # no temp file: only the baseline and the lock that serializes its writers (.gitignore'd)
    assert sorted(p.name for p in KEY.path(tmp_path).parent.iterdir()) == [
        f".{KEY.path(tmp_path).name}.lock", KEY.path(tmp_path).name]


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


# Adds ROUNDS entries of its own to one baseline file, each by a full read-merge-write.
CONCURRENT_WRITER = """
import sys
from pathlib import Path
from pytest_vllm import baselines
from pytest_vllm.perf.metrics import METRIC_DEFINITIONS

root, writer, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("writing", flush=True)
for n in range(rounds):
    key = baselines.BaselineKey("cpu", "m", "suites/test_perf.py::test_x", f"{writer}-{n}", "base")
    baselines.write(root, key, {"metric_definitions": METRIC_DEFINITIONS, "server": {"key": "s"},
                                "workload": {"key": "w"}, "metrics": {"output_throughput": {"median": 1.0 + n}}})
"""


def test_two_processes_adding_entries_to_one_file_at_once_keep_every_entry(tmp_path: Path) -> None:
    rounds = 60
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(tmp_path), name, str(rounds)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for name in ("a", "b")]
    outputs = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], outputs
    [path] = tmp_path.rglob("*.json")
    entries = baselines.read_file(path)["entries"]
    assert sorted(entries) == sorted(f"base/{w}-{n}" for w in "ab" for n in range(rounds))


def stored_file(tmp_path: Path, entries: dict) -> Path:
    path = KEY.path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": baselines.FORMAT, "entries": entries}))
    return path


def with_metric(name: str, median: object, **more: object) -> dict:
    stored = entry()
    return {**stored, "metrics": {**stored["metrics"], name: {"median": median, **more}}}


@pytest.mark.parametrize(("damaged", "message"), [
    ([], "is damaged: it is a list, not an object"),
    ({**entry(), "metrics": []}, "'metrics' is a list, not an object"),
    ({**entry(), "metrics": {"ttft_p50": 12.0}}, "metric 'ttft_p50' is a float, not an object"),
    (with_metric("ttft_p50", float("inf")), "metric 'ttft_p50' has the median inf, not a finite number"),
    (with_metric("output_throughput", float("nan")), "metric 'output_throughput' has the median nan"),
    (with_metric("output_throughput", 0.0), "metric 'output_throughput' has the median 0.0, which a measured run "
                                            "cannot give"),
    (with_metric("e2el_p50", -3.0), "metric 'e2el_p50' has the median -3.0"),
    (with_metric("failed", -1.0), "metric 'failed' has the median -1.0, which a measured run cannot give "
                                  r"\(it is never negative\)"),
    (with_metric("ttft_p50", 10.0, spread=float("inf")), "metric 'ttft_p50' has the spread inf"),
    (with_metric("ttft_p50", 10.0, runs=[10.0, "x"]), "metric 'ttft_p50' has the runs"),
    ({**entry(), "recordings": [{"metrics": {"ttft_p50": {"median": float("inf")}}}]},
     r"has a damaged recording \(recording 0: metric 'ttft_p50' has the median inf"),
    ({**entry(), "recordings": ["x"]}, r"has a damaged recording \(recording 0: it is a string"),
])
def test_damaged_or_untrustworthy_entries_are_named_with_the_fix(tmp_path: Path, damaged: object,
                                                                 message: str) -> None:
    path = stored_file(tmp_path, {KEY.entry_name: damaged})
    with pytest.raises(BaselineError, match=message) as caught:
        baselines.load(tmp_path, KEY)
    assert f"baseline {path}, entry {KEY.entry_name!r}" in str(caught.value)
    assert "restore it from git" in str(caught.value) and "--update-baselines" in str(caught.value)


def test_metrics_that_are_zero_legitimately_are_accepted(tmp_path: Path) -> None:
    stored = entry()
    for name in ("failed", "prefix_cache_hit_rate", "num_preemptions", "host_cpu_steal", "goodput", "tpot_p50"):
        stored["metrics"][name] = {"median": 0.0, "runs": [0.0, 0.0, 0.0], "spread": 0.0}
    score = {**entry(), "metric_definitions": "pytest-vllm-accuracy/1", "metrics": {"accuracy": {"median": 0.0}}}
    other = baselines.BaselineKey(KEY.scope, KEY.model, KEY.nodeid, "arithmetic", "base")
    stored_file(tmp_path, {KEY.entry_name: stored, other.entry_name: score})
    loaded = baselines.load(tmp_path, KEY)
    assert loaded is not None and loaded.median("failed") == 0.0 and loaded.median("tpot_p50") == 0.0
    accuracy = baselines.load(tmp_path, other)
    assert accuracy is not None and accuracy.median("accuracy") == 0.0


def test_writing_an_untrustworthy_value_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match=f"refusing to write baseline {KEY.path(tmp_path)}, entry "
                                            f"'{KEY.entry_name}', which is damaged: metric 'output_throughput' "
                                            "has the median 0.0"):
        baselines.write(tmp_path, KEY, with_metric("output_throughput", 0.0))
    assert list(tmp_path.iterdir()) == []  # not even the folder
    baselines.write(tmp_path, KEY, recorded(1.0, "t1"), pool=True)
    before = KEY.path(tmp_path).read_text()
    with pytest.raises(BaselineError, match="refusing to write .* 'ttft_p50' has the median inf"):
        baselines.write(tmp_path, KEY, {**recorded(1.0, "t2"), "metrics": {"ttft_p50": {"median": float("inf")}}},
                        pool=True)
    assert KEY.path(tmp_path).read_text() == before


def test_a_results_file_with_an_untrustworthy_value_adds_nothing(tmp_path: Path) -> None:
    path = results_file(tmp_path, "t1")
    results = json.loads(path.read_text())
    results["performance"]["measurements"][0]["metrics"]["e2el_p99"] = {"median": float("inf")}
    path.write_text(json.dumps(results))
    with pytest.raises(BaselineError, match="refusing to write .* 'e2el_p99' has the median inf"):
        baselines.add_results(tmp_path / "baselines", path)
    assert not (tmp_path / "baselines").exists()
