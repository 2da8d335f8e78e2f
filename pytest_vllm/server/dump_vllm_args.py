"""Print the installed vLLM server's command-line options as JSON (run in vLLM's environment).

``python -m pytest_vllm.server.dump_vllm_args`` imports vLLM's own OpenAI-server argument
parser, so flag validation follows whatever vLLM version is installed (0.24 CUDA, 0.32 CPU,
...). Importing vLLM takes seconds; the plugin caches this output per vLLM version.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

# Where make_arg_parser / FlexibleArgumentParser live, newest vLLM first.
PARSER_MODULES = ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.openai.cli_args")
FLEXIBLE_PARSER_MODULES = ("vllm.utils.argparse_utils", "vllm.utils")


def _first_attr(modules: tuple[str, ...], name: str) -> Any:
    errors = []
    for module_name in modules:
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module_name}.{name}: {exc}")
    raise ImportError("; ".join(errors))


def build_parser() -> argparse.ArgumentParser:
    make_arg_parser = _first_attr(PARSER_MODULES, "make_arg_parser")
    flexible = _first_attr(FLEXIBLE_PARSER_MODULES, "FlexibleArgumentParser")
    return make_arg_parser(flexible())


def _accepts(convert: Callable[[str], Any], text: str) -> bool:
    try:
        convert(text)
    except Exception:  # noqa: BLE001 - any failure means "rejects"
        return False
    return True


def value_kind(action: argparse.Action) -> str:
    """Classify a value-taking option by probing its type callable: int, float or any."""
    convert = action.type
    if convert is None or convert is str or not callable(convert):
        return "any"
    if convert is int:
        return "int"
    if convert is float:
        return "float"
    if _accepts(convert, "not-a-number"):
        return "any"
    if _accepts(convert, '{"k": 1}') or _accepts(convert, "[1]"):
        return "any"  # a JSON flag (speculative_config, allowed_origins): its parser also takes "0.5"
    if _accepts(convert, "8") and not _accepts(convert, "0.5"):
        return "int"
    if _accepts(convert, "0.5"):
        return "float"
    return "any"


def describe(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public action list
        if not action.option_strings or isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            kind = "boolean_optional"
        elif action.nargs == 0:
            kind = "store_const"
        else:
            kind = "value"
        choices = None
        if action.choices is not None:
            choices = [str(c) for c in action.choices]
        info = {
            "dest": action.dest,
            "kind": kind,
            "value_kind": value_kind(action) if kind == "value" else None,
            "nargs": action.nargs if isinstance(action.nargs, (str, int)) else None,
            "choices": choices,
            "deprecated": bool(getattr(action, "deprecated", False)),
        }
        for option in action.option_strings:
            options[option] = info
    return options


def main() -> None:
    try:
        import vllm

        version = getattr(vllm, "__version__", "unknown")
        options = describe(build_parser())
    except Exception as exc:  # noqa: BLE001 - reported to the plugin as JSON
        json.dump({"error": f"{type(exc).__name__}: {exc}"}, sys.stdout)
        sys.exit(1)
    json.dump({"vllm_version": version, "options": options}, sys.stdout)


if __name__ == "__main__":
    main()
