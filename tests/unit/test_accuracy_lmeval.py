"""The lm-eval backend's pure parts: task discovery, result compaction (groups pooled), settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_vllm.accuracy.budgets import parse_budget, settings_from
from pytest_vllm.accuracy.lmeval import discover_tasks, tokenizer_for
from pytest_vllm.accuracy.lmeval_runner import compact, leaves
from pytest_vllm.errors import UsageError
from pytest_vllm.server.handle import ServerHandle
from pytest_vllm.server.spec import ServerSpec

# The shape of lm_eval.simple_evaluate(..., log_samples=True)'s result, trimmed to what is read.
RESULTS = {
    "results": {
        "toy": {"acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 4, "alias": "toy"},
        "grp": {"acc,none": 0.6, "acc_stderr,none": 0.1},
        "a": {"acc,none": 0.5}, "b": {"acc,none": 2 / 3},
        "gen": {"exact_match,first_number": 0.5, "exact_match_stderr,first_number": 0.2},
    },
    "group_subtasks": {"grp": ["a", "b"], "a": [], "b": []},
    "versions": {"toy": 1.0, "a": 1.0, "b": 2.0, "grp": None, "gen": 1.0},
    "samples": {
        "toy": [{"doc_id": 1, "filter": "none", "acc": 0.0}, {"doc_id": 0, "filter": "none", "acc": 1.0},
                {"doc_id": 3, "filter": "none", "acc": 0.0}, {"doc_id": 2, "filter": "none", "acc": 1.0}],
        "a": [{"doc_id": 0, "filter": "none", "acc": 1.0}, {"doc_id": 1, "filter": "none", "acc": 0.0}],
        "b": [{"doc_id": 0, "filter": "none", "acc": 1.0}, {"doc_id": 1, "filter": "none", "acc": 1.0},
              {"doc_id": 2, "filter": "none", "acc": 0.0}],
        "gen": [{"doc_id": 0, "filter": "first_number", "exact_match": 1.0},
                {"doc_id": 0, "filter": "other", "exact_match": 0.0},
                {"doc_id": 1, "filter": "first_number", "exact_match": 0.0}],
    },
}


def test_compact_keeps_per_document_scores_in_order() -> None:
    out = compact(RESULTS, ["toy", "gen"])
    assert set(out["toy"]["metrics"]) == {"acc"}  # stderr and sample_len are not per-document scores
    assert out["toy"]["metrics"]["acc"] == {"score": 0.5, "filter": "none", "values": [1.0, 0.0, 1.0, 0.0]}
    assert out["toy"]["n"] == 4
    assert out["gen"]["metrics"]["exact_match"]["values"] == [1.0, 0.0]  # only the metric's own filter


def test_groups_pool_their_tasks_documents() -> None:
    assert leaves(RESULTS, "grp") == ["a", "b"]
    out = compact(RESULTS, ["grp"])
    assert out["grp"]["metrics"]["acc"]["values"] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert out["grp"]["n"] == 5
    assert out["grp"]["subtasks"] == {"a": 1.0, "b": 2.0}


def test_shipped_tasks_are_found_without_a_yaml_parser() -> None:
    tasks = discover_tasks()
    assert {"pytest_vllm_choice", "pytest_vllm_arithmetic"} <= set(tasks)
    assert all(path.suffix == ".yaml" for path in tasks.values())


def test_standard_tasks_become_budget_names_when_declared(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown accuracy budget key 'recovery_gsm8k'"):
        settings_from({"budgets": {"recovery_gsm8k": 0.9}}, tmp_path)
    settings = settings_from({"lmeval_tasks": ["gsm8k", "mmlu"], "budgets": {"recovery_gsm8k": 0.9}}, tmp_path)
    assert settings.lmeval_tasks == ("gsm8k", "mmlu")
    assert settings.budgets.for_set("recovery", "gsm8k").value == 0.9
    assert parse_budget("recovery_mmlu", "off", ["mmlu"]).off
    with pytest.raises(UsageError, match="lmeval_tasks must be a list"):
        settings_from({"lmeval_tasks": "gsm8k"}, tmp_path)


def test_tokenizer_comes_from_the_local_model_folder(tmp_path: Path) -> None:
    local = ServerHandle("base", "http://h:1", "m", spec=ServerSpec.create("base", str(tmp_path)))
    assert tokenizer_for(local, None) == str(tmp_path)
    assert tokenizer_for(local, "/other/tok") == "/other/tok"
    remote = ServerHandle("base", "http://h:1", "m")
    with pytest.raises(UsageError, match="set lmeval_tokenizer"):
        tokenizer_for(remote, None)


def test_lmeval_gets_the_servers_key_not_an_inherited_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """lm-eval's runner reads OPENAI_API_KEY; the key it is given must be the server's."""
    from pytest_vllm.accuracy import lmeval

    seen: dict[str, object] = {}

    class Recorder:
        """Stands in for subprocess.Popen to capture what lm-eval would be started with (a real
        lm-eval run costs minutes; the environment handed to it is what this test is about)."""

        def __init__(self, cmd: list[str], env: dict[str, str], **_: object) -> None:
            seen.update(cmd=cmd, env=env)
            raise RuntimeError("recorded")

    monkeypatch.setenv("OPENAI_API_KEY", "sk-developers-own-openai-key")
    monkeypatch.setattr(lmeval.subprocess, "Popen", Recorder)
    server = ServerHandle(role="base", url="http://127.0.0.1:9", model="m", api_key="the-servers-key")
    with pytest.raises(RuntimeError, match="recorded"):
        lmeval.run_pair([server], ["facts"], [], tokenizer=str(tmp_path), seed=1, concurrency=1)
    assert seen["env"]["OPENAI_API_KEY"] == "the-servers-key"  # type: ignore[index]
    assert "the-servers-key" not in " ".join(seen["cmd"])  # type: ignore[arg-type]
