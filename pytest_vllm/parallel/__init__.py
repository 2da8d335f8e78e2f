"""Running under pytest-xdist (``pytest -n N``): servers planned per worker, nothing shared by accident.

A vLLM server is expensive to boot and holds cores and memory, so a worker is sent whole test
files: ``-n`` runs xdist's ``loadfile`` scheduling (the plugin sets it for ``-n`` alone and refuses
modes that split a file). Each worker plans a server group (the tests of one file whose servers
come from the same markers) when the group's first test asks for a server, so it boots only the
servers of the tests it runs, and stops each after the last of them, as without xdist. Two
workers whose files use the same server each boot it: the price of running in parallel.

What would otherwise collide is made per worker: server log names (``base-KEY-gw0.log``), CPU
cores (each worker's servers take slots of their own), report files (``<report dir>/gw0/``; the
controller prints every worker's summary), progress lines (the worker's stderr, ``[vllm gw0]``),
and a perf test's confirmation, which runs at once (xdist hands a worker its tests one by one;
there is no "end of the session" to wait for). Baseline files are written under a file lock and
merged (``storage.py``), so workers recording at once lose no entry.

Not xdist's ``loadgroup``: with pytest 9.2 and xdist 3.8 its grouping does nothing (xdist files a
test under its group by setting ``item._nodeid``, which pytest 9.2 no longer reads), measured here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pytest_vllm.errors import UsageError

# The --dist mode that keeps a file's tests on one worker ("load", what -n sets by itself, would
# spread one file's tests, and so its servers' boots, over every worker).
FILE_MODE = "loadfile"
SUMMARY_KEY = "pytest_vllm_summary"  # in a worker's workeroutput: its summary lines and report files
SCHEDULING_NOTE = pytest.StashKey[str]()
WORKER_SUMMARIES = pytest.StashKey[list[tuple[str, list[str], list[str]]]]()


@dataclass(frozen=True)
class Worker:
    """This process as one of xdist's workers."""

    id: str  # "gw0"
    index: int
    count: int


def worker_of(config: pytest.Config) -> Worker | None:
    """The xdist worker this process is, or None (no xdist, or the controller)."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    worker_id = str(workerinput["workerid"])
    index = int(worker_id[2:]) if worker_id.startswith("gw") and worker_id[2:].isdigit() else 0
    return Worker(worker_id, index, int(workerinput.get("workercount", 1)))


def is_controller(config: pytest.Config) -> bool:
    """Whether this is xdist's controller process, which runs no test itself."""
    return worker_of(config) is None and bool(getattr(config.option, "numprocesses", None)) \
        and getattr(config.option, "dist", "no") != "no"


def choose_scheduling(config: pytest.Config) -> str | None:
    """On the controller: make ``-n`` keep a file's tests together; returns a line to say, if any."""
    if not is_controller(config):
        return None
    dist = config.option.dist
    if dist == FILE_MODE:
        return None
    if dist == "load":
        config.option.dist = FILE_MODE
        return ("pytest-xdist: --dist loadfile, so a test file's tests share a worker and each of its servers boots "
                "once on that worker")
    raise UsageError(f"--dist {dist} would spread the tests of one vLLM server over several workers, each booting "
                     "it: use -n N alone or with --dist loadfile (pytest-vllm sends a worker whole test files)")


def file_of(nodeid: str) -> str:
    """The test file of a node id (the unit loadfile sends to one worker)."""
    return nodeid.split("::", 1)[0]


def publish_summary(config: pytest.Config, lines: list[str], written: list[str]) -> None:
    """On a worker: hand its summary to the controller (xdist sends workeroutput at the end)."""
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[SUMMARY_KEY] = {"lines": list(lines), "written": list(written)}


def summary_of(node: Any) -> tuple[str, list[str], list[str]] | None:
    """On the controller: (worker id, lines, report files) a finished worker published."""
    found = getattr(node, "workeroutput", {}).get(SUMMARY_KEY)
    if not found:
        return None
    worker_id = str(getattr(node, "workerinput", {}).get("workerid", "?"))
    return worker_id, list(found.get("lines", ())), list(found.get("written", ()))


