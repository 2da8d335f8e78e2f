"""Answer scoring: normalization, numbers, exact / regex / contains scorers, choice picking."""

from __future__ import annotations

import pytest

from pytest_vllm.accuracy.scoring import Scorer, mentions, normalize, numbers_in, pick_choice, same_answer
from pytest_vllm.errors import UsageError


def test_normalize_folds_case_accents_punctuation_and_articles() -> None:
    assert normalize("The  Pacific Ocean!") == "pacific ocean"
    assert normalize("Brasília.") == "brasilia"
    assert normalize("-3.5 degrees") == "-3.5 degrees"
    assert normalize("An apple, a day") == "apple day"


def test_numbers_are_whole_numbers_only() -> None:
    assert numbers_in("It is -18.0°C, 1,024 km and 12. H2O 5-3=2 on the 3rd") == [-18.0, 1024.0, 12.0, 5.0, 3.0, 2.0]
    assert same_answer("12.0", "12") and not same_answer("12", "13")
    assert same_answer("New  Delhi", "new delhi")


def test_contains_matches_whole_words_and_numbers_as_numbers() -> None:
    scorer = Scorer.from_spec("contains")
    assert scorer.score("The capital of Brazil is Brasília.", ["Brasilia"])
    assert scorer.score("A spider has 8 legs.", ["8", "eight"])
    assert not scorer.score("The freezing point of water is -18.0°C", ["0", "zero"])
    assert not scorer.score("Mexico is a country in North America.", ["Mexico City"])
    assert not scorer.score("Parisian cafes", ["Paris"])
    assert mentions("Water boils at 100 degrees.", "100")


def test_regex_extracts_the_last_number() -> None:
    scorer = Scorer.from_spec({"type": "regex", "pattern": r"-?\d+(?:\.\d+)?", "pick": "last"})
    assert scorer.score("4 + 6 = 10.", ["10"])
    assert not scorer.score("4 + 6 = 11.", ["10"])
    assert not scorer.score("To add 4 and 6, we need to", ["10"])  # the last number is 6
    assert not scorer.score("I do not know.", ["10"])  # nothing to extract
    first = Scorer.from_spec({"type": "regex", "pattern": r"answer is (\w+)"})
    assert first.extract("The answer is Paris, not Lyon; the answer is Rome") == "Paris"


def test_exact_match_compares_the_whole_answer() -> None:
    scorer = Scorer.from_spec(None)
    assert scorer.kind == "exact"
    assert scorer.score("Paris.", ["Paris"])
    assert not scorer.score("The capital is Paris.", ["Paris"])


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "fuzzy"}, "unknown scorer 'fuzzy'; valid scorers: exact, regex, contains"),
    ({"type": "regex"}, "needs a pattern"),
    ({"type": "regex", "pattern": "("}, "not a valid regex"),
    ({"type": "regex", "pattern": "x", "pick": "middle"}, "pick must be first or last"),
    ({"type": "exact", "flags": "i"}, "unknown scorer key(s) flags"),
])
def test_bad_scorer_specs_are_usage_errors(spec: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Scorer.from_spec(spec)


def test_pick_choice_by_logprob_and_per_character() -> None:
    logprobs = [-4.0, -3.0, -9.0]
    assert pick_choice(logprobs) == 1
    # per character: -4/2 = -2.0 beats -3/1 = -3.0 and -9/4 = -2.25
    assert pick_choice(logprobs, [2, 1, 4]) == 0
    assert pick_choice([-1.0, -1.0]) == 0  # ties go to the first
