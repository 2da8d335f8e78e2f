"""The performance gate's pytest wiring: its budget markers, the ``vllm_bench`` fixture, its state
(under its own stash key) and its report section, attached the way every gate attaches
(``session.gate_state``), and the run protocol that lets a test's confirmation wait for the end of
the session (``deferral``)."""

from __future__ import annotations

import pytest

from pytest_vllm import gating
from pytest_vllm.errors import UsageError
from pytest_vllm.perf import deferral
from pytest_vllm.perf.budgets import MARKER, PAIR_MARKER, default_budgets
from pytest_vllm.perf.gate import Bench
from pytest_vllm.perf.results import BenchState
from pytest_vllm.session import SESSION_KEY, SectionProvider, VLLMSession, gate_state

STATE_KEY = pytest.StashKey[BenchState]()


@pytest.hookimpl(trylast=True)  # after the main plugin's, which makes the session and its RunConfig
def pytest_configure(config: pytest.Config) -> None:
    for marker in (MARKER, PAIR_MARKER):
        gating.register(config, marker)
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    try:  # [tool.pytest_vllm.budgets] is parsed now, not when the first perf test sets up after a boot
        default_budgets(session.config.budgets)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    return deferral.run_protocol(item, nextitem)


def _make_state(_: pytest.Config, session: VLLMSession) -> tuple[BenchState, SectionProvider]:
    from pytest_vllm import baselines
    from pytest_vllm.hostclass import emulating_avx2
    from pytest_vllm.perf import report
    from pytest_vllm.perf.gate import settings_for

    config = session.config
    if emulating_avx2() and (config.update_baselines or config.add_baselines):
        raise UsageError("PYTEST_VLLM_EMULATE_AVX2 is set: baselines are never recorded under emulation "
                         "(it sizes runs; a real avx2-only host records that class)")
    device = session.device
    environment = baselines.environment_record(session.profile.name, device.name, device.driver,
                                               session.vllm_version, config.rootdir, session.host_class,
                                               session.host.to_dict())
    state = BenchState(settings_for(config, session.profile, session.host_class, environment))
    return state, lambda: report.section(state, session.say)


def bench_state(config: pytest.Config) -> BenchState:
    """The session's performance state, made on first use."""
    return gate_state(config, STATE_KEY, _make_state)


@pytest.fixture
def vllm_bench(request: pytest.FixtureRequest) -> Bench:
    """Measure load on a server and gate it: ``vllm_bench.run(server, Workload(...))``,
    ``vllm_bench.compare(reference, candidate, workload)`` (repetitions interleaved, per-pair ratios),
    ``vllm_bench.single_stream(server, workload, benchmark)``, ``vllm_bench.capacity(server,
    CapacityWorkload(...))`` / ``compare_capacity(reference, candidate, workload)`` (capacity under SLOs).

    Metrics follow `vllm bench serve`; the median of the repetitions, each on prompts of its own,
    is checked against the baseline of this host class (budgets from vllm_budget /
    vllm_pair_budget markers and [tool.pytest_vllm.budgets], tolerances from the measured noise);
    --update-baselines records instead.
    """
    try:
        state = bench_state(request.config)
    except UsageError as exc:
        problem = f"usage error: {exc}"
    else:
        return Bench(state, request.node, request.config.stash[SESSION_KEY].say)
    pytest.fail(problem, pytrace=False)
