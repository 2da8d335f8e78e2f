"""Scoring of one answer: exact match, a regex-extracted answer, or a whole-word mention.

Normalization follows SQuAD / lm-eval's ``exact_match`` habits (case, punctuation, articles,
whitespace) and also folds accents, so "Brasília" matches "Brasilia". Numbers are compared as
numbers: "12.0" equals "12", while the "0" inside "-18.0" is not a mention of 0.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pytest_vllm.errors import UsageError

ScorerKind = Literal["exact", "regex", "contains"]
SCORER_KINDS: tuple[str, ...] = ("exact", "regex", "contains")
# A number written with digits, not glued to letters or other digits ("H2O" holds none).
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?!\w)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s.\-]|(?<!\d)\.|\.(?!\d)|-(?!\d)")  # keeps a sign and a decimal point


def normalize(text: str) -> str:
    """Lower case, accents folded, punctuation (but not a number's sign or decimal point) and
    articles dropped, whitespace collapsed."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
    folded = _PUNCT.sub(" ", folded)
    folded = _ARTICLES.sub(" ", folded)
    return " ".join(folded.split())


def parse_number(text: str) -> float | None:
    """A number written as digits ("1,024", "-3", "2.50"), else None."""
    cleaned = text.strip().replace(",", "")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numbers_in(text: str) -> list[float]:
    """Every number written with digits, in order ("-18.0°C" gives -18.0, not 18 and 0)."""
    found = []
    for match in NUMBER.finditer(text):
        value = parse_number(match.group(0))
        if value is not None:
            found.append(value)
    return found


def same_answer(candidate: str, reference: str) -> bool:
    """Equal as numbers when both are numbers, else equal after normalization."""
    a, b = parse_number(candidate), parse_number(reference)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return normalize(candidate) == normalize(reference)


@dataclass(frozen=True)
class Scorer:
    """How a generated answer is judged against an item's accepted answers.

    * ``exact``: the whole (normalized) answer equals one accepted answer;
    * ``regex``: ``pattern`` is searched in the answer; its first group (or the whole match) of the
      ``pick`` = first or last match is the extracted answer, compared as in ``exact``;
    * ``contains``: an accepted answer appears in the answer as whole words (numbers as numbers).
    """

    kind: ScorerKind = "exact"
    pattern: str | None = None
    pick: Literal["first", "last"] = "first"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | str | None, where: str = "") -> Scorer:
        if spec is None:
            return cls()
        if isinstance(spec, str):
            spec = {"type": spec}
        kind = spec.get("type", "exact")
        if kind not in SCORER_KINDS:
            raise UsageError(f"{where}unknown scorer {kind!r}; valid scorers: {', '.join(SCORER_KINDS)}")
        unknown = set(spec) - {"type", "pattern", "pick"}
        if unknown:
            raise UsageError(f"{where}unknown scorer key(s) {', '.join(sorted(unknown))}; "
                             "valid keys: type, pattern, pick")
        pattern = spec.get("pattern")
        if kind == "regex":
            if not pattern:
                raise UsageError(f"{where}the regex scorer needs a pattern")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UsageError(f"{where}scorer pattern {pattern!r} is not a valid regex ({exc})") from None
        pick = spec.get("pick", "first")
        if pick not in ("first", "last"):
            raise UsageError(f"{where}scorer pick must be first or last, not {pick!r}")
        return cls(kind=kind, pattern=pattern, pick=pick)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "pattern": self.pattern, "pick": self.pick}

    def extract(self, answer: str) -> str | None:
        """The part of ``answer`` that is compared (None: nothing to compare)."""
        if self.kind != "regex":
            return answer
        assert self.pattern is not None
        matches = list(re.finditer(self.pattern, answer))
        if not matches:
            return None
        match = matches[0] if self.pick == "first" else matches[-1]
        return next((g for g in match.groups() if g is not None), match.group(0))

    def score(self, answer: str, accepted: Sequence[str]) -> bool:
        if self.kind == "contains":
            return any(mentions(answer, reference) for reference in accepted)
        extracted = self.extract(answer)
        if extracted is None:
            return False
        return any(same_answer(extracted, reference) for reference in accepted)


def mentions(answer: str, reference: str) -> bool:
    """``reference`` appears in ``answer`` as whole words; a number as a whole number."""
    number = parse_number(reference)
    if number is not None:
        return any(math.isclose(number, found, abs_tol=1e-9) for found in numbers_in(answer))
    needle = normalize(reference)
    if not needle:
        return False
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", normalize(answer)) is not None


def pick_choice(logprobs: Sequence[float], lengths: Sequence[int] | None = None) -> int:
    """The index of the most likely choice; with ``lengths``, per character of the choice
    (lm-eval's ``acc_norm``). Ties go to the first."""
    if lengths is None:
        scores = list(logprobs)
    else:
        scores = [lp / max(1, n) for lp, n in zip(logprobs, lengths)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
