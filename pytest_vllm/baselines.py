"""Baseline files: layout, schema and validation, locked atomic writes.

Layout: ``<baseline dir>/<scope>/<served model>/<test file stem>/<test function>.json``, the scope
being the host class for performance (``cpu-intel-avx512vnni-2c``, ``h200-140g``: a baseline says
how fast one kind of machine serves) and the GPU profile for accuracy (scores do not depend on
the host's speed). One file per test function holds one entry per measurement (parametrization,
role and workload name), each keyed by the server spec and workload it was recorded with, so a changed
configuration is never judged against another's numbers. Files are only written on request
(``--update-baselines``), by a read-merge-write under the file's lock (xdist workers and parallel
jobs adding entries to one file keep each other's) and atomically (``pytest_vllm.storage``: a killed
writer leaves the old file). A corrupt file, or one whose medians a gate could not trust (not finite,
or 0 where a run cannot measure 0), is an error that names the file and entry, never silently replaced;
such an entry is refused before it is written.

Pooled baselines: where the runners of one class differ from host to host (a small model on a
fast GPU measures the host's CPU as much as the GPU), ``--add-baselines`` or ``pytest-vllm
baselines add results.json`` adds a run to an entry as one more *recording*; the entry's median is
then the median of its newest ``MAX_RECORDINGS`` recordings, so no single fast or slow host sets
the reference.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import statistics
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vllm import storage
from pytest_vllm.errors import BaselineError, StorageError
from pytest_vllm.perf.metrics import METRIC_DEFINITIONS, METRICS

FORMAT = "pytest-vllm-baseline/1"
# Other subsystems whose entries share these files and layout (accuracy scores: pytest_vllm.accuracy.history).
OTHER_DEFINITIONS = frozenset({"pytest-vllm-accuracy/1"})


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def split_nodeid(nodeid: str) -> tuple[str, str, str]:
    """``suites/test_perf.py::TestX::test_y[c4-base]`` → (``test_perf``, ``TestX.test_y``, ``c4-base``)."""
    path, _, rest = nodeid.partition("::")
    name, _, params = rest.partition("[")
    return Path(path).stem, name.replace("::", "."), params.rstrip("]")


@dataclass(frozen=True)
class BaselineKey:
    scope: str  # the top folder: a host class for performance (hostclass.py), a GPU profile for accuracy
    model: str  # served model name
    nodeid: str
    measurement: str  # workload name
    role: str  # which server of the test (two servers of one model may be measured in one test)

    @property
    def entry_name(self) -> str:
        _, _, params = split_nodeid(self.nodeid)
        return "/".join(p for p in (params, self.role, self.measurement) if p)

    def path(self, root: Path) -> Path:
        module, function, _ = split_nodeid(self.nodeid)
        return root / slug(self.scope) / slug(self.model) / slug(module) / f"{slug(function)}.json"


@dataclass(frozen=True)
class Baseline:
    """One stored measurement."""

    path: Path
    entry_name: str
    data: Mapping[str, Any]

    def median(self, metric: str) -> float | None:
        found = self.data["metrics"].get(metric)
        return None if found is None else float(found["median"])

    def spread(self, metric: str) -> float:
        found = self.data["metrics"].get(metric)
        return 0.0 if found is None else float(found.get("spread", 0.0))

    def recording_runs(self, metric: str) -> list[list[float]]:
        """Each recording's repetitions of ``metric`` (the noise model reads them)."""
        out = []
        for recording in recordings_of(self.data):
            found = recording["metrics"].get(metric)
            if found is not None:
                out.append([float(v) for v in found.get("runs") or [found["median"]]])
        return out

    @property
    def recordings(self) -> int:
        return len(recordings_of(self.data))

    @property
    def server_key(self) -> str:
        return str(self.data["server"]["key"])

    @property
    def workload_key(self) -> str:
        return str(self.data["workload"]["key"])

    @property
    def recorded(self) -> str:
        return str(self.data.get("environment", {}).get("recorded_at", "?"))


def read_file(path: Path) -> dict[str, Any]:
    """A baseline file's content, validated; BaselineError names the file, the entry and the fix."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc}") from None
    except ValueError as exc:
        raise BaselineError(f"baseline {path} is not valid JSON ({exc}); restore it from git "
                            f"(git checkout -- {path}) or re-record it with --update-baselines") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        raise BaselineError(f"baseline {path} is not a {FORMAT} file; restore it from git or re-record it "
                            "with --update-baselines")
    for name, entry in data["entries"].items():
        if problem := entry_problem(entry):
            raise BaselineError(f"baseline {path}, entry {name!r}, {problem}; restore it from git "
                                f"(git checkout -- {path}) or re-record it with --update-baselines")
        if entry.get("metric_definitions") not in {METRIC_DEFINITIONS, *OTHER_DEFINITIONS}:
            raise BaselineError(f"baseline {path}, entry {name!r}, uses metric definitions "
                                f"{entry.get('metric_definitions')!r}, this version {METRIC_DEFINITIONS!r}; "
                                "re-record it with --update-baselines")
    return data


def entry_problem(entry: object) -> str | None:
    """What makes ``entry`` unusable as a reference (``"is damaged: ..."``), or None. A gate trusts a
    stored median as it is: ``Infinity`` under a lower-is-better budget, or 0 under a higher-is-better
    one, passes every run, so such values are refused on reading and before writing."""
    if not isinstance(entry, Mapping):
        return f"is damaged: it is {_json_type(entry)}, not an object"
    for part in ("server", "workload"):
        if not isinstance(entry.get(part), Mapping) or "key" not in entry[part]:
            return f"is damaged: it has no {part} key"
    perf = entry.get("metric_definitions") == METRIC_DEFINITIONS
    if problem := _metrics_problem(entry.get("metrics"), perf):
        return f"is damaged: {problem}"
    recordings = entry.get("recordings", [])
    if not isinstance(recordings, list):
        return f"has a damaged recording: 'recordings' is {_json_type(recordings)}, not a list"
    for number, recording in enumerate(recordings):
        problem = (f"it is {_json_type(recording)}, not an object" if not isinstance(recording, Mapping)
                   else _metrics_problem(recording.get("metrics"), perf))
        if problem:
            return f"has a damaged recording (recording {number}: {problem})"
    return None


def _metrics_problem(metrics: object, perf: bool) -> str | None:
    if not isinstance(metrics, Mapping):
        return f"'metrics' is {_json_type(metrics)}, not an object of metric name: {{\"median\": ...}}"
    for name, found in metrics.items():
        if not isinstance(found, Mapping):
            return f"metric {name!r} is {_json_type(found)}, not an object"
        raw = found.get("median")
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            return f"metric {name!r} has no numeric median ({raw!r})"
        median = float(raw)
        if not math.isfinite(median):
            return f"metric {name!r} has the median {median}, not a finite number"
        info = METRICS.get(name) if perf else None
        if info is not None and (median <= 0 if info.positive else median < 0):
            return (f"metric {name!r} has the median {median}, which a measured run cannot give "
                    f"(it is {'positive' if info.positive else 'never negative'})")
        spread = found.get("spread", 0.0)
        if not _is_number(spread) or not math.isfinite(spread) or spread < 0:
            return f"metric {name!r} has the spread {spread!r}, not a finite number >= 0"
        runs = found.get("runs", [])
        if not isinstance(runs, list) or not all(_is_number(v) and math.isfinite(v) for v in runs):
            return f"metric {name!r} has the runs {runs!r}, not a list of finite numbers"
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def load(root: Path, key: BaselineKey) -> Baseline | None:
    path = key.path(root)
    if not path.is_file():
        return None
    entry = read_file(path)["entries"].get(key.entry_name)
    return None if entry is None else Baseline(path, key.entry_name, entry)


def classes_with_baselines(root: Path, profile: str, model: str) -> list[str]:
    """The host classes of ``profile`` with baselines of ``model`` under ``root``."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and d.name.startswith(f"{profile}-") and (d / slug(model)).is_dir())


def environment_record(gpu: str, device_name: str, driver: str, vllm_version: str, rootdir: Path,
                       host_class: str = "", host: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import platform

    from pytest_vllm import __version__

    return {
        "gpu_profile": gpu, "host_class": host_class, "host": dict(host or {}),
        "device_name": device_name, "driver": driver, "vllm_version": vllm_version,
        "host_cpu": host_cpu(), "host_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(), "python": platform.python_version(), "pytest_vllm": __version__,
        "git_commit": git_commit(rootdir), "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# What a baseline's numbers depend on beyond the GPU profile, compared when it is used.
COMPARED_ENVIRONMENT = ("device_name", "driver", "vllm_version", "host_cpu", "host_cores")


def host_cpu() -> str:
    """The host CPU's model name: a small model on a fast GPU is bound by the host's scheduling
    work, so the same GPU on another host serves at another speed."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"host_cpu: A → B, vllm_version: 0.24.0 → 0.25.0"`` for what differs (keys the stored
    record lacks are not compared: older baselines did not record them)."""
    return ", ".join(f"{key}: {stored[key]} → {current.get(key)}" for key in COMPARED_ENVIRONMENT
                     if key in stored and stored[key] != current.get(key))


def git_commit(rootdir: Path, environ: Mapping[str, str] = os.environ) -> str | None:
    """The commit a baseline was recorded from. ``PYTEST_VLLM_GIT_COMMIT`` wins: a copied checkout
    (a GPU machine that got the tree without its history) would otherwise record a stale commit;
    ``GITHUB_SHA`` is the fallback where a CI checkout has no ``.git`` at all."""
    if explicit := environ.get("PYTEST_VLLM_GIT_COMMIT"):
        return explicit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=rootdir, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        out = None
    return (out.stdout.strip() if out and out.returncode == 0 else "") or environ.get("GITHUB_SHA") or None


MAX_RECORDINGS = 5  # a pooled entry keeps its newest recordings
# Environment keys that must agree between recordings pooled in one entry (the host may differ:
# that is what pooling is for).
POOLED_MUST_MATCH = ("gpu_profile", "host_class", "vllm_version")


def recordings_of(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entry's recordings; an entry recorded once (``--update-baselines``) is its own only one."""
    if "recordings" in entry:
        return [dict(r) for r in entry["recordings"]]
    return [{"environment": dict(entry.get("environment", {})), "metrics": dict(entry["metrics"])}]


def pooled(stored: Mapping[str, Any] | None, new: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``new`` (an entry of one run, as ``perf.results.make_entry`` makes it) added to ``stored`` as one more
    recording. Each metric's median is the median of the recordings' medians; its spread is the
    larger of their relative range and the widest spread within one recording, so the noise-aware
    gate sees how far hosts of the class disagree. BaselineError when the two cannot be pooled."""
    if stored is None:
        return {**new, "recordings": recordings_of(new)}
    problems = []
    for part in ("server", "workload"):
        if stored[part]["key"] != new[part]["key"]:
            problems.append(f"another {part} ({stored[part]['key']} stored, {new[part]['key']} now)")
    if stored.get("metric_definitions") != new.get("metric_definitions"):
        problems.append(f"other metric definitions ({stored.get('metric_definitions')} stored)")
    stored_env, new_env = stored.get("environment", {}), new.get("environment", {})
    for key in POOLED_MUST_MATCH:
        if key in stored_env and stored_env[key] != new_env.get(key):
            problems.append(f"{key} {stored_env[key]} stored, {new_env.get(key)} now")
    if problems:
        raise BaselineError(f"{where}: cannot add this run to the stored recordings: {'; '.join(problems)}. "
                            "Replace the entry with --update-baselines if the change is intended")
    when = new_env.get("recorded_at")
    if when and any(r["environment"].get("recorded_at") == when for r in recordings_of(stored)):
        raise BaselineError(f"{where}: the run of {when} is already one of its recordings")
    recordings = (recordings_of(stored) + recordings_of(new))[-MAX_RECORDINGS:]
    names = [n for n in new["metrics"] if all(n in r["metrics"] for r in recordings)]
    metrics = {}
    for name in names:
        medians = [float(r["metrics"][name]["median"]) for r in recordings]
        middle = statistics.median(medians)
        across = (max(medians) - min(medians)) / abs(middle) if middle else 0.0
        within = max(float(r["metrics"][name].get("spread", 0.0)) for r in recordings)
        metrics[name] = {"median": middle, "runs": medians, "spread": max(across, within)}
    return {**new, "metrics": metrics, "recordings": recordings}


def entries_from_results(results: Mapping[str, Any], source: str) -> list[tuple[BaselineKey, dict[str, Any]]]:
    """The baseline entries a gate run's ``results.json`` holds: every performance measurement
    whose repetitions all completed, and every pair comparison. BaselineError (naming ``source``)
    when it cannot serve."""
    section = results.get("performance") if isinstance(results, Mapping) else None
    if not isinstance(section, Mapping) or not (section.get("measurements") or section.get("capacities")):
        raise BaselineError(f"{source} holds no performance measurements")
    settings, environment = section.get("settings", {}), section.get("environment")
    if not environment:
        raise BaselineError(f"{source} records no environment (written by an older pytest-vllm); "
                            "re-run the suite to get a results file that can be added")
    if settings.get("update_baselines"):
        raise BaselineError(f"{source} is from a run that recorded baselines; its measurements are stored already")
    definitions = section.get("metric_definitions", METRIC_DEFINITIONS)
    out = []
    try:
        for m in [*section.get("measurements", ()), *section.get("pairs", ()),  # a pair: its per-pair ratios
                  *section.get("capacities", ()), *section.get("capacity_pairs", ())]:
            if any(m["metrics"].get("failed", {}).get("runs", [0])) or not m["metrics"]:
                continue
            key = BaselineKey(str(settings.get("host_class") or settings["gpu"]), m["model"], m["test"],
                              m["workload"]["name"], m["role"])
            out.append((key, {"metric_definitions": definitions, "test_id": m["test"], "role": m["role"],
                              "server": {"key": m["server_key"], "flags": m.get("server_flags", {})},
                              "workload": {**m["workload"], "key": m["workload_key"]},
                              "environment": dict(environment), "metrics": m["metrics"]}))
    except (KeyError, TypeError, AttributeError) as exc:
        raise BaselineError(f"{source} is not a results.json of pytest-vllm (a measurement lacks {exc})") from None
    return out


def add_results(root: Path, results_path: Path) -> list[tuple[Path, str, int]]:
    """Pool a gate run's measurements into the baselines under ``root``: every entry is checked
    before any file is written, so a refused entry leaves all files as they were. The files are
    read, merged and written under their locks, so a concurrent writer's entries are kept. Returns
    (file, entry name, recordings now) per entry."""
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineError(f"cannot read results file {results_path}: {exc}") from None
    by_file: dict[Path, dict[str, dict[str, Any]]] = {}
    for key, entry in entries_from_results(results, str(results_path)):
        refuse_invalid(key.path(root), key.entry_name, entry)
        by_file.setdefault(key.path(root), {})[key.entry_name] = entry  # a repeated measurement: the last
    added, problems = [], []
    with contextlib.ExitStack() as held:
        for path in sorted(by_file):  # one order for every writer: no two wait on each other
            path.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(_locked(path))
        stored = {path: _stored(path) for path in by_file}
        for path, entries in by_file.items():
            for name, entry in entries.items():
                try:
                    merged = pooled(stored[path]["entries"].get(name), entry, f"{path} [{name}]")
                    refuse_invalid(path, name, merged)
                except BaselineError as exc:
                    problems.append(str(exc))
                    continue
                stored[path]["entries"][name] = merged
                added.append((path, name, len(merged["recordings"])))
        if problems:
            raise BaselineError("nothing added:\n  " + "\n  ".join(problems))
        for path in sorted(by_file):
            _save(path, stored[path])
    return added


def write(root: Path, key: BaselineKey, entry: Mapping[str, Any], pool: bool = False) -> Path:
    """Store ``entry``, keeping the file's other entries (also those another process adds at the same
    time: the file is read, merged and written under its lock); with ``pool``, add it to the stored
    entry's recordings instead of replacing it (see ``pooled``). An invalid entry is refused before
    anything is written."""
    path = key.path(root)
    refuse_invalid(path, key.entry_name, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = _stored(path)  # a corrupt file stops the update: nothing stored is lost
        if pool:
            entry = pooled(data["entries"].get(key.entry_name), entry, f"{path} [{key.entry_name}]")
            refuse_invalid(path, key.entry_name, entry)
        data["entries"][key.entry_name] = dict(entry)
        _save(path, data)
    return path


def refuse_invalid(path: Path, name: str, entry: Mapping[str, Any]) -> None:
    """BaselineError before ``entry`` is written to ``path`` if a gate could not trust it."""
    if problem := entry_problem(entry):
        raise BaselineError(f"refusing to write baseline {path}, entry {name!r}, which {problem}; nothing was "
                            "written. The measurement is broken: re-record it with --update-baselines")


def _stored(path: Path) -> dict[str, Any]:
    return read_file(path) if path.is_file() else {"format": FORMAT, "entries": {}}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        with storage.locked(path):
            yield
    except StorageError as exc:
        raise BaselineError(f"baseline not written: {exc}") from None


def _save(path: Path, data: dict[str, Any]) -> None:
    data["entries"] = dict(sorted(data["entries"].items()))
    try:
        storage.atomic_write_json(path, data, indent=1, sort_keys=False, allow_nan=False)
    except (OSError, TypeError, ValueError) as exc:  # disk full, a value json cannot encode
        raise BaselineError(f"cannot write baseline {path}: {exc}; the file is as it was before") from None


def iter_entries(root: Path) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """Every (file, entry name, entry) under ``root``; corrupt files raise BaselineError."""
    for path in sorted(root.rglob("*.json")):
        for name, entry in read_file(path)["entries"].items():
            yield path, name, entry
