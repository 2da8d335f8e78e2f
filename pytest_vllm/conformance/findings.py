"""Findings: each distinct deviation of a run, recorded once under its rule, and who owns each rule.

A property exists to check some rules and declares them with the ``vllm_conformance_rules`` marker
(patterns ``rule`` or ``rule@path``, shell-style, matched against the deviation's rule id and its
generic path; ``@pytest.mark.vllm_conformance_rules()`` with no pattern: the property judges only
its own assertions). A property without the marker owns every rule that no selected property
declares: the contract properties (schemas, streams, status codes) are written so.

A deviation of a rule the property does not own is not raised there: it becomes a finding of the
ledger, under its rule, with the smallest example that showed it, and the property goes on to judge
its own behaviour. The owner's verdict reports the finding (it fails); a finding that no owner met
fails the session in the ledger's final check. So each deviation fails exactly where it belongs,
and none disappears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pytest_vllm.conformance.deviations import Deviation, generic_path
from pytest_vllm.conformance.replay import curl_line

if TYPE_CHECKING:
    from pytest_vllm.conformance.probe import Exchange

UNCLAIMED = "*"  # the patterns of a property without the marker: rules nobody else claims

RESPONSE_EXCERPT = 400


def pattern_matches(pattern: str, deviation: Deviation) -> bool:
    """``rule`` or ``rule@path``; in the path, ``[*]`` is an index, as generic paths write it."""
    rule, _, path = pattern.partition("@")
    path = path.replace("[*]", "[[][*]]")  # fnmatch would read [*] as a character class
    return fnmatchcase(deviation.rule, rule) and (not path or fnmatchcase(generic_path(deviation.path), path))


@dataclass(frozen=True)
class Ownership:
    """The rules one property judges: its own patterns, against those every selected property claims."""

    own: tuple[str, ...] = (UNCLAIMED,)
    claimed: tuple[str, ...] = ()  # every explicit pattern of the session's selected properties

    def owns(self, deviation: Deviation) -> bool:
        if any(p != UNCLAIMED and pattern_matches(p, deviation) for p in self.own):
            return True
        return UNCLAIMED in self.own and not any(pattern_matches(p, deviation) for p in self.claimed)


EVERY_RULE = Ownership()  # a property alone in its session (no other claims): it judges every rule


@dataclass
class Example:
    """The smallest request that showed a finding, as a person replays it."""

    request: str  # method and URL
    response: str  # status, content type and the start of the body
    curl: str
    size: int  # bytes of the request body: a smaller example replaces a larger one


@dataclass
class Finding:
    """One distinct deviation: a rule (a schema rule: at one generic path, the field being the
    deviation; any other rule wherever it occurs, its paths listed) and, when known, the allowance
    it matches."""

    rule: str
    path: str  # generic path of a schema rule; "" for any other rule (see ``paths``)
    message: str  # the smallest example's message
    known: str = ""  # the KnownDeviation's key when the server's family is known to have it
    occurrences: int = 0
    paths: dict[str, int] = field(default_factory=dict)  # generic path ("" the whole exchange) -> occurrences
    where: dict[str, int] = field(default_factory=dict)  # "POST /v1/chat/completions" -> occurrences
    servers: dict[str, int] = field(default_factory=dict)
    met_in: dict[str, int] = field(default_factory=dict)  # property -> occurrences
    owned_in: list[str] = field(default_factory=list)  # node ids of the owning properties that met it
    example: Example | None = None

    @property
    def key(self) -> str:
        return f"{self.rule}@{self.path}" if self.path else self.rule


def finding_key(deviation: Deviation, known: str = "") -> tuple[str, str, str]:
    """What makes a deviation distinct: its rule, and for a schema rule the field. An invalid request
    accepted is one deviation whichever parameter was wrong (its paths list them)."""
    return deviation.rule, generic_path(deviation.path) if deviation.rule.startswith("schema.") else "", known


def endpoint_of(exchange: Exchange | None) -> str:
    if exchange is None:
        return "-"
    return f"{exchange.method} {urlsplit(exchange.url).path}"


def example_of(exchange: Exchange) -> Example:
    stream = isinstance(exchange.body, dict) and exchange.body.get("stream") is True
    response = exchange.summary()
    if len(response) > RESPONSE_EXCERPT:
        response = response[:RESPONSE_EXCERPT] + " ..."
    return Example(request=f"{exchange.method} {exchange.url}", response=response,
                   curl=curl_line(exchange.url, exchange.payload, method=exchange.method, api_key=exchange.api_key,
                                  stream=stream, content_type=exchange.content_type),
                   size=len(exchange.payload or b""))
