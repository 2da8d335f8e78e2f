"""Eval sets: small JSONL files kept in the repo, loaded, validated and hashed.

A file's first line is a header ``{"_meta": {...}}`` (kind, prompt and scoring settings, source,
licence); every other line is one item. The hash covers the header and the items in canonical
JSON, so a baseline recorded on one version of a set is never compared with another version.

Kinds:

* ``generate``: ``{"id", "question", "answers": [...]}``, answered greedily (chat template when
  ``chat`` is true) and scored by ``scorer`` (see ``scoring.Scorer``);
* ``choice``: ``{"id", "context", "choices": [...], "gold": i}``, scored by the log-likelihood of
  each choice after the context (``acc``, and per character ``acc_norm``, as lm-eval does);
* ``corpus``: ``{"id", "text"}``, for logprob agreement;
* ``prompts``: ``{"id", "prompt"}``, for the greedy-generation top-k check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pytest_vllm.accuracy.scoring import Scorer
from pytest_vllm.errors import UsageError

Kind = Literal["generate", "choice", "corpus", "prompts"]
KINDS: tuple[str, ...] = ("generate", "choice", "corpus", "prompts")
METRICS_BY_KIND: dict[str, tuple[str, ...]] = {"generate": ("accuracy",), "choice": ("acc", "acc_norm")}
_META_KEYS = {"name", "kind", "description", "source", "license", "chat", "system", "few_shot", "max_tokens",
              "scorer", "template", "continuation_template"}
_ITEM_KEYS: dict[str, set[str]] = {"generate": {"id", "question", "answers"},
                                   "choice": {"id", "context", "choices", "gold"},
                                   "corpus": {"id", "text"}, "prompts": {"id", "prompt"}}


def builtin_dir() -> Path:
    """The eval sets shipped with pytest-vllm."""
    return Path(__file__).resolve().parent.parent / "data" / "evals"


@dataclass(frozen=True)
class EvalSet:
    """One eval set; ``items`` are plain dicts of the kind's keys."""

    name: str
    kind: Kind
    items: tuple[Mapping[str, Any], ...]
    sha256: str
    path: Path
    description: str = ""
    source: str = ""
    license: str = ""
    chat: bool = True
    system: str | None = None
    few_shot: tuple[tuple[str, str], ...] = ()
    max_tokens: int = 32
    scorer: Scorer = field(default_factory=Scorer)
    template: str = "{question}"
    continuation_template: str = " {choice}"

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS_BY_KIND.get(self.kind, ())

    def every(self, step: int) -> EvalSet:
        """Every ``step``-th item from the first (a slow host's share of a large set, sizing.py),
        named and hashed as the subset it is."""
        if step <= 1:
            return self
        items = self.items[::step]
        digest = hashlib.sha256(f"{self.sha256}:every{step}".encode()).hexdigest()
        return replace(self, name=f"{self.name} (1 text in {step})", items=items, sha256=digest)

    def settings(self) -> dict[str, Any]:
        """What, besides the items, decides the scores (part of the baseline key)."""
        return {"kind": self.kind, "chat": self.chat, "system": self.system,
                "few_shot": [list(s) for s in self.few_shot],
                "max_tokens": self.max_tokens, "scorer": self.scorer.to_dict(), "template": self.template,
                "continuation_template": self.continuation_template}

    def prompt_messages(self, item: Mapping[str, Any]) -> list[dict[str, str]]:
        """Chat messages for a ``generate`` item: system, few-shot turns, the question."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for question, answer in self.few_shot:
            messages += [{"role": "user", "content": self.template.format(question=question)},
                         {"role": "assistant", "content": answer}]
        return messages + [{"role": "user", "content": self.template.format(**item)}]

    def prompt_text(self, item: Mapping[str, Any]) -> str:
        """A plain completion prompt for a ``generate`` set with ``chat`` false."""
        shots = "".join(f"{self.template.format(question=q)}\n{a}\n\n" for q, a in self.few_shot)
        return (f"{self.system}\n\n" if self.system else "") + shots + self.template.format(**item) + "\n"


def canonical_hash(meta: Mapping[str, Any], items: Iterable[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for record in ({"_meta": meta}, *items):
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def load_eval_set(path: Path | str) -> EvalSet:
    """Read and validate one JSONL eval set; UsageError names the file, line and problem."""
    path = Path(path)
    try:
        lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read eval set {path}: {exc}") from None
    records = []
    for number, line in lines:
        try:
            records.append((number, json.loads(line)))
        except ValueError as exc:
            raise UsageError(f"{path}:{number}: not valid JSON ({exc})") from None
    if not records or not isinstance(records[0][1], dict) or "_meta" not in records[0][1]:
        raise UsageError(f"{path}: the first line must be the header {{\"_meta\": {{\"kind\": ..., ...}}}}")
    meta = records[0][1]["_meta"]
    where = f"{path}: "
    if not isinstance(meta, dict):
        raise UsageError(f"{where}_meta must be an object")
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise UsageError(f"{where}unknown _meta key(s) {', '.join(sorted(unknown))}; valid keys: "
                         f"{', '.join(sorted(_META_KEYS))}")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise UsageError(f"{where}_meta.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    items = [record for _, record in records[1:]]
    if not items:
        raise UsageError(f"{where}has no items")
    ids = set()
    for (number, item) in records[1:]:
        _check_item(item, kind, f"{path}:{number}: ")
        if item["id"] in ids:
            raise UsageError(f"{path}:{number}: duplicate id {item['id']!r}")
        ids.add(item["id"])
    max_tokens = meta.get("max_tokens", 32)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise UsageError(f"{where}_meta.max_tokens must be a positive integer")
    few_shot = meta.get("few_shot") or []
    if not all(isinstance(s, Sequence) and len(s) == 2 for s in few_shot):
        raise UsageError(f"{where}_meta.few_shot must be a list of [question, answer] pairs")
    return EvalSet(
        name=str(meta.get("name") or path.stem), kind=kind, items=tuple(items), sha256=canonical_hash(meta, items),
        path=path, description=str(meta.get("description", "")), source=str(meta.get("source", "")),
        license=str(meta.get("license", "")), chat=bool(meta.get("chat", True)), system=meta.get("system"),
        few_shot=tuple((str(q), str(a)) for q, a in few_shot), max_tokens=max_tokens,
        scorer=Scorer.from_spec(meta.get("scorer"), where), template=str(meta.get("template", "{question}")),
        continuation_template=str(meta.get("continuation_template", " {choice}")),
    )


def _check_item(item: Any, kind: str, where: str) -> None:
    if not isinstance(item, dict):
        raise UsageError(f"{where}an item must be a JSON object")
    wanted = _ITEM_KEYS[kind]
    missing = wanted - set(item)
    if missing:
        raise UsageError(f"{where}a {kind} item needs {', '.join(sorted(wanted))}; "
                         f"missing {', '.join(sorted(missing))}")
    if kind == "generate" and (not isinstance(item["answers"], list) or not item["answers"]):
        raise UsageError(f"{where}answers must be a non-empty list of accepted answers")
    if kind == "choice":
        choices = item["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise UsageError(f"{where}choices must list at least two options")
        if not isinstance(item["gold"], int) or not 0 <= item["gold"] < len(choices):
            raise UsageError(f"{where}gold must be the index of the right choice (0..{len(choices) - 1})")


def discover(dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """Eval set name -> file, built-in sets first; a later folder's set of the same name wins."""
    found: dict[str, Path] = {}
    for folder in (builtin_dir(), *dirs):
        for path in sorted(Path(folder).glob("*.jsonl")):
            found[path.stem] = path
    return found


def resolve(name_or_path: str | Path | EvalSet, dirs: Sequence[Path] = ()) -> EvalSet:
    """An EvalSet from a set name (built-in or in ``dirs``), a path, or an EvalSet."""
    if isinstance(name_or_path, EvalSet):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".jsonl") or "/" in text:
        return load_eval_set(Path(text))
    known = discover(dirs)
    if text not in known:
        raise UsageError(f"unknown eval set {text!r}; known sets: {', '.join(sorted(known))} (or pass a .jsonl path)")
    return load_eval_set(known[text])
