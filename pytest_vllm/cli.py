"""The ``pytest-vllm`` console command: embedded models, baselines, metric names, caches.

    pytest-vllm models build [--compressor-python PATH] [--force]
    pytest-vllm models verify
    pytest-vllm models path [base|compressed]
    pytest-vllm baselines list [DIR]
    pytest-vllm baselines compare A B      two baseline folders or files (e.g. baselines/cpu baselines/h100)
    pytest-vllm baselines add RESULTS.json [--dir baselines]
                                           pool gate runs (results.json of other runners) into the baselines
    pytest-vllm metrics                    metric names for budgets, with units and directions
    pytest-vllm warm                       cache the installed vLLM's server options (flag validation)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_vllm.errors import VLLMPluginError


def _models(args: argparse.Namespace) -> int:
    from pytest_vllm.models import embedded

    recipes = list(embedded.RECIPES.values())
    if args.action == "build":
        sources = {r.source for r in recipes}
        wanted = {"base": [embedded.BASE_RECIPE], "compressed": [embedded.COMPRESSED_RECIPE]}.get(
            args.only or "", [r for r in recipes if r.name not in sources])  # a build builds its source first
        for recipe in wanted:
            embedded.build(recipe, vllm_python=args.vllm_python, compressor_python=args.compressor_python,
                           force=args.force, say=lambda m: print(m, flush=True))
        return 0
    if args.action == "verify":
        bad = 0
        for recipe in recipes:
            problems = embedded.verify(recipe, full=True)
            print(f"{recipe.name}: {'ok' if not problems else '; '.join(problems)}")
            bad += bool(problems)
        return 1 if bad else 0
    if args.action == "path":
        by_role = {"base": embedded.BASE_RECIPE, "compressed": embedded.COMPRESSED_RECIPE}
        for role in args.roles or ["base", "compressed"]:
            if role not in by_role:
                raise VLLMPluginError(f"unknown role {role!r}: use base or compressed")
            print(embedded.model_path(by_role[role]))
        return 0
    raise AssertionError(args.action)


def _warm(args: argparse.Namespace) -> int:
    from pytest_vllm.paths import cache_dir
    from pytest_vllm.server.flags import load_schema

    schema = load_schema(args.vllm_python, cache_dir())
    print(f"vLLM {schema.vllm_version}: {len(schema.options)} server options cached")
    return 0


BASELINE_COLUMNS = ("output_throughput", "ttft_p50", "tpot_p50", "e2el_p50")


def _baseline_rows(root: Path) -> dict[tuple[str, str], dict]:
    """(file path relative to root, entry name) -> entry, for a folder or a single file."""
    from pytest_vllm import baselines

    if root.is_file():
        return {(root.name, name): entry for name, entry in baselines.read_file(root)["entries"].items()}
    if not root.is_dir():
        raise VLLMPluginError(f"{root} is neither a baseline folder nor a baseline file")
    return {(str(path.relative_to(root)), name): entry for path, name, entry in baselines.iter_entries(root)}


def _baselines(args: argparse.Namespace) -> int:
    if args.action == "list":
        root = Path(args.paths[0] if args.paths else "baselines")
        rows = _baseline_rows(root)
        if not rows:
            print(f"no baselines under {root}")
            return 0
        header = " ".join(f"{c:>17}" for c in BASELINE_COLUMNS)
        print(f"{'file':<70} {'entry':<40} {'recorded (newest)':<26} {'recordings':>10} {'vllm':<8} {header}")
        for (path, name), entry in sorted(rows.items()):
            env = entry.get("environment", {})
            values = [entry["metrics"].get(c, {}).get("median") for c in BASELINE_COLUMNS]
            print(f"{path:<70} {name:<40} {env.get('recorded_at', '?'):<26} {len(entry.get('recordings', [1])):>10} "
                  f"{env.get('vllm_version', '?'):<8} "
                  + " ".join(f"{v:17.2f}" if v is not None else f"{'-':>17}" for v in values))
        return 0
    if args.action == "add":
        from pytest_vllm import baselines

        if not args.paths:
            raise VLLMPluginError("baselines add takes one or more results.json files of gate runs")
        for results in args.paths:
            for written, name, count in baselines.add_results(Path(args.dir), Path(results)):
                print(f"{written} [{name}]: {count} recording{'s' if count != 1 else ''}")
        return 0
    if len(args.paths) != 2:
        raise VLLMPluginError("baselines compare takes two folders or files: A B")
    a, b = (_baseline_rows(Path(p)) for p in args.paths)
    common = sorted(set(a) & set(b))
    print(f"{len(common)} entries in both, {len(set(a) - set(b))} only in A, {len(set(b) - set(a))} only in B")
    for key in common:
        print(f"{key[0]} [{key[1]}]")
        for metric in BASELINE_COLUMNS:
            va = a[key]["metrics"].get(metric, {}).get("median")
            vb = b[key]["metrics"].get(metric, {}).get("median")
            if va is None or vb is None:
                continue
            ratio = f"{vb / va:8.3f}x" if va else "       -"
            print(f"    {metric:<20} A {va:12.2f}   B {vb:12.2f}   B/A {ratio}")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from pytest_vllm.perf.metrics import METRIC_DEFINITIONS, METRICS

    print(f"metric definitions {METRIC_DEFINITIONS} (those of `vllm bench serve`)")
    for name, info in METRICS.items():
        better = {"lower": "lower is better", "higher": "higher is better", "none": "informational"}[info.direction]
        print(f"  {name:<26} {info.unit:<6} {better:<17} {info.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-vllm", description="pytest-vllm helper commands")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="the embedded model pair (SmolLM2-135M-Instruct, W8A8)")
    models.add_argument("action", choices=["build", "verify", "path"])
    models.add_argument("roles", nargs="*", help="for `path`: base and/or compressed")
    models.add_argument("--vllm-python", default=sys.executable, help="interpreter with vLLM, transformers, gguf")
    models.add_argument("--compressor-python", help="interpreter with llm-compressor (its own environment)")
    models.add_argument("--force", action="store_true", help="rebuild even if verified")
    models.add_argument("--only", choices=["base", "compressed"],
                        help="build one checkpoint (GPUs need only the base: their compressed default is online FP8)")
    models.set_defaults(run=_models)

    base = sub.add_parser("baselines", help="list, compare or pool baseline files")
    base.add_argument("action", choices=["list", "compare", "add"])
    base.add_argument("paths", nargs="*", help="list: a folder (default: baselines); compare: two folders or files; "
                      "add: results.json files of gate runs, each added to its baselines as one more recording")
    base.add_argument("--dir", default="baselines", help="add: the baseline folder (default: baselines)")
    base.set_defaults(run=_baselines)

    metrics = sub.add_parser("metrics", help="metric names usable in budgets")
    metrics.set_defaults(run=_metrics)

    warm = sub.add_parser("warm", help="cache the installed vLLM's server options for fast flag checks")
    warm.add_argument("--vllm-python", default=sys.executable)
    warm.set_defaults(run=_warm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # argparse leaves positionals that follow an option unparsed (`baselines add --dir D r.json`).
    if rest and hasattr(args, "paths") and not any(r.startswith("-") for r in rest):
        args.paths += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.run(args))
    except VLLMPluginError as exc:
        print(f"pytest-vllm: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"pytest-vllm: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
