"""The conformance gate's pytest wiring: the ``conformance`` and ``conformance_pair`` fixtures, the
run's ledger (under its own stash key, hooked into pytest's reports) and its report section,
attached the way every gate attaches (``session.gate_state``).

A conformance test of your own needs nothing else: take ``conformance`` (one property on one
server, once per server) or ``conformance_pair`` (both servers at once) and call its
``run``/``once``/``send``/``expect``; the ``vllm_conformance_rules`` marker names the rules it
exists to check (``findings``), without it a test judges every rule no other test claims.
Validators, strategies and the openai SDK load on first use, so ``pytest --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_vllm.conformance.profiles import get_profile
from pytest_vllm.server.handle import ServerHandle, ServerPair
from pytest_vllm.session import SESSION_KEY, SectionProvider, VLLMSession, gate_state

if TYPE_CHECKING:
    from pytest_vllm.conformance.ledger import Ledger
    from pytest_vllm.conformance.probe import Probe
    from pytest_vllm.conformance.runner import PropertyRun

LEDGER_KEY = pytest.StashKey["Ledger"]()


# The marker a conformance test names its rules with (``findings``); here so that registering it
# loads nothing of the conformance machinery.
MARKER = "vllm_conformance_rules"
MARKER_HELP = (f"{MARKER}(*patterns): the deviation rules (rule or rule@path, shell-style) this conformance "
               "property exists to check; a deviation of another rule it meets is recorded as a finding of the "
               "run instead of failing it. No marker: every rule no selected property declares.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


def _make_ledger(config: pytest.Config, session: VLLMSession) -> tuple[Ledger, SectionProvider]:
    from pytest_vllm.conformance.ledger import Ledger

    ledger = Ledger(profile=get_profile(session.config.conformance_profile).name)
    config.pluginmanager.register(ledger, name="pytest-vllm-conformance-ledger")  # verdicts from pytest's reports
    return ledger, ledger.section


def ledger(config: pytest.Config) -> Ledger:
    """The run's conformance ledger, made on first use."""
    return gate_state(config, LEDGER_KEY, _make_ledger)


def property_run(request: pytest.FixtureRequest, server: ServerHandle, label: str, probe: Probe,
                 peers: tuple[PropertyRun, ...] = ()) -> PropertyRun:
    """One property on one server: its ledger row, the rules it owns, the server's family (and the
    known deviations of its version) and the extensions it serves."""
    from pytest_vllm.conformance import extensions, families
    from pytest_vllm.conformance.deviations import known_for
    from pytest_vllm.conformance.findings import Ownership
    from pytest_vllm.conformance.runner import PropertyRun

    session = request.config.stash[SESSION_KEY]
    profile = get_profile(session.config.conformance_profile).scaled(session.sizing.conformance_scale)
    run_ledger = ledger(request.config)
    record = run_ledger.record(request.node.nodeid, request.node.originalname, label)
    family = families.identify(probe, booted_vllm_version=None if server.is_remote else session.vllm_version)
    return PropertyRun(model=server.model, probe=probe, record=record, profile=profile, peers=peers,
                       known=known_for(family.name, family.version), family=family, ledger=run_ledger,
                       ownership=Ownership(own=_rules_of(request.node), claimed=_claimed(request.session, run_ledger)),
                       extensions=extensions.supported(probe, server.model, vllm=family.name == families.VLLM))


def _rules_of(item: pytest.Item) -> tuple[str, ...]:
    from pytest_vllm.conformance.findings import UNCLAIMED

    marker = item.get_closest_marker(MARKER)
    return (UNCLAIMED,) if marker is None else tuple(str(pattern) for pattern in marker.args)


def _claimed(session: pytest.Session, run_ledger: Ledger) -> tuple[str, ...]:
    """Every rule pattern a selected test declares (asked once): what the unmarked tests do not own."""
    from pytest_vllm.conformance.findings import UNCLAIMED

    if run_ledger.claimed is None:
        patterns = (p for item in session.items for p in _rules_of(item) if p != UNCLAIMED)
        run_ledger.claimed = tuple(dict.fromkeys(patterns))
    return run_ledger.claimed


@pytest.fixture
def conformance(request: pytest.FixtureRequest, vllm_server: ServerHandle) -> Iterator[PropertyRun]:
    """One property on one server (runs once per server): requests, validation, replay, ledger."""
    from pytest_vllm.conformance.probe import Probe

    with Probe(vllm_server.url, vllm_server.api_key) as probe:
        yield property_run(request, vllm_server, vllm_server.role, probe)


@pytest.fixture
def conformance_pair(request: pytest.FixtureRequest,
                     server_pair: ServerPair) -> Iterator[tuple[PropertyRun, PropertyRun]]:
    """One property on both servers at once: (base run, compressed run), one ledger row."""
    from pytest_vllm.conformance.probe import Probe

    with Probe(server_pair.base.url, server_pair.base.api_key) as base_probe, \
            Probe(server_pair.compressed.url, server_pair.compressed.api_key) as compressed_probe:
        compressed = property_run(request, server_pair.compressed, "base vs compressed", compressed_probe)
        base = property_run(request, server_pair.base, "base vs compressed", base_probe, peers=(compressed,))
        yield base, compressed
