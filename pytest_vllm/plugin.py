"""pytest-vllm's pytest plugin: options, the server marker and fixtures, and hooks, delegating
to VLLMSession.

Kept thin and light: nothing heavy (vllm, torch, transformers, openai) is imported at module
import, so ``pytest --help`` stays fast. The state of a run lives in ``session.VLLMSession``; each
gate (perf, accuracy, conformance) is a plugin of its own, loaded with this one, with its own
fixtures, markers, stash key and report section.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from pytest_vllm import gating, parallel, redact
from pytest_vllm.config import OPTIONS, TABLES, RunConfig, check_table_keys, read_pyproject_table
from pytest_vllm.errors import ServerDiedError, ServerStartError, UsageError
from pytest_vllm.interrupt import DeathInterrupt
from pytest_vllm.server.handle import ServerHandle, ServerPair
from pytest_vllm.server.process import ServerDeath
from pytest_vllm.server.replicas import replica_of
from pytest_vllm.server.spec import BASE, COMPRESSED, MARKER, MARKER_HELP, PAIR_ROLES, MarkerFlags
from pytest_vllm.session import SESSION_KEY, VLLMSession

if TYPE_CHECKING:
    import openai

# The gates, each with its own hooks and fixtures, loaded with this plugin (light imports only).
pytest_plugins = ["pytest_vllm.perf.plugin", "pytest_vllm.accuracy.plugin", "pytest_vllm.conformance.plugin",
                  "pytest_vllm.parallel.plugin"]
# Fixtures that need a server of a fixed role.
ROLE_FIXTURES = {"base_server": BASE, "compressed_server": COMPRESSED}
# The fixture parametrized over both roles.
EITHER_FIXTURE = "vllm_server"
# Tests that measure performance serve the perf pair (--vllm-perf-model) instead of the run's models.
PERF_PAIR_MARKER = "vllm_perf_pair"
PERF_PAIR_MARKER_HELP = (f"{PERF_PAIR_MARKER}: this test's servers (base_server, compressed_server, vllm_server, "
                         "server_pair, vllm_server_factory's default model) serve the perf pair chosen by "
                         "--vllm-perf-model: on GPU profiles by default a production shape of random weights")
LOG_LINES_IN_REPORT = 80
INTERRUPT_KEY = pytest.StashKey[DeathInterrupt]()


# -- options and markers --------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vllm", "vLLM serving gates (pytest-vllm)")
    for option in OPTIONS:
        if option.kind == "bool":
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest, help=option.help)
        elif option.kind == "list":
            group.addoption(option.flag, action="append", default=None, dest=option.dest,
                            metavar=option.metavar, help=option.help)
        else:
            group.addoption(option.flag, default=None, dest=option.dest, metavar=option.metavar, help=option.help)
        if option.kind == "list":
            parser.addini(option.ini_name, f"{option.help} (twin of {option.flag})", type="args", default=[])
        else:
            parser.addini(option.ini_name, f"{option.help} (twin of {option.flag})", type="string", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    config.addinivalue_line("markers", PERF_PAIR_MARKER_HELP)
    try:
        run_config = _run_config(config)
        session = VLLMSession(run_config, say=_make_say(config), worker=parallel.worker_of(config))
        if run_config.gpu:  # an explicit --gpu is checked against the machine before anything runs
            session.profile  # noqa: B018 - resolves and validates
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = session
    interrupt = DeathInterrupt()
    if interrupt.install():
        session.on_server_death = interrupt.server_died
    config.stash[INTERRUPT_KEY] = interrupt


def _run_config(config: pytest.Config) -> RunConfig:
    """Merge CLI > ini > [tool.pytest_vllm] > defaults for every option."""
    rootdir = config.rootpath
    table = read_pyproject_table(rootdir)
    check_table_keys(table, {o.name for o in OPTIONS} | set(TABLES), f"{rootdir / 'pyproject.toml'} [tool.pytest_vllm]")
    values: dict[str, Any] = {name: table[name] for name in TABLES if name in table}
    for option in OPTIONS:
        sources = (config.getoption(option.dest), config.getini(option.ini_name), table.get(option.name))
        values[option.name] = next((v for v in sources if v not in (None, "", [])), None)
    return RunConfig.from_values(rootdir, values, environ=os.environ)


def _make_say(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines on the terminal, also while output capture is on (servers boot in setup).

    An xdist worker's terminal output goes nowhere; its lines go to its standard error, which the
    worker shares with the controller's, tagged with the worker's id."""
    worker = parallel.worker_of(config)

    def say(message: str) -> None:
        message = redact.text(message)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if worker is not None:
            with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                # One write of the whole line: print() writes the text and its newline apart, and
                # two workers' lines then ran together on the shared stderr (seen in CI).
                stream = sys.__stderr__
                if stream is not None:
                    stream.write(f"[vllm {worker.id}] {message}\n")
                    stream.flush()
            return
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"[vllm] {message}")
                reporter.flush()
        else:
            reporter.write_line(f"[vllm] {message}")
            reporter.flush()

    return say


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [redact.text(line) for line in config.stash[SESSION_KEY].header_lines()]


# -- collection: resolve specs, validate flags, group tests by server -----------------------
def _roles_of(item: pytest.Item) -> tuple[str, ...]:
    names = getattr(item, "fixturenames", ())
    roles = [role for fixture, role in ROLE_FIXTURES.items() if fixture in names]
    callspec = getattr(item, "callspec", None)
    if EITHER_FIXTURE in names and callspec is not None and EITHER_FIXTURE in callspec.params:
        param = callspec.params[EITHER_FIXTURE]
        roles.append(param[0] if isinstance(param, tuple) else param)  # (role, replica) where a role has several
    return tuple(dict.fromkeys(roles))


def _markers_of(item: pytest.Item) -> list[MarkerFlags]:
    """vllm_server markers, farthest (module) first, so that closer ones win."""
    closest_first = [MarkerFlags.from_kwargs(m.kwargs, item.nodeid) for m in item.iter_markers(name=MARKER)]
    return list(reversed(closest_first))


def _plans_of(items: list[pytest.Item]) -> list[tuple[str, tuple[str, ...], list[MarkerFlags]]]:
    """(node id, roles, markers) per test; one UsageError naming every bad marker of the run."""
    plans, problems = [], []
    for item in items:
        try:
            plans.append((item.nodeid, _roles_of(item), _markers_of(item)))
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("\n".join(problems))
    return plans


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test of ``vllm_server`` runs once per server (ids ``base``, ``compressed``) and, for a role
    of several replicas, once per replica of it (``base-replica1``...), so conformance and smoke
    cover every replica. (Here, not as the fixture's params: those cannot depend on the run.) First,
    before the test's own parametrize marks, so its ids read as they did as fixture params
    (``[base-c1]``): baselines are filed by node id."""
    if EITHER_FIXTURE not in metafunc.fixturenames or any(
            EITHER_FIXTURE in str(mark.args[0] if mark.args else "")
            for mark in metafunc.definition.iter_markers("parametrize")):
        return  # the test parametrizes vllm_server itself
    session = metafunc.config.stash[SESSION_KEY]
    try:
        markers = _markers_of(metafunc.definition)
    except UsageError:
        markers = []  # reported with every other bad marker at collection's end (_plans_of)
    counts = {role: session.replicas_for(role, markers) for role in PAIR_ROLES}
    if all(count <= 1 for count in counts.values()):
        metafunc.parametrize(EITHER_FIXTURE, PAIR_ROLES, indirect=True)
        return
    params = [(role, index) for role in PAIR_ROLES for index in range(max(1, counts[role]))]
    ids = [role if counts[role] <= 1 else f"{role}-replica{index + 1}" for role, index in params]
    metafunc.parametrize(EITHER_FIXTURE, params, indirect=True, ids=ids)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    vllm_session = config.stash[SESSION_KEY]
    boots_own = frozenset(i.nodeid for i in items if "vllm_server_factory" in getattr(i, "fixturenames", ()))
    perf_tests = frozenset(i.nodeid for i in items if i.get_closest_marker(PERF_PAIR_MARKER) is not None)
    try:
        plans = _plans_of(items)
        vllm_session.plan(plans, boots_own=bool(boots_own), perf_tests=perf_tests)
        gating.check_collection(config, items)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    for item in items:
        need = vllm_session.needs.get(item.nodeid)
        if need is not None and need.skip_reason:
            item.add_marker(pytest.mark.skip(reason=need.skip_reason))
    by_id = {item.nodeid: item for item in items}
    items[:] = [by_id[nodeid] for nodeid in vllm_session.order([item.nodeid for item in items], boots_own)]


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    return [redact.text(line) for line in config.stash[SESSION_KEY].plan_lines()]


# -- test lifecycle ------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """While the test body runs, a death of a server it uses fails it at once (DeathInterrupt)."""
    interrupt = item.config.stash[INTERRUPT_KEY]
    interrupt.enter(item.nodeid)
    try:
        return (yield)
    finally:
        interrupt.leave()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:  # after the test's own fixtures (its clients) are torn down
        item.config.stash[SESSION_KEY].finished(item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    session = item.config.stash[SESSION_KEY]
    if call.when == "call":
        _name_deaths(report, session.deaths_during(item.nodeid))
    if not report.failed or call.when == "teardown":
        return report
    dead = {death.log_path for death in session.deaths_during(item.nodeid)}
    for server in session.servers_used_by(item.nodeid):
        if server.log_path in dead:
            continue  # its death's section carries the tail
        tail = "\n".join(server.log_tail(LOG_LINES_IN_REPORT))
        report.sections.append((f"vllm {server.spec.role} server log (last {LOG_LINES_IN_REPORT} lines; "
                                f"full log {server.log_path})", tail))
    return report


def _name_deaths(report: pytest.TestReport, deaths: list[ServerDeath]) -> None:
    """A test whose server died fails, with how it died and the log tail, whatever else it saw."""
    for death in deaths:
        message = death.message()
        if report.passed:
            report.outcome = "failed"
            report.longrepr = message
        elif message.splitlines()[0] not in str(report.longrepr):
            report.sections.append((f"vllm server died during this test: {death.server}", message))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """An xdist worker writes its reports here and hands its summary to the controller, which
    prints it (parallel.py): a worker has no terminal of its own."""
    vllm_session = session.config.stash.get(SESSION_KEY, None)
    if vllm_session is not None and vllm_session.worker is not None:
        lines, written = vllm_session.finish_reports(exitstatus)
        parallel.publish_summary(session.config, lines, [str(p) for p in written])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None or session.worker is not None:
        return
    lines, written = session.finish_reports(exitstatus)
    if not lines and not written:
        return
    terminalreporter.section("vllm summary")
    for line in lines:
        terminalreporter.write_line(line)
    if written:
        terminalreporter.write_line("reports: " + ", ".join(str(p) for p in written))


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.shutdown()
    interrupt = config.stash.get(INTERRUPT_KEY, None)
    if interrupt is not None:
        interrupt.uninstall()


# -- fixtures -------------------------------------------------------------------------------
def _serve(request: pytest.FixtureRequest, role: str) -> ServerHandle:
    session = request.config.stash[SESSION_KEY]
    try:
        return session.handle(role, request.node.nodeid)
    except (ServerStartError, ServerDiedError) as exc:
        pytest.fail(str(exc), pytrace=False)
    except UsageError as exc:
        pytest.fail(f"usage error: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def vllm_session(pytestconfig: pytest.Config) -> VLLMSession:
    """The run's pytest-vllm state: GPU profile, model pair, server pool (for advanced use)."""
    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture
def base_server(request: pytest.FixtureRequest) -> ServerHandle:
    """The base model's vLLM server (ServerHandle: url, model, spec, log_path, client(), async_client()).

    Booted on first use with the flags of this test's vllm_server markers and shared by every test
    with the same flags; stopped after the last test that needs it. --vllm-url base=URL uses a
    running server instead.
    """
    return _serve(request, BASE)


@pytest.fixture
def compressed_server(request: pytest.FixtureRequest) -> ServerHandle:
    """The compressed (quantized) model's vLLM server; same contract as base_server.

    Default model: the embedded W8A8 checkpoint on cpu, online FP8 of the base model on GPUs;
    --compressed-model chooses another.
    """
    return _serve(request, COMPRESSED)


@pytest.fixture
def vllm_server(request: pytest.FixtureRequest) -> ServerHandle:
    """Parametrized over both servers: the test runs once on the base and once on the compressed one,
    and once on each replica of a role of several (pytest_generate_tests)."""
    if isinstance(request.param, tuple):
        role, index = request.param
        return replica_of(_serve(request, role), index)
    return _serve(request, request.param)


@pytest.fixture
def server_pair(base_server: ServerHandle, compressed_server: ServerHandle) -> ServerPair:
    """Both servers at once (they boot in parallel when the GPU profile allows), for A/B checks."""
    return ServerPair(base_server, compressed_server)


@pytest.fixture
def vllm_server_factory(request: pytest.FixtureRequest) -> Callable[..., ServerHandle]:
    """Boot a server of any spec: ``vllm_server_factory(model=None, role="custom", env=None, **flags)``.

    ``model`` defaults to the base model, with the base server's own flags (a perf shape's random
    weights, the GPU dtype). Equal specs share one server; it is stopped after this
    test unless a planned test needs it. Use it for configurations no marker can express.
    """
    session: VLLMSession = request.config.stash[SESSION_KEY]

    def make(model: str | None = None, role: str = "custom", env: dict[str, str] | None = None,
             **flags: Any) -> ServerHandle:
        try:
            marker = MarkerFlags.from_kwargs({**flags, "env": env or {}}, request.node.nodeid)
            pair = session.pair_of(request.node.nodeid)
            spec = (session.spec_for(role, [marker], model=model) if model
                    else session.spec_like_base(role, [marker], pair=pair))
            return session.handle_for_spec(spec, request.node.nodeid)
        except (ServerStartError, ServerDiedError) as exc:
            pytest.fail(str(exc), pytrace=False)
        except UsageError as exc:
            pytest.fail(f"usage error: {exc}", pytrace=False)

    return make


@pytest.fixture
def vllm_client(vllm_server: ServerHandle) -> Iterator[openai.OpenAI]:
    """A synchronous OpenAI client (retries off) on ``vllm_server``: runs once per server."""
    with vllm_server.client() as client:
        yield client


@pytest_asyncio.fixture
async def vllm_async_client(vllm_server: ServerHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async OpenAI client (retries off) on ``vllm_server``; works in pytest-asyncio strict mode."""
    async with vllm_server.async_client() as client:
        yield client


@pytest_asyncio.fixture
async def base_async_client(base_server: ServerHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async OpenAI client (retries off) on the base server."""
    async with base_server.async_client() as client:
        yield client


@pytest_asyncio.fixture
async def compressed_async_client(compressed_server: ServerHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async OpenAI client (retries off) on the compressed server."""
    async with compressed_server.async_client() as client:
        yield client
