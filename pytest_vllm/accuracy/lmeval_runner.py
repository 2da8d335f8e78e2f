"""Run lm-eval's ``local-completions`` model against a running server; write a compact JSON.

Run as a subprocess by ``lmeval.run_pair`` (so lm-eval, datasets and torch stay out of pytest's
process, and the offline switches are set before they are imported)::

    python -m pytest_vllm.accuracy.lmeval_runner --url http://127.0.0.1:8000 --model NAME \
        --tokenizer PATH --tasks pytest_vllm_choice --include DIR --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _metric_name(key: str) -> tuple[str, str]:
    """lm-eval's "exact_match,last_number" -> ("exact_match", "last_number")."""
    metric, _, filter_name = key.partition(",")
    return metric, filter_name or "none"


def leaves(results: dict[str, Any], task: str) -> list[str]:
    """A group's tasks, recursively (mmlu -> mmlu_stem -> mmlu_abstract_algebra, ...); a task itself."""
    subtasks = results.get("group_subtasks", {}).get(task)
    if not subtasks:
        return [task]
    return [leaf for sub in subtasks for leaf in leaves(results, sub)]


def compact(results: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """Per task (or group): each metric's score and its per-document values, in document order (a
    group's documents pooled over its tasks, in their order)."""
    out: dict[str, Any] = {}
    for task in tasks:
        scores = results["results"].get(task, {})
        parts = leaves(results, task)
        metrics: dict[str, Any] = {}
        for key, value in scores.items():
            if key.endswith("_stderr") or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = _metric_name(key)
            values = []
            for part in parts:
                docs = sorted((s for s in results.get("samples", {}).get(part, [])
                               if s.get("filter", "none") == filter_name and metric in s), key=lambda s: s["doc_id"])
                values += [float(s[metric]) for s in docs]
            if not values:  # bookkeeping such as sample_len, not a per-document score
                continue
            metrics[metric] = {"score": float(value), "filter": filter_name, "values": values}
        n = sum(len({s["doc_id"] for s in results.get("samples", {}).get(part, [])}) for part in parts)
        versions = results.get("versions", {})
        out[task] = {"metrics": metrics, "n": n, "version": versions.get(task),
                     "subtasks": {part: versions.get(part) for part in parts if part != task}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="server root, without /v1")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--include", action="append", default=[], help="folder of task YAMLs (repeatable)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OPENAI_API_KEY is the server's key, set by pytest_vllm.accuracy.lmeval for this process alone.

    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = [t for t in args.tasks.split(",") if t]
    started = time.monotonic()
    model_args = {"base_url": f"{args.url}/v1/completions", "model": args.model, "tokenizer_backend": "huggingface",
                  "tokenizer": args.tokenizer, "num_concurrent": args.concurrency, "max_retries": 1,
                  "timeout": 600, "seed": args.seed}
    results = lm_eval.simple_evaluate(
        model="local-completions", model_args=model_args, tasks=tasks,
        task_manager=TaskManager(include_path=args.include or None),
        log_samples=True, limit=args.limit, random_seed=args.seed, numpy_random_seed=args.seed,
        torch_random_seed=args.seed, fewshot_random_seed=args.seed, bootstrap_iters=0,
    )
    if results is None:
        print("lm-eval returned no results", file=sys.stderr)
        return 1
    version = getattr(lm_eval, "__version__", "unknown")
    payload = {"lm_eval_version": version, "seconds": round(time.monotonic() - started, 2),
               "model_args": {k: v for k, v in model_args.items() if k != "tokenizer"},
               "tasks": compact(results, tasks)}
    args.out.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
