"""A role of several replicas: one ServerHandle standing for all of them.

Deployments run several replicas behind a balancer; a test of one role must then cover all of
them. The role's handle carries its replicas (``ServerHandle.replicas``) and keeps the first
one's URL, so a test written for one server still runs unchanged; the load client spreads its
requests over every replica (load/balancer.py), and ``vllm_server`` runs conformance and smoke
tests once per replica (``replica_count`` says how many).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pytest_vllm import redact
from pytest_vllm.errors import UsageError
from pytest_vllm.server.handle import ServerHandle, connect_remote


def join_replicas(handles: Sequence[ServerHandle]) -> ServerHandle:
    """One handle for ``handles`` (the replicas of one role, in order); a lone handle is returned as
    it is. A replica serving another model than the first is a UsageError: requests spread over
    them would measure two models as one."""
    if not handles:
        raise UsageError("a role needs at least one server; give it one (--vllm-url ROLE=URL)")
    if len(handles) == 1:
        return handles[0]
    first = handles[0]
    if odd := [h for h in handles[1:] if h.model != first.model]:
        shown = ", ".join(f"{redact.text(h.url)} serves {h.model!r}" for h in odd)
        raise UsageError(f"the {first.role} server's replicas must serve one model: {redact.text(first.url)} serves "
                         f"{first.model!r} but {shown}; list only replicas of the same deployment in --vllm-url "
                         f"{first.role}=URL1,URL2")
    members = tuple(dataclasses.replace(h, replicas=()) for h in handles)
    return dataclasses.replace(members[0], replicas=members)


def connect_remote_replicas(role: str, urls: Sequence[str], api_key: str, model: str | None = None) -> ServerHandle:
    """The handle of a ``--vllm-url ROLE=URL1,URL2`` role: every replica asked for its model
    (``model``: the name the run gives the role's model, checked against each replica's list)."""
    return join_replicas([connect_remote(role, url, api_key, model) for url in urls])


def replica_of(handle: ServerHandle, index: int) -> ServerHandle:
    """Replica ``index`` (0-based) of a role's handle, as a single-server handle."""
    members = handle.members
    if not 0 <= index < len(members):
        raise UsageError(f"{handle.describe()} has {len(members)} replica(s), not a replica {index + 1}")
    return members[index]
