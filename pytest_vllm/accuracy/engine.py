"""Scores of eval sets and lm-eval tasks on servers, computed once per session and shared.

A reference is an eval set (name, path or EvalSet) or ``lmeval:<task>``. ``Engine.score`` runs
whatever is not cached yet: the built-in sets on all given servers at once, the lm-eval tasks in
one lm-eval process per server, also at once. The recovery test and the base-history test thus
share one evaluation of the base server.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_vllm.accuracy import lmeval
from pytest_vllm.accuracy.budgets import AccuracySettings
from pytest_vllm.accuracy.evalsets import EvalSet, resolve
from pytest_vllm.accuracy.tasks import evaluate_servers, run
from pytest_vllm.errors import UsageError
from pytest_vllm.server.handle import ServerHandle

# Bumped whenever prompting or scoring changes: baselines recorded by another version do not apply.
SCORING_VERSION = "pytest-vllm-accuracy/1"
LMEVAL_PREFIX = "lmeval:"

Reference = str | Path | EvalSet


@dataclass(frozen=True)
class Scored:
    """One eval set or lm-eval task scored on one server: per metric, per item right or wrong."""

    name: str
    source: str  # "eval" or "lm-eval"
    role: str
    model: str
    metrics: dict[str, tuple[bool, ...]]
    key_material: dict[str, Any]  # what a baseline of these scores is keyed by
    seconds: float = 0.0
    answers: tuple[str, ...] = ()
    item_ids: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name if self.source == "eval" else f"lm-eval {self.name}"

    @property
    def key(self) -> str:
        blob = json.dumps(self.key_material, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def n(self, metric: str) -> int:
        return len(self.metrics[metric])

    def score(self, metric: str) -> float:
        values = self.metrics[metric]
        return sum(values) / len(values) if values else 0.0

    def bits(self, metric: str) -> str:
        return "".join("1" if ok else "0" for ok in self.metrics[metric])


def _on(servers: Sequence[ServerHandle]) -> str:
    roles = " and ".join(f"the {s.role}" for s in servers)
    return f"{roles} server" + (" (both at once)" if len(servers) > 1 else "")


def sampling(seed: int) -> dict[str, Any]:
    return {"temperature": 0.0, "seed": seed}


@dataclass
class Engine:
    settings: AccuracySettings
    say: Callable[[str], None] = print
    cache: dict[tuple[str, str, str], Scored] = field(default_factory=dict)

    def score(self, servers: Sequence[ServerHandle], refs: Sequence[Reference]) -> list[list[Scored]]:
        """Scores of every reference on every server: ``[server index][reference index]``."""
        if not refs:
            raise UsageError("name at least one eval set or lmeval:<task>")
        eval_sets: list[EvalSet] = []
        tasks: list[str] = []
        keys: list[str] = []
        for ref in refs:
            if isinstance(ref, str) and ref.startswith(LMEVAL_PREFIX):
                task = ref[len(LMEVAL_PREFIX):]
                tasks.append(task)
                keys.append(f"{LMEVAL_PREFIX}{task}")
            else:
                eval_set = resolve(ref, self.settings.eval_dirs)
                if eval_set.kind not in ("generate", "choice"):
                    raise UsageError(f"eval set {eval_set.name} is a {eval_set.kind} set; task accuracy needs a "
                                     "generate or choice set (corpus and prompts sets serve logprob agreement)")
                eval_sets.append(eval_set)
                keys.append(f"eval:{eval_set.sha256}")
        self._fill_eval(servers, eval_sets)
        self._fill_lmeval(servers, tasks)
        return [[self.cache[(s.url, s.model, key)] for key in keys] for s in servers]

    def _fill_eval(self, servers: Sequence[ServerHandle], eval_sets: Sequence[EvalSet]) -> None:
        def cached(server: ServerHandle, eval_set: EvalSet) -> bool:
            return (server.url, server.model, f"eval:{eval_set.sha256}") in self.cache

        todo = list({s.sha256: s for s in eval_sets if not all(cached(srv, s) for srv in servers)}.values())
        if not todo:
            return
        todo_servers = [srv for srv in servers if not all(cached(srv, s) for s in todo)]
        self.say(f"accuracy: scoring {', '.join(s.name for s in todo)} ({sum(len(s.items) for s in todo)} items) on "
                 f"{_on(todo_servers)}")
        started = time.monotonic()
        results = run(evaluate_servers(todo_servers, todo, self.settings.concurrency, self.settings.seed))
        for server, server_results in zip(todo_servers, results):
            for result in server_results:
                eval_set = result.eval_set
                material = {"scoring": SCORING_VERSION, "eval_set": eval_set.name, "sha256": eval_set.sha256,
                            "settings": eval_set.settings(), "sampling": sampling(self.settings.seed)}
                self.cache[(server.url, server.model, f"eval:{eval_set.sha256}")] = Scored(
                    eval_set.name, "eval", server.role, server.model,
                    {m: tuple(result.correct(m)) for m in eval_set.metrics}, material, result.seconds,
                    tuple(item.answer for item in result.items), tuple(item.id for item in result.items))
        self.say(f"accuracy: scored in {time.monotonic() - started:.1f}s")

    def _fill_lmeval(self, servers: Sequence[ServerHandle], tasks: Sequence[str]) -> None:
        def cached(server: ServerHandle, task: str) -> bool:
            return (server.url, server.model, f"{LMEVAL_PREFIX}{task}") in self.cache

        todo = [t for t in dict.fromkeys(tasks) if not all(cached(s, t) for s in servers)]
        if not todo:
            return
        if not lmeval.available():
            raise UsageError(f"lm-eval is not installed: {lmeval.INSTALL_HINT}")
        todo_servers = [srv for srv in servers if not all(cached(srv, t) for t in todo)]
        self.say(f"accuracy: lm-eval {', '.join(todo)} on {_on(todo_servers)} (local-completions, offline)")
        started = time.monotonic()
        runs = lmeval.run_pair(todo_servers, todo, self.settings.eval_dirs, tokenizer=self.settings.lmeval_tokenizer,
                               seed=self.settings.seed, concurrency=min(self.settings.concurrency, 8))
        yamls = lmeval.discover_tasks(self.settings.eval_dirs)
        for server, task_run in zip(todo_servers, runs):
            for task in todo:
                info = task_run.tasks[task]
                metrics: dict[str, tuple[bool, ...]] = {}
                for metric, data in info["metrics"].items():
                    values = data["values"]
                    if any(v not in (0.0, 1.0) for v in values):
                        raise UsageError(f"lm-eval task {task}: metric {metric} is not 0/1 per document; recovery "
                                         "with confidence bounds needs per-document right/wrong metrics")
                    metrics[metric] = tuple(v == 1.0 for v in values)
                material = {"scoring": SCORING_VERSION, "lm_eval": task_run.lm_eval_version, "task": task,
                            "task_version": info.get("version"), "n": info.get("n"),
                            "subtasks": info.get("subtasks") or {},
                            "task_yaml_sha256": hashlib.sha256(yamls[task].read_bytes()).hexdigest()
                            if task in yamls else None,
                            "sampling": sampling(self.settings.seed)}
                self.cache[(server.url, server.model, f"{LMEVAL_PREFIX}{task}")] = Scored(
                    task, "lm-eval", server.role, server.model, metrics, material, task_run.seconds)
        self.say(f"accuracy: lm-eval done in {time.monotonic() - started:.1f}s")
