"""pytest-xdist hooks of pytest-vllm (what they do and why: ``pytest_vllm.parallel``).

The xdist-only hook is optional: without pytest-xdist installed, nothing here runs but the
configure hook, which then has nothing to do.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.parallel import SCHEDULING_NOTE, WORKER_SUMMARIES, choose_scheduling, summary_of


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        note = choose_scheduling(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    if note:
        config.stash[SCHEDULING_NOTE] = note
    config.stash[WORKER_SUMMARIES] = []


def pytest_report_header(config: pytest.Config) -> list[str]:
    note = config.stash.get(SCHEDULING_NOTE, None)
    return [f"vllm: {note}"] if note else []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the controller: a worker finished; keep the summary it published."""
    found = summary_of(node)
    if found is not None:
        node.config.stash[WORKER_SUMMARIES].append(found)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    summaries: list[tuple[str, list[str], list[str]]] = config.stash.get(WORKER_SUMMARIES, [])
    for worker_id, lines, written in sorted(summaries):
        terminalreporter.section(f"vllm summary (xdist worker {worker_id})")
        for line in lines:
            terminalreporter.write_line(line)
        if written:
            terminalreporter.write_line("reports: " + ", ".join(written))
