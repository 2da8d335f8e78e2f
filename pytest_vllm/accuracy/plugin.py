"""The accuracy gates' pytest wiring: their budget marker, the ``vllm_accuracy`` fixture, their
state (under its own stash key) and report section, attached the way every gate attaches
(``session.gate_state``).

Settings are checked at collection and budgets by the budget core's collection check, for every
test at once, so a typo in a marker or in ``[tool.pytest_vllm.accuracy]`` is a usage error before
any server boots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_vllm import gating
from pytest_vllm.accuracy.budgets import AccuracySettings, budget_marker, known_set_names, settings_from
from pytest_vllm.errors import UsageError
from pytest_vllm.session import SESSION_KEY, SectionProvider, VLLMSession, gate_state

if TYPE_CHECKING:
    from pytest_vllm.accuracy.gate import AccuracyGate
    from pytest_vllm.accuracy.results import AccuracyState

SETTINGS_KEY = pytest.StashKey[AccuracySettings]()
STATE_KEY = pytest.StashKey["AccuracyState"]()


def pytest_configure(config: pytest.Config) -> None:
    def set_names() -> list[str]:
        found = settings(config)
        return known_set_names(found.eval_dirs, found.lmeval_tasks)

    gating.register(config, budget_marker(set_names))


def settings(config: pytest.Config) -> AccuracySettings:
    if SETTINGS_KEY not in config.stash:
        run_config = config.stash[SESSION_KEY].config
        config.stash[SETTINGS_KEY] = settings_from(run_config.accuracy, run_config.rootdir)
    return config.stash[SETTINGS_KEY]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        settings(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


def _make_state(config: pytest.Config, session: VLLMSession) -> tuple[AccuracyState, SectionProvider]:
    from pytest_vllm import baselines
    from pytest_vllm.accuracy.engine import Engine
    from pytest_vllm.accuracy.report import section
    from pytest_vllm.accuracy.results import AccuracyState

    run_config = session.config
    accuracy_settings = settings(config)
    gpu = session.profile.name
    device = session.device
    environment = baselines.environment_record(gpu, device.name, device.driver, session.vllm_version,
                                               run_config.rootdir)
    state = AccuracyState(accuracy_settings, Engine(accuracy_settings, say=session.say), gpu, environment,
                          run_config.baseline_dir, run_config.update_baselines)
    return state, lambda: section(state)


def state(config: pytest.Config) -> AccuracyState:
    """The session's accuracy state, made on first use."""
    return gate_state(config, STATE_KEY, _make_state)


@pytest.fixture
def vllm_accuracy(request: pytest.FixtureRequest) -> AccuracyGate:
    """Accuracy gates: ``vllm_accuracy.recovery(server_pair, "facts", "choice")`` (compressed / base with
    confidence bounds), ``.history(base_server, "facts")`` (against the stored baseline; recorded with
    --update-baselines), ``.agreement(server_pair)`` (top-1 agreement, KL, perplexity ratio, greedy top-k).
    Budgets: ``vllm_accuracy_budget`` markers and ``[tool.pytest_vllm.accuracy.budgets]``."""
    from pytest_vllm.accuracy.gate import AccuracyGate

    try:
        return AccuracyGate(state(request.config), request.node)
    except UsageError as exc:
        problem = f"usage error: {exc}"
    pytest.fail(problem, pytrace=False)
