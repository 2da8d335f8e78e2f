"""Confirmation at the end of the session: a test whose measurement was out of budget runs once
more after every other test, and that second measurement decides.

Why later and not at once: a shared host's slow spells last minutes. In CI (commit a46df5b, the
host class of the baselines) the first three perf tests ran 25-27% below their baselines, with
3.0% of the CPU stolen by other tenants against 0.1% when they were recorded; their immediate
re-measurements were as slow, and every perf test after them was within budget. A regression is
still there at the end of the session; a spell is likely gone.

How: in a test's first run the gate keeps what it measured on the item (``Attempts``) and raises
``ConfirmLater``. ``run_protocol`` (the perf plugin's ``pytest_runtest_protocol``) then holds
that run's reports back, appends the item to the session's items, and when its turn comes runs
it again with its reports logged: the gate replays the measurements already settled and measures
the pending one once more, on prompts of its own. The session's last test has no later: it
confirms at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

from pytest_vllm.session import SESSION_KEY

# Tests that use this fixture are the ones whose verdict can wait.
BENCH_FIXTURE = "vllm_bench"


@dataclass
class Attempts:
    """What a test's first run measured, by the order of its gate calls (``index``)."""

    settled: dict[int, Any]  # decided in the first run (within budget, or not gated): replayed as is
    pending: int  # the call that was out of budget
    first: Any  # its measurement (a Measurement or PairComparison)
    at: float = field(default_factory=time.time)  # when it was measured (epoch seconds)
    benchmark: Any = None  # pytest-benchmark's fixture of the first run, which timed its rounds

    def ago(self) -> str:
        minutes = (time.time() - self.at) / 60
        return f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"


class ConfirmLater(Exception):
    """Raised by the gate in a test's first run: hold its verdict back, run it again at the end."""


ATTEMPTS = pytest.StashKey[Attempts]()
CAN_DEFER = pytest.StashKey[bool]()


def can_defer(item: pytest.Item) -> bool:
    """Whether this run of ``item`` may leave its verdict to a second run at the end of the session."""
    stash = getattr(item, "stash", None)
    return bool(stash is not None and stash.get(CAN_DEFER, False))


def attempts_of(item: pytest.Item) -> Attempts | None:
    """The first run's measurements, in the item's second run (None in its first)."""
    stash = getattr(item, "stash", None)
    return None if stash is None else stash.get(ATTEMPTS, None)


def defer(item: pytest.Item, attempts: Attempts) -> None:
    """Keep ``attempts`` for the item's second run, keep its servers for it, and end this run."""
    item.stash[ATTEMPTS] = attempts
    # pytest-benchmark timed the first run's rounds; the second run's fixture stays unused.
    item.add_marker(pytest.mark.filterwarnings("ignore:Benchmark fixture was not used at all"))
    session = item.config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.expect_again(item.nodeid)
    raise ConfirmLater(f"{item.nodeid}: out of budget; measured again at the end of the session")


def run_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """pytest's run-one-test protocol for perf tests, with the verdict held back when the gate
    defers it (None for other tests: pytest's own protocol runs them)."""
    if BENCH_FIXTURE not in getattr(item, "fixturenames", ()):
        return None
    first_run = ATTEMPTS not in item.stash
    # An xdist worker gets its tests one by one and runs no test list of its own to append to:
    # there the confirmation runs at once.
    item.stash[CAN_DEFER] = first_run and nextitem is not None and not hasattr(item.config, "workerinput")
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if first_run and ATTEMPTS in item.stash:
        item.session.items.append(item)  # pytest's loop reads the list as it goes
        return True
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
