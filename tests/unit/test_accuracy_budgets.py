"""Accuracy budgets and settings: parsing, clear usage errors, verdicts; eval set files; baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vllm import baselines
from pytest_vllm.accuracy import history
from pytest_vllm.accuracy.budgets import (
    AccuracyBudget,
    judge_interval,
    judge_value,
    known_set_names,
    parse_budget,
    parse_budgets,
    settings_from,
)
from pytest_vllm.accuracy.engine import Scored
from pytest_vllm.accuracy.evalsets import discover, load_eval_set, resolve
from pytest_vllm.accuracy.stats import PairedCounts, recovery_interval
from pytest_vllm.errors import UsageError

SETS = ["facts", "choice"]


def test_numbers_strings_and_off() -> None:
    assert parse_budget("recovery", 0.97, SETS) == AccuracyBudget("recovery", ">=", 0.97, "0.97")
    assert parse_budget("kl_mean", "<= 0.1", SETS).value == 0.1
    assert parse_budget("recovery_facts", ">=0.9", SETS).key == "recovery_facts"
    assert parse_budget("recovery_choice", "off", SETS).off
    assert parse_budget("min_score", None, SETS).off


def test_unknown_key_names_the_valid_keys() -> None:
    with pytest.raises(UsageError) as info:
        parse_budget("recovry", 0.9, SETS, where="t.py::x: ")
    message = str(info.value)
    assert message.startswith("t.py::x: unknown accuracy budget key 'recovry'")
    for key in ("recovery", "history", "top1_agreement", "kl_mean", "kl_p99", "ppl_ratio", "greedy_topk",
                "recovery_<set>", "facts", "choice"):
        assert key in message


def test_per_set_key_of_an_unknown_set_is_an_error() -> None:
    with pytest.raises(UsageError, match="unknown accuracy budget key 'recovery_trivia'"):
        parse_budget("recovery_trivia", 0.9, SETS)


@pytest.mark.parametrize(("key", "raw", "message"), [
    ("kl_mean", ">= 0.1", "kl_mean is an upper limit; write \"<= 0.1\""),
    ("recovery", "<= 0.9", "recovery is a lower limit; write \">= 0.9\""),
    ("recovery", "ninety", "write a number"),
    ("recovery", True, "give a number"),
])
def test_malformed_values(key: str, raw: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_budget(key, raw, SETS)


@pytest.mark.parametrize(("key", "raw", "fix"), [("recovery", 95, "for 95% write 0.95"),
                                               ("top1_agreement", ">= 80", "for 80% write 0.8"),
                                               ("history_facts", 97.5, "for 97.5% write 0.975")])
def test_a_percentage_where_a_ratio_belongs_says_the_ratio(key: str, raw: object, fix: str) -> None:
    with pytest.raises(UsageError, match=f"is a ratio, at most .* to mean anything; {fix}$"):
        parse_budget(key, raw, SETS)
    assert parse_budget("recovery", 1.02, SETS).value == 1.02  # demanding a gain is allowed
    assert parse_budget("kl_p99", 5, SETS).value == 5  # nats: no percentage reading


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(UsageError) as info:
        parse_budgets({"recovry": 1, "kl_mean": ">= 2", "recovery": 0.9}, SETS)
    assert "recovry" in str(info.value) and "kl_mean" in str(info.value)


def test_settings_from_the_pyproject_table(tmp_path: Path) -> None:
    settings = settings_from({"confidence": 0.9, "gate": "lower", "budgets": {"recovery_facts": 0.9, "kl_mean": 0.5},
                              "eval_dirs": ["evals"], "concurrency": 4}, tmp_path, SETS)
    assert settings.confidence == 0.9 and settings.gate == "lower" and settings.concurrency == 4
    assert settings.eval_dirs == (tmp_path / "evals",)
    assert settings.budgets.for_set("recovery", "facts").value == 0.9
    assert settings.budgets.for_set("recovery", "choice").value == 0.95  # the default
    assert settings.budgets.get("kl_mean").value == 0.5


@pytest.mark.parametrize(("table", "message"), [
    ({"confidance": 0.9}, "unknown key(s) confidance; valid keys: confidence"),
    ({"gate": "strict"}, "gate must be one of point, upper, lower"),
    ({"confidence": 1.5}, "confidence must be at least 0.5"),
    ({"budgets": {"recovry": 0.9}}, "unknown accuracy budget key 'recovry'"),
    ({"budgets": 0.9}, "budgets must be a table"),
])
def test_bad_settings_are_usage_errors(tmp_path: Path, table: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings_from(table, tmp_path, SETS)


def test_known_set_names_include_eval_sets_and_lm_eval_tasks() -> None:
    names = known_set_names()
    assert {"facts", "arithmetic", "choice", "pytest_vllm_choice", "pytest_vllm_arithmetic"} <= set(names)


def _recovery(both: int, b: int, c: int) -> object:
    return recovery_interval(PairedCounts(both=both, compressed_only=b, base_only=c, neither=50))


def test_gates_judge_the_interval() -> None:
    budget = AccuracyBudget("recovery", ">=", 0.95, "0.95")
    noisy = _recovery(54, 7, 8)  # recovery 0.98, interval about [0.88, 1.10]
    assert judge_interval(noisy, budget, "upper").label == "INCONCLUSIVE (warning)"
    assert not judge_interval(noisy, budget, "lower").passed
    assert judge_interval(noisy, budget, "point").label == "INCONCLUSIVE (warning)"  # passes, never labelled PASS
    # The case: a damaged checkpoint's choice acc at 0.891 [0.852, 0.955] passed the old default
    # (upper) as "inconclusive"; the point default fails it.
    drop = recovery_interval(PairedCounts(both=140, compressed_only=7, base_only=25, neither=28))  # [0.852, 0.955]
    assert judge_interval(drop, budget, "upper").passed and judge_interval(drop, budget, "point").label == "FAIL"
    assert settings_from({}, Path('.'), SETS).gate == "point"
    damaged = _recovery(33, 7, 39)  # recovery 0.56, whole interval below 0.8
    for gate in ("upper", "lower", "point"):
        assert judge_interval(damaged, budget, gate).label == "FAIL"  # type: ignore[arg-type]
    tight = _recovery(400, 1, 1)
    assert judge_interval(tight, budget, "lower").label == "PASS"
    assert judge_interval(noisy, AccuracyBudget("recovery", ">=", None, "off"), "upper").label == "-"


def test_judge_value_follows_the_operator() -> None:
    assert judge_value(0.05, AccuracyBudget("kl_mean", "<=", 0.2, "")).passed
    assert not judge_value(0.5, AccuracyBudget("kl_mean", "<=", 0.2, "")).passed
    assert not judge_value(0.7, AccuracyBudget("top1_agreement", ">=", 0.8, "")).passed


# -- eval set files ---------------------------------------------------------------------------------
def test_builtin_sets_load_with_source_licence_and_stable_hash() -> None:
    found = discover()
    assert {"facts", "arithmetic", "choice", "agreement_corpus", "greedy_prompts"} <= set(found)
    for name in found:
        eval_set = load_eval_set(found[name])
        assert eval_set.source and eval_set.license, name
        assert eval_set.sha256 == load_eval_set(found[name]).sha256
    facts = resolve("facts")
    assert facts.kind == "generate" and facts.chat and len(facts.items) >= 100
    assert resolve("choice").metrics == ("acc", "acc_norm")


def test_hash_changes_with_items_and_settings(tmp_path: Path) -> None:
    def write(name: str, meta: dict, items: list[dict]) -> Path:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in [{"_meta": meta}, *items]) + "\n")
        return path

    item = {"id": "1", "question": "What is 2 + 2?", "answers": ["4"]}
    a = load_eval_set(write("a", {"kind": "generate", "max_tokens": 8}, [item]))
    b = load_eval_set(write("b", {"kind": "generate", "max_tokens": 9}, [item]))
    c = load_eval_set(write("c", {"kind": "generate", "max_tokens": 8}, [{**item, "answers": ["four"]}]))
    assert len({a.sha256, b.sha256, c.sha256}) == 3


@pytest.mark.parametrize(("lines", "message"), [
    (['{"id": "1"}'], "the first line must be the header"),
    (['{"_meta": {"kind": "quiz"}}', '{"id": "1"}'], "_meta.kind must be one of"),
    (['{"_meta": {"kind": "generate", "colour": 1}}', '{"id": "1"}'], "unknown _meta key(s) colour"),
    (['{"_meta": {"kind": "generate"}}'], "has no items"),
    (['{"_meta": {"kind": "generate"}}', '{"id": "1", "question": "q"}'], ":2: a generate item needs"),
    (['{"_meta": {"kind": "choice"}}', '{"id": "1", "context": "c", "choices": ["a", "b"], "gold": 2}'],
     "gold must be the index"),
    (['{"_meta": {"kind": "corpus"}}', '{"id": "1", "text": "a"}', '{"id": "1", "text": "b"}'], "duplicate id"),
    (['{"_meta": {"kind": "corpus"}}', '{"id": "1", "text": "a"'], ":2: not valid JSON"),
])
def test_malformed_eval_files_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_eval_set(path)
    assert str(path) in str(info.value)


def test_unknown_set_name_lists_known_sets() -> None:
    with pytest.raises(UsageError, match="unknown eval set 'trivia'; known sets: .*facts"):
        resolve("trivia")


# -- baselines ----------------------------------------------------------------------------------------
def test_accuracy_entries_round_trip_through_the_baseline_files(tmp_path: Path) -> None:
    assert history.DEFINITIONS in baselines.OTHER_DEFINITIONS
    scored = Scored("facts", "eval", "base", "m", {"accuracy": (True, False, True, True)}, {"sha256": "x"})
    key = history.baseline_key("cpu", "suites/test_accuracy.py::test_h", scored)
    entry = history.make_entry(scored, {"key": "k"}, {"recorded_at": "now"}, "suites/test_accuracy.py::test_h")
    path = baselines.write(tmp_path, key, entry)
    assert path == tmp_path / "cpu" / "m" / "test_accuracy" / "test_h.json"
    stored = baselines.load(tmp_path, key)
    assert stored is not None and stored.median("accuracy") == 0.75 and stored.workload_key == scored.key
    later = Scored("facts", "eval", "base", "m", {"accuracy": (True, True, False, True)}, {"sha256": "x"})
    counts = history.stored_counts(stored, "accuracy", later)
    assert counts == PairedCounts(both=2, compressed_only=1, base_only=1, neither=0)
    shorter = Scored("facts", "eval", "base", "m", {"accuracy": (True,)}, {"sha256": "x"})
    assert history.stored_counts(stored, "accuracy", shorter) is None



