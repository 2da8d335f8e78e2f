"""Runs one conformance property against one server.

It applies the hypothesis profile, counts examples into the ledger, attaches the requests of a
failing example (JSON and curl) to the failure, separates the server's known deviations (an
xfail naming them at the end, never a silent pass) from new ones, and checks that the server is
still healthy and still answers correctly after rejected requests.

A new deviation fails the property only when the property owns its rule (``findings.Ownership``);
one of another rule is recorded in the ledger as a finding and the property goes on judging its
own behaviour. An example that a finding leaves nothing to judge on (a valid request refused, an
unreadable body) is not judged; a property that could judge none of its examples is skipped with
the findings named, which the ledger reports under their own rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from pytest_vllm.conformance.deviations import Deviation, KnownDeviation, split_known
from pytest_vllm.conformance.families import VLLM, ServerFamily
from pytest_vllm.conformance.findings import EVERY_RULE, Ownership
from pytest_vllm.conformance.ledger import Ledger
from pytest_vllm.conformance.validators import (
    CHAT,
    ENDPOINTS,
    Outcome,
    check_accept_or_reject,
    check_rejection,
    check_response,
    summarize,
)

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from pytest_vllm.conformance.ledger import PropertyRecord
    from pytest_vllm.conformance.probe import Exchange, Probe
    from pytest_vllm.conformance.profiles import Profile

# The canary: a greedy request whose answer must not change after the server rejected requests.
CANARY = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
          "max_tokens": 8}


class ConformanceFailure(AssertionError):
    """A server broke the OpenAI contract; the message lists every deviation found."""


class NotJudged(Exception):  # noqa: N818 - an outcome, not an error
    """This example leaves the property nothing to judge: a deviation of another rule (a finding,
    recorded in the ledger) took away what the property checks, e.g. a valid request refused."""


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to the exception (PEP 678); pytest and hypothesis print it with the failure."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - python 3.10
        notes = list(getattr(exc, "__notes__", []))
        exc.__notes__ = [*notes, note]  # type: ignore[attr-defined]


class PropertyRun:
    """The context of one property on one server (a fresh one per test)."""

    def __init__(self, *, model: str, probe: Probe, record: PropertyRecord, profile: Profile,
                 known: Sequence[KnownDeviation] = (), peers: Sequence[PropertyRun] = (),
                 extensions: frozenset[str] = frozenset(), family: ServerFamily | None = None,
                 ownership: Ownership = EVERY_RULE, ledger: Ledger | None = None) -> None:
        self.model = model
        self.probe = probe
        self.record = record
        self.profile = profile
        self.known = tuple(known)
        self.peers = tuple(peers)  # other servers the same property talks to (base vs compressed)
        self.family = family or ServerFamily(VLLM if self.known else None)
        self.vllm = self.family.name == VLLM  # vLLM's extensions (return_token_ids, ...) may be used
        self.extensions = extensions  # vLLM's sampling extensions the server accepts
        self.ownership = ownership
        self.ledger = ledger if ledger is not None else Ledger()
        self.ledger.ownerships[record.nodeid] = ownership
        self.server = f"{record.server} ({self.family.describe()})"  # as findings name it
        self.expected: list[tuple[KnownDeviation, Deviation]] = []
        self._canary: str | None = None
        self._liveness: str | None = None
        self._generated = False  # inside a hypothesis run

    def require(self, *names: str) -> None:
        """Skip (saying why) a property about vLLM extensions the server refuses."""
        missing = [name for name in names if name not in self.extensions]
        if missing:
            pytest.skip(f"the server refuses vLLM's {', '.join(missing)} (not OpenAI parameters): nothing to check")

    # -- running ----------------------------------------------------------------------------------
    def run(self, check: Callable[[Any], None], strategy: SearchStrategy[Any], *, examples: int) -> None:
        """Run ``check`` on examples of ``strategy`` (``examples`` is the CI budget; the profile
        scales it), then report the known deviations seen, if any, as an xfail."""
        from hypothesis import given
        from hypothesis.errors import FlakyStrategyDefinition

        # wraps: hypothesis reads the check's signature (it passes the value by the check's parameter
        # name) and keys its database and derandomized seed on the check's own source.
        @functools.wraps(check)
        def one_example(*args: Any, **kwargs: Any) -> None:
            with self.example():
                try:
                    check(*args, **kwargs)
                except NotJudged:
                    # counted, not replaced by another example (hypothesis' assume): a server that
                    # refuses every request of a kind would cost ten times the budget
                    self.record.not_judged += 1

        self._generated = True
        try:
            self.profile.settings(examples)(given(strategy)(one_example))()
        except FlakyStrategyDefinition as exc:
            raise ConformanceFailure(
                "a failing example could not be replayed: what it draws depends on the server's answers (a greedy "
                "reference output), and the server answered the same request differently when hypothesis sent it "
                "again; the server is not deterministic (see test_temperature_zero_is_deterministic)") from exc
        finally:
            self._generated = False
        self.finish()

    def once(self, check: Callable[[], None]) -> None:
        """A check that needs no generated input: one example, then the same verdict rules."""
        with self.example():
            try:
                check()
            except NotJudged:
                self.record.not_judged += 1
        self.finish()

    @contextmanager
    def example(self) -> Iterator[None]:
        """One example: counted, and on failure annotated with its requests for replay."""
        probes = [self.probe, *(peer.probe for peer in self.peers)]
        for probe in probes:
            probe.history.clear()
        self.record.examples += 1
        try:
            yield
            self.expect([Deviation("http.connection-dropped", "", f"{e.method} {e.url}: the server had closed the "
                                   f"connection without 'Connection: close' ({e.dropped_connection}); sent again "
                                   "on a new one") for probe in probes for e in probe.history if e.dropped_connection],
                        "connection reuse")
        except BaseException as exc:
            replay = "\n\n".join(probe.replay() for probe in probes if probe.history)
            if replay and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                add_note(exc, "requests of this example (replay them with the curl lines):\n" + replay)
            raise

    def finish(self) -> None:
        """After all examples: an xfail naming the known deviations seen, if any."""
        expected = [*self.expected, *(pair for peer in self.peers for pair in peer.expected)]
        if expected:
            self.expected = expected
            keys = list(dict.fromkeys(k.key for k, _ in self.expected))
            self.record.known_deviations = keys
            reasons = list(dict.fromkeys(k.reason for k, _ in self.expected))
            pytest.xfail(f"known deviation ({', '.join(keys)}): " + "; ".join(reasons)
                         + f" [{len(self.expected)} occurrence(s) in {self.record.examples} example(s); every other "
                           "check passed]")
        if self.record.not_judged and self.record.not_judged >= self.record.examples:
            pytest.skip(f"not judged: each of its {self.record.examples} example(s) met a deviation of another "
                        f"rule that left nothing to check ({', '.join(self.record.findings)}); the ledger reports "
                        "those findings under their own rules")

    # -- checking ---------------------------------------------------------------------------------
    def expect(self, deviations: Sequence[Deviation], what: str, exchange: Exchange | None = None) -> list[Deviation]:
        """Fail on any deviation that is not a known one of this server and whose rule this property owns.

        A known deviation owned by another property is counted in the ledger (that property's xfail
        reports it) and does not hide what this property checks; any other known one makes this
        property an xfail at the end. A new deviation of a rule another property owns is recorded
        in the ledger as a finding, not raised: returned, so that the caller knows what it met.
        ``exchange`` (default: the last request of this example) is the finding's example."""
        if exchange is None and self.probe.history:
            exchange = self.probe.history[-1]
        new, known = split_known(deviations, self.known)
        for declared, found in known:
            self.ledger.note(found, exchange, server=self.server, record=self.record, owned=False,
                             known=declared.key)
            if declared.owner and declared.owner != self.record.property:
                self.record.excused[declared.key] = self.record.excused.get(declared.key, 0) + 1
            else:
                self.expected.append((declared, found))
        own = [d for d in new if self.ownership.owns(d)]
        foreign = [d for d in new if not self.ownership.owns(d)]
        for deviation in new:
            self.ledger.note(deviation, exchange, server=self.server, record=self.record,
                             owned=deviation in own)
        if own:
            raise ConformanceFailure(f"{what}: {len(own)} deviation(s) from the OpenAI API\n{summarize(own)}")
        return foreign

    def send(self, endpoint: str, body: dict[str, Any], what: str | None = None) -> Outcome:
        """A valid request: it must answer 200 with a conforming response (or stream).

        Refused as a known deviation (say, vLLM's refusal of a prompt without tokens), the request
        leaves nothing for the property to check: a generated example is then discarded (hypothesis
        ``assume``), the deviation being counted and reported as known."""
        exchange = self.probe.post(ENDPOINTS[endpoint], self.with_model(body))
        outcome = check_response(exchange, endpoint, exchange.body)
        foreign = self.expect(outcome.deviations, what or f"valid {endpoint} request", exchange)
        unusable = exchange.status != 200 or not outcome.documents
        if unusable and foreign:
            raise NotJudged(f"{what or endpoint}: {foreign[0]}")
        self.discard_if_refused(exchange)
        return outcome

    def discard_if_refused(self, exchange: Exchange) -> None:
        """A valid request of a generated example that was refused (as a known deviation: any other
        refusal has failed already) leaves nothing to check: the example is discarded."""
        if self._generated and exchange.status != 200:
            from hypothesis import assume

            assume(False)

    def reject(self, endpoint: str, body: Any = None, *, payload: bytes | None = None, param: str = "",
               content_type: str | None = "application/json", what: str = "invalid request") -> Exchange:
        """An invalid request: it must get a 4xx with an OpenAI error object."""
        if payload is not None:
            exchange = self.probe.post_raw(ENDPOINTS[endpoint], payload, content_type)
        else:
            exchange = self.probe.post(ENDPOINTS[endpoint], body)
        foreign = self.expect(check_rejection(exchange, param), what, exchange)
        if foreign and 200 <= exchange.status < 300:
            raise NotJudged(f"{what}: {foreign[0]}")  # accepted: no error answer to judge
        return exchange

    def send_any(self, endpoint: str, body: Any, what: str = "request") -> tuple[Exchange, Outcome | None]:
        """A request that may be valid or not: 200 and conforming, or a conforming 4xx; never a 5xx."""
        exchange, outcome, deviations = self.try_any(endpoint, body)
        self.expect(deviations, what, exchange)
        return exchange, outcome

    def try_any(self, endpoint: str, body: Any) -> tuple[Exchange, Outcome | None, list[Deviation]]:
        """Like ``send_any`` but returns the deviations instead of judging them (for comparisons)."""
        exchange = self.probe.post(ENDPOINTS[endpoint], body)
        outcome, deviations = check_accept_or_reject(exchange, endpoint, body)
        return exchange, outcome, deviations

    def with_model(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model, **body} if "model" not in body else body

    # -- health -----------------------------------------------------------------------------------
    def canary(self) -> str:
        """The canary's greedy answer (taken on first use: call it before sending bad requests)."""
        if self._canary is None:
            self._canary = self.send(CHAT, CANARY, "canary request").text()
        return self._canary

    def assert_healthy(self, after: str) -> None:
        """The server is up (``/health``, or ``/v1/models`` where there is none) and the canary
        request gets the same greedy answer as before."""
        if self._liveness is None:
            self._liveness = "/health" if self.probe.get("/health").status == 200 else "/v1/models"
            self.probe.history.pop()
        live = self.probe.get(self._liveness)
        if live.status != 200:
            raise ConformanceFailure(f"after {after}: GET {self._liveness} answered {live.summary()}")
        reference = self.canary()
        answer = self.send(CHAT, CANARY, f"canary request after {after}").text()
        if answer != reference:
            raise ConformanceFailure(f"after {after}: the greedy canary answer changed from {reference!r} to "
                                     f"{answer!r}")
