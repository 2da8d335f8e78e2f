"""The ``pytest-vllm`` console command: build the embedded models, warm caches.

    pytest-vllm models build [--compressor-python PATH] [--force]
    pytest-vllm models verify
    pytest-vllm models path [base|compressed]
    pytest-vllm warm            cache the installed vLLM's server options (flag validation)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pytest_vllm.errors import VLLMPluginError


def _models(args: argparse.Namespace) -> int:
    from pytest_vllm.models import embedded

    recipes = list(embedded.RECIPES.values())
    if args.action == "build":
        sources = {r.source for r in recipes}
        for recipe in (r for r in recipes if r.name not in sources):  # a build builds its source first
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
        wanted = {"base": embedded.BASE_RECIPE, "compressed": embedded.COMPRESSED_RECIPE}
        for role in args.roles or ["base", "compressed"]:
            if role not in wanted:
                raise VLLMPluginError(f"unknown role {role!r}: use base or compressed")
            print(embedded.model_path(wanted[role]))
        return 0
    raise AssertionError(args.action)


def _warm(args: argparse.Namespace) -> int:
    from pytest_vllm.paths import cache_dir
    from pytest_vllm.server.flags import load_schema

    schema = load_schema(args.vllm_python, cache_dir())
    print(f"vLLM {schema.vllm_version}: {len(schema.options)} server options cached")
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
    models.set_defaults(run=_models)

    warm = sub.add_parser("warm", help="cache the installed vLLM's server options for fast flag checks")
    warm.add_argument("--vllm-python", default=sys.executable)
    warm.set_defaults(run=_warm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
