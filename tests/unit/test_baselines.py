"""Baseline files: layout, round trip, atomic update, and clear errors for damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vllm import baselines
from pytest_vllm.errors import BaselineError
from pytest_vllm.load.client import RequestRecord
from pytest_vllm.metrics import RepeatedResult, compute

KEY = baselines.BaselineKey("cpu", "smollm2-135m-instruct", "suites/test_perf.py::test_throughput[c4-base]",
                            "throughput_c4", "base")


def result(duration: float) -> RepeatedResult:
    rec = RequestRecord(0, 0.0, 0.0, 0.1, [0.1, 0.2, 0.3], output_tokens=3, prompt_tokens=5)
    return RepeatedResult([compute([rec], duration=d) for d in (duration, duration * 1.1, duration * 0.9)])


def entry(duration: float = 1.0) -> dict:
    return baselines.make_entry(result(duration), {"key": "srv1", "flags": {}}, {"key": "wl1", "num_requests": 1},
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
    other = baselines.BaselineKey(KEY.gpu, KEY.model, KEY.nodeid.replace("c4", "c1"), "throughput_c1", "base")
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
