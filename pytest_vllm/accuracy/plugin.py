"""pytest hooks and the ``vllm_accuracy`` fixture (loaded by ``pytest_vllm.plugin``).

Budgets and settings are checked at collection, for every test at once, so a typo in a marker or
in ``[tool.pytest_vllm.accuracy]`` is a usage error before any server boots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_vllm.accuracy.budgets import MARKER, MARKER_HELP, AccuracySettings, known_set_names, settings_from
from pytest_vllm.errors import UsageError

if TYPE_CHECKING:
    from pytest_vllm.accuracy.gate import AccuracyGate, AccuracyState
    from pytest_vllm.session import VLLMSession

SETTINGS_KEY = pytest.StashKey[AccuracySettings]()
STATE_KEY = pytest.StashKey["AccuracyState"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


def _session(config: pytest.Config) -> VLLMSession:
    from pytest_vllm.plugin import SESSION_KEY

    return config.stash[SESSION_KEY]


def settings(config: pytest.Config) -> AccuracySettings:
    if SETTINGS_KEY not in config.stash:
        run_config = _session(config).config
        config.stash[SETTINGS_KEY] = settings_from(run_config.accuracy, run_config.rootdir)
    return config.stash[SETTINGS_KEY]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    from pytest_vllm.accuracy.gate import marker_budgets

    try:
        accuracy_settings = settings(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    marked = [item for item in items if item.get_closest_marker(MARKER) is not None]
    if not marked:
        return
    names = known_set_names(accuracy_settings.eval_dirs, accuracy_settings.lmeval_tasks)
    problems = []
    for item in marked:
        try:
            marker_budgets(item, names)
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise pytest.UsageError("\n".join(problems))


def state(config: pytest.Config) -> AccuracyState:
    """The session's accuracy state, made on first use; its report section joins the session's."""
    if STATE_KEY not in config.stash:
        from pytest_vllm import baselines
        from pytest_vllm.accuracy.engine import Engine
        from pytest_vllm.accuracy.gate import AccuracyState

        vllm_session = _session(config)
        run_config = vllm_session.config
        accuracy_settings = settings(config)
        gpu = vllm_session.profile.name
        device = vllm_session.device
        environment = baselines.environment_record(gpu, device.name, device.driver, vllm_session.vllm_version,
                                                   run_config.rootdir)
        made = AccuracyState(accuracy_settings, Engine(accuracy_settings, say=vllm_session.say), gpu, environment,
                             run_config.baseline_dir, run_config.update_baselines)
        vllm_session.section_providers.append(made.section)
        config.stash[STATE_KEY] = made
    return config.stash[STATE_KEY]


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
