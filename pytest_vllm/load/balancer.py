"""Balancer: which replica of a role the load client sends each request to.

A role of several replicas (``--vllm-url base=URL1,URL2``, ``vllm_server(replicas=2)``) is
driven as one deployment: the load client itself spreads its requests, as a balancer in front of
the replicas would, so that each request's replica is known and metrics come per replica as
well as combined. A role of one replica goes through the same path and always gets its one URL.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from pytest_vllm.errors import UsageError

ROUND_ROBIN = "round_robin"
LEAST_OUTSTANDING = "least_outstanding"
POLICIES = (ROUND_ROBIN, LEAST_OUTSTANDING)


class Balancer(Protocol):
    """Hands out a replica's URL per request (``acquire``) and hears when it is done (``release``)."""

    urls: tuple[str, ...]

    def acquire(self) -> str: ...

    def release(self, url: str) -> None: ...


class RoundRobin:
    """Each replica in turn: over n requests the per-replica counts differ by at most one."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = tuple(urls)
        self._next = itertools.cycle(self.urls)

    def acquire(self) -> str:
        return next(self._next)

    def release(self, url: str) -> None:
        """Nothing to do: the turn does not depend on what is in flight."""


class LeastOutstanding:
    """The replica with the fewest requests in flight; ties go round, so an idle deployment is
    still spread evenly instead of piling onto the first replica."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = tuple(urls)
        self.outstanding = dict.fromkeys(self.urls, 0)
        self._turn = 0

    def acquire(self) -> str:
        fewest = min(self.outstanding.values())
        count = len(self.urls)
        for step in range(count):
            url = self.urls[(self._turn + step) % count]
            if self.outstanding[url] == fewest:
                self._turn = (self._turn + step + 1) % count
                self.outstanding[url] += 1
                return url
        raise AssertionError("unreachable: some replica holds the fewest requests")

    def release(self, url: str) -> None:
        self.outstanding[url] -= 1


def make_balancer(policy: str, urls: Sequence[str]) -> Balancer:
    """A fresh balancer of ``policy`` (one of POLICIES) over ``urls`` (at least one)."""
    if not urls:
        raise UsageError("a balancer needs at least one replica URL; give the role a server (--vllm-url ROLE=URL)")
    if policy == ROUND_ROBIN:
        return RoundRobin(urls)
    if policy == LEAST_OUTSTANDING:
        return LeastOutstanding(urls)
    raise UsageError(f"--vllm-balance {policy!r}: use one of {', '.join(POLICIES)}")
