"""Strict checks of what a server sends back: responses, SSE streams and error bodies.

Field presence and types come from ``openai_schema`` (openai-python's types). On top of them, the
rules of the API reference that no type can express:

- ``created`` is a Unix timestamp in seconds (ChatCompletion.created, Completion.created);
- ``choices`` has one entry per requested ``n``, indexed 0..n-1 (``CreateChatCompletionRequest.n``);
- ``usage.total_tokens = prompt_tokens + completion_tokens`` (CompletionUsage);
- log probabilities are <= 0, and ``top_logprobs`` holds as many entries as asked: never more; fewer
  only "in rare cases" (ChatCompletionTokenLogprob.top_logprobs), taken here as at most half of
  the positions of a choice. Legacy completions return up to ``logprobs + 1`` entries (the sampled
  token is always included) and key them by token text, so equal texts may merge: 1..k+1 entries;
- streams (ChatCompletionChunk): every chunk has the same ``id`` and ``created``; the first chunk of
  each choice carries ``delta.role``; each choice index gets exactly one non-null ``finish_reason``
  and no content after it; with ``stream_options.include_usage`` the last chunk has ``choices: []``
  and the usage, and no other chunk carries usage; the stream ends with ``data: [DONE]``;
- stop sequences never appear in the returned text (``stop``: "The returned text will not contain
  the stop sequence"), unless vLLM's ``min_tokens`` extension holds stop strings off;
- an error answers 4xx with ``{"error": {message, type, param, code}}`` (openai-openapi Error); the
  rules of an error answer's status, content type and JSON are ``error.*``, apart from those of a
  response, so that the properties about errors own them (``findings``).

Each function returns every deviation found; none raises on a malformed document.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_vllm.conformance import openai_schema as schemas
from pytest_vllm.conformance.deviations import Deviation
from pytest_vllm.conformance.openai_schema import describe
from pytest_vllm.conformance.probe import Exchange, SSEEvent, StrictJSONError, loads_strict

CHAT = "chat"
COMPLETIONS = "completions"
ENDPOINTS = {CHAT: "/v1/chat/completions", COMPLETIONS: "/v1/completions"}

# 2020-01-01: older "Unix timestamps" are milliseconds or garbage; a day of clock skew is tolerated.
EARLIEST_TIMESTAMP = 1_577_836_800
CLOCK_SKEW_S = 86_400


# -- what a request asks for --------------------------------------------------------------------
@dataclass(frozen=True)
class Asked:
    """The parts of a request body that the response contract depends on (type-checked: a fuzzed
    body with ``n: "two"`` asks for nothing in particular)."""

    endpoint: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    max_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    echo: bool = False
    prompt: str | None = None
    stop: tuple[str, ...] = ()
    include_stop: bool = False
    min_tokens: int = 0
    # A fuzzed request the server accepted: its fields may have been coerced (``"n": "2"``), so
    # nothing that depends on the request's values is checked, only the response's own rules.
    lenient: bool = False

    @classmethod
    def of(cls, endpoint: str, body: Any) -> Asked:
        body = body if isinstance(body, dict) else {}
        stream = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
        n = _int(body.get("n"), 1)
        limit = body.get("max_completion_tokens", body.get("max_tokens")) if endpoint == CHAT else body.get(
            "max_tokens")
        if endpoint == CHAT:
            logprobs = body.get("logprobs") is True
            top = _int(body.get("top_logprobs"), 0) if logprobs else 0
        else:
            raw = body.get("logprobs")
            logprobs = _is_int(raw)
            top = raw if logprobs else 0
        stop = body.get("stop")
        stops = (stop,) if isinstance(stop, str) else tuple(s for s in stop if isinstance(s, str)) if isinstance(
            stop, list) else ()
        prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else None
        return cls(endpoint=endpoint, stream=stream, include_usage=include_usage, n=n,
                   max_tokens=limit if _is_int(limit) else None, logprobs=logprobs, top_logprobs=top,
                   echo=endpoint == COMPLETIONS and body.get("echo") is True, prompt=prompt,
                   stop=tuple(s for s in stops if s), include_stop=body.get("include_stop_str_in_output") is True,
                   min_tokens=_int(body.get("min_tokens"), 0))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, default: int) -> int:
    return value if _is_int(value) else default


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# -- what came back ------------------------------------------------------------------------------
@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str | None = None
    logprob_tokens: list[str] = field(default_factory=list)
    positions: int = 0  # token positions with logprobs
    short_positions: int = 0  # of which with fewer top_logprobs than asked


@dataclass
class Outcome:
    """A checked exchange: the deviations, and (when readable) the choices and usage."""

    exchange: Exchange
    asked: Asked
    deviations: list[Deviation] = field(default_factory=list)
    choices: dict[int, Choice] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    documents: list[Any] = field(default_factory=list)  # the body, or every chunk of a stream

    @property
    def ok(self) -> bool:
        return not self.deviations

    def text(self, index: int = 0) -> str:
        return self.choices[index].text if index in self.choices else ""

    def finish_reason(self, index: int = 0) -> str | None:
        return self.choices[index].finish_reason if index in self.choices else None

    @property
    def completion_tokens(self) -> int | None:
        value = (self.usage or {}).get("completion_tokens")
        return value if _is_int(value) else None

    def texts(self) -> list[str]:
        return [self.choices[i].text for i in sorted(self.choices)]


def check_response(exchange: Exchange, endpoint: str, body: Any) -> Outcome:
    """A request that must succeed: HTTP 200 and a conforming response or stream."""
    return _check_ok(exchange, Asked.of(endpoint, body))


def _check_ok(exchange: Exchange, asked: Asked) -> Outcome:
    outcome = Outcome(exchange, asked)
    if exchange.transport_error:
        outcome.deviations.append(Deviation("http.no-response", "", exchange.transport_error))
        return outcome
    if exchange.status != 200:
        outcome.deviations.append(Deviation("http.status", "", f"a valid request got HTTP {exchange.status}, "
                                                               f"not 200: {exchange.text[:500]}"))
        return outcome
    if not exchange.utf8:
        outcome.deviations.append(Deviation("http.encoding", "", "the body is not valid UTF-8"))
    if asked.stream:
        _check_stream(outcome)
    else:
        _check_single(outcome)
    return outcome


def check_rejection(exchange: Exchange, param: str = "") -> list[Deviation]:
    """A request that must be refused: a 4xx with an OpenAI error object (``param``: the field at fault)."""
    if exchange.transport_error:
        return [Deviation("http.no-response", "", exchange.transport_error)]
    if 200 <= exchange.status < 300:
        return [Deviation("error.accepted", param, f"an invalid request was accepted (HTTP {exchange.status})")]
    return check_error(exchange)


def check_error(exchange: Exchange) -> list[Deviation]:
    """An error answer: 4xx (a client mistake is never a 5xx), JSON, ``{"error": {...}}`` per the spec."""
    out: list[Deviation] = []
    if exchange.transport_error:
        return [Deviation("http.no-response", "", exchange.transport_error)]
    if exchange.status >= 500:
        # a crash, not an answer: the shape of its body (often a plain-text error page) is not
        # judged apart, which would report one crash as three deviations
        return [Deviation("http.5xx", "", f"HTTP {exchange.status} for a client's request (a server error): "
                                          f"{exchange.text[:300]}")]
    if not 400 <= exchange.status < 500:
        out.append(Deviation("error.status", "", f"an error must be a 4xx, got HTTP {exchange.status}"))
    if "json" not in exchange.headers.get("content-type", ""):
        out.append(Deviation("error.content-type", "", f"error body is {exchange.headers.get('content-type')!r}, "
                                                       "not application/json"))
    document = _parse(exchange.text, "", out, "error body", rule="error.json")
    if document is not _UNREADABLE:
        out += schemas.validate(document, schemas.error_response())
    return out


def check_accept_or_reject(exchange: Exchange, endpoint: str, body: Any) -> tuple[Outcome | None, list[Deviation]]:
    """A request that may be valid or not: 200 with a conforming response, or a conforming 4xx.

    An accepted request is checked leniently (see ``Asked.lenient``): whether it streams is read
    from the response's content type, since a server may coerce ``"stream": 1``.
    """
    if exchange.transport_error:
        return None, [Deviation("http.no-response", "", exchange.transport_error)]
    if exchange.status == 200:
        asked = replace(Asked.of(endpoint, body), lenient=True, stream=exchange.streamed, include_usage=False)
        outcome = _check_ok(exchange, asked)
        return outcome, outcome.deviations
    return None, check_error(exchange)


def check_model_list(exchange: Exchange, served: str) -> list[Deviation]:
    """``GET /v1/models``: the list object, each Model valid, the served model listed."""
    out: list[Deviation] = []
    if exchange.status != 200:
        return [Deviation("http.status", "", f"GET /v1/models answered HTTP {exchange.status}")]
    document = _parse(exchange.text, "", out, "body")
    if document is _UNREADABLE:
        return out
    out += schemas.validate(document, schemas.model_list())
    ids = [m.get("id") for m in document.get("data", []) if isinstance(m, dict)] if isinstance(document, dict) else []
    if served not in ids:
        out.append(Deviation("models.missing", "data", f"the served model {served!r} is not listed ({ids})"))
    return out


# -- internals -------------------------------------------------------------------------------------
_UNREADABLE = object()


def _parse(text: str, path: str, out: list[Deviation], what: str, rule: str = "json.invalid") -> Any:
    try:
        return loads_strict(text)
    except StrictJSONError as exc:
        out.append(Deviation(rule, path, f"{what} is not strict JSON: {exc}"))
    except ValueError as exc:
        out.append(Deviation(rule, path, f"{what} is not JSON ({exc}): {text[:200]!r}"))
    return _UNREADABLE


def _check_created(value: Any, path: str, out: list[Deviation]) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # the schema reports the type
    now = time.time()
    if not EARLIEST_TIMESTAMP <= value <= now + CLOCK_SKEW_S:
        unit = " (milliseconds?)" if value > 1e12 else ""
        out.append(Deviation("value.created", path, f"{value} is not a Unix timestamp in seconds{unit}"))


def _check_usage(usage: Any, path: str, out: list[Deviation], asked: Asked) -> None:
    if not isinstance(usage, dict):
        return
    numbers = {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if not all(_is_int(v) or (isinstance(v, float) and v.is_integer()) for v in numbers.values()):
        return  # the schema reports the type
    prompt, completion, total = (int(numbers[k] or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if min(prompt, completion, total) < 0:
        out.append(Deviation("usage.negative", path, f"negative token count in {numbers}"))
    if total != prompt + completion:
        out.append(Deviation("usage.total", path, f"total_tokens {total} != prompt_tokens {prompt} + "
                                                  f"completion_tokens {completion}"))
    if not asked.lenient and asked.max_tokens is not None and completion > asked.max_tokens * asked.n:
        out.append(Deviation("usage.max_tokens", path, f"completion_tokens {completion} exceeds max_tokens "
                                                       f"{asked.max_tokens} x n {asked.n}"))


def _check_indices(indices: Sequence[Any], asked: Asked, path: str, out: list[Deviation]) -> None:
    ints = [i for i in indices if _is_int(i)]
    expected = len(ints) if asked.lenient else asked.n
    if sorted(ints) != list(range(expected)):
        out.append(Deviation("choices.index", path, f"choice indices {sorted(ints, key=str)} are not 0..{expected - 1} "
                                                    f"(n={asked.n}), each once"))


def _check_stops(choice: Choice, asked: Asked, path: str, out: list[Deviation]) -> None:
    # vLLM's min_tokens (an extension, no OpenAI parameter) holds off stop strings as well as EOS
    # until min_tokens tokens exist (vllm-project/vllm#22014): a stop string may then sit in the
    # first tokens' text, whose boundaries the response does not show. Not checked in that case.
    if not asked.stop or asked.include_stop or asked.lenient or asked.min_tokens > 0:
        return
    text = choice.text
    if asked.echo and asked.prompt is not None and text.startswith(asked.prompt):
        text = text[len(asked.prompt):]
    for stop in asked.stop:
        if stop in text:
            out.append(Deviation("stop.in-output", path, f"the stop sequence {stop!r} appears in the output "
                                                         f"{text!r}"))


def _check_echo(choice: Choice, asked: Asked, path: str, out: list[Deviation]) -> None:
    if asked.echo and not asked.lenient and asked.prompt is not None and not choice.text.startswith(asked.prompt):
        out.append(Deviation("echo.prompt", path, f"echo: the text does not start with the prompt {asked.prompt!r}: "
                                                  f"{choice.text[:200]!r}"))


def _nonpositive(value: Any) -> bool:
    return not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0


def _logprobs_to_check(logprobs: Any, asked: Asked, path: str, out: list[Deviation], stream: bool) -> bool:
    """Whether a choice's logprobs object is there to check; a missing one (not streamed) is a deviation."""
    if not asked.logprobs or asked.lenient:
        return False
    if not isinstance(logprobs, dict):
        if logprobs is None and not stream:
            out.append(Deviation("logprobs.missing", path, "logprobs were requested but the choice has none"))
        return False
    return True


def _check_chat_logprobs(logprobs: Any, asked: Asked, path: str, out: list[Deviation], choice: Choice,
                         stream: bool) -> None:
    """Chat logprobs: values <= 0, top_logprobs counts (the shortfall is judged per choice afterwards)."""
    if not _logprobs_to_check(logprobs, asked, path, out, stream):
        return
    content = logprobs.get("content")
    if not isinstance(content, list):
        return  # null content: no tokens (e.g. a chunk with only a role); the schema checks the type
    short = 0
    for i, entry in enumerate(content):
        if not isinstance(entry, dict):
            continue
        where = f"{path}.content[{i}]"
        if not _nonpositive(entry.get("logprob")):
            out.append(Deviation("logprobs.positive", f"{where}.logprob", f"log probability {entry['logprob']} > 0"))
        if isinstance(entry.get("token"), str):
            choice.logprob_tokens.append(entry["token"])
        tops = entry.get("top_logprobs")
        if not isinstance(tops, list):
            continue
        for j, top in enumerate(tops):
            if isinstance(top, dict) and not _nonpositive(top.get("logprob")):
                out.append(Deviation("logprobs.positive", f"{where}.top_logprobs[{j}].logprob",
                                     f"log probability {top['logprob']} > 0"))
        if len(tops) > asked.top_logprobs:
            out.append(Deviation("logprobs.top-count", f"{where}.top_logprobs",
                                 f"{len(tops)} entries, more than top_logprobs={asked.top_logprobs}"))
        elif len(tops) < asked.top_logprobs:
            short += 1
    choice.positions += len(content)
    choice.short_positions += short


def _check_top_shortfall(choice: Choice, asked: Asked, path: str, out: list[Deviation]) -> None:
    if choice.positions and choice.short_positions * 2 > choice.positions:
        out.append(Deviation("logprobs.top-count", path,
                             f"fewer than top_logprobs={asked.top_logprobs} entries at {choice.short_positions} of "
                             f"{choice.positions} positions (the API allows fewer only in rare cases)"))


def _check_completion_logprobs(logprobs: Any, asked: Asked, path: str, out: list[Deviation], choice: Choice,
                               stream: bool, first_chunk: bool) -> None:
    if not _logprobs_to_check(logprobs, asked, path, out, stream):
        return
    tokens = logprobs.get("tokens")
    token_logprobs = logprobs.get("token_logprobs")
    tops = logprobs.get("top_logprobs")
    offsets = logprobs.get("text_offset")
    lengths = {name: len(v) for name, v in (("tokens", tokens), ("token_logprobs", token_logprobs),
                                            ("top_logprobs", tops), ("text_offset", offsets)) if isinstance(v, list)}
    if len(set(lengths.values())) > 1:
        out.append(Deviation("logprobs.lengths", path, f"logprobs lists differ in length: {lengths}"))
    if isinstance(tokens, list):
        choice.logprob_tokens += [t for t in tokens if isinstance(t, str)]
    if isinstance(token_logprobs, list):
        for i, value in enumerate(token_logprobs):
            if value is None:
                if not (asked.echo and i == 0 and (first_chunk or not stream)):
                    out.append(Deviation("schema.null", f"{path}.token_logprobs[{i}]",
                                         "null log probability (only the echoed first prompt token may have none)"))
            elif not _nonpositive(value):
                out.append(Deviation("logprobs.positive", f"{path}.token_logprobs[{i}]",
                                     f"log probability {value} > 0"))
    if isinstance(tops, list):
        for i, top in enumerate(tops):
            where = f"{path}.top_logprobs[{i}]"
            if top is None:
                if not (asked.echo and i == 0 and (first_chunk or not stream)):
                    out.append(Deviation("schema.null", where, "null top_logprobs entry (only the echoed first "
                                                               "prompt token may have none)"))
                continue
            if not isinstance(top, dict):
                continue
            for token, value in top.items():
                if not _nonpositive(value):
                    out.append(Deviation("logprobs.positive", f"{where}[{token!r}]", f"log probability {value} > 0"))
            if not 1 <= len(top) <= asked.top_logprobs + 1 and asked.top_logprobs > 0:
                out.append(Deviation("logprobs.top-count", where, f"{len(top)} entries; logprobs={asked.top_logprobs} "
                                                                  f"allows 1..{asked.top_logprobs + 1}"))


def _check_single(outcome: Outcome) -> None:
    exchange, asked, out = outcome.exchange, outcome.asked, outcome.deviations
    if "application/json" not in exchange.headers.get("content-type", ""):
        out.append(Deviation("http.content-type", "", f"content-type {exchange.headers.get('content-type')!r}, "
                                                      "not application/json"))
    document = _parse(exchange.text, "", out, "response body")
    if document is _UNREADABLE:
        return
    outcome.documents.append(document)
    if asked.endpoint == CHAT:
        node = schemas.chat_completion()
    else:
        node = schemas.completion_with_echo() if asked.echo else schemas.completion()
    out += schemas.validate(document, node)
    if not isinstance(document, dict):
        return
    _check_created(document.get("created"), "created", out)
    choices = _list(document.get("choices"))
    _check_indices([c.get("index") for c in choices if isinstance(c, dict)], asked, "choices", out)
    for position, raw in enumerate(choices):
        if not isinstance(raw, dict) or not _is_int(raw.get("index")):
            continue
        path = f"choices[{position}]"
        choice = Choice(raw["index"], finish_reason=raw.get("finish_reason"))
        if asked.endpoint == CHAT:
            choice.text = _str(_dict(raw.get("message")).get("content"))
            _check_chat_logprobs(raw.get("logprobs"), asked, f"{path}.logprobs", out, choice, stream=False)
            _check_top_shortfall(choice, asked, f"{path}.logprobs.content", out)
        else:
            choice.text = _str(raw.get("text"))
            _check_completion_logprobs(raw.get("logprobs"), asked, f"{path}.logprobs", out, choice, stream=False,
                                       first_chunk=True)
            _check_echo(choice, asked, path, out)
        _check_stops(choice, asked, path, out)
        outcome.choices[choice.index] = choice
    usage = document.get("usage")
    outcome.usage = usage if isinstance(usage, dict) else None
    _check_usage(usage, "usage", out, asked)


def _check_stream(outcome: Outcome) -> None:
    exchange, asked, out = outcome.exchange, outcome.asked, outcome.deviations
    if "text/event-stream" not in exchange.headers.get("content-type", ""):
        out.append(Deviation("stream.content-type", "", f"content-type {exchange.headers.get('content-type')!r}, "
                                                        "not text/event-stream"))
    events: list[SSEEvent] = exchange.events()
    done = [i for i, e in enumerate(events) if e.data.strip() == "[DONE]"]
    if not done:
        out.append(Deviation("stream.done", "", "the stream does not end with data: [DONE]"))
    elif done != [len(events) - 1]:
        out.append(Deviation("stream.done", f"chunk[{done[0]}]", "data: [DONE] is not the single last event"))
    chunks: list[tuple[int, dict[str, Any]]] = []
    for i, event in enumerate(events):
        if event.data.strip() == "[DONE]":
            continue
        document = _parse(event.data, f"chunk[{i}]", out, "chunk")
        if document is _UNREADABLE:
            continue
        outcome.documents.append(document)
        if isinstance(document, dict) and "error" in document and "choices" not in document:
            out.append(Deviation("stream.error", f"chunk[{i}]", f"the stream carries an error: {document['error']}"))
            continue
        if asked.endpoint == CHAT:
            node = schemas.chat_completion_chunk()
        else:
            node = schemas.completion_chunk_with_echo() if asked.echo else schemas.completion_chunk()
        out.extend(schemas.validate(document, node, f"chunk[{i}]"))
        if isinstance(document, dict):
            chunks.append((i, document))
    if not chunks:
        out.append(Deviation("stream.empty", "", "the stream has no chunks"))
        return
    _check_stream_chunks(outcome, chunks)


def _check_stream_chunks(outcome: Outcome, chunks: list[tuple[int, dict[str, Any]]]) -> None:
    asked, out = outcome.asked, outcome.deviations
    first_id, first_created = chunks[0][1].get("id"), chunks[0][1].get("created")
    _check_created(first_created, f"chunk[{chunks[0][0]}].created", out)
    seen_role: set[int] = set()
    finished: dict[int, int] = {}
    usage_chunks: list[int] = []
    for position, (i, chunk) in enumerate(chunks):
        if chunk.get("id") != first_id:
            out.append(Deviation("stream.id-changed", f"chunk[{i}].id", f"{chunk.get('id')!r} != first chunk's "
                                                                        f"{first_id!r}"))
        if chunk.get("created") != first_created:
            out.append(Deviation("stream.created-changed", f"chunk[{i}].created",
                                 f"{chunk.get('created')!r} != first chunk's {first_created!r}"))
        if chunk.get("usage") is not None:
            usage_chunks.append(position)
        choices = _list(chunk.get("choices"))
        for k, raw in enumerate(choices):
            if not isinstance(raw, dict) or not _is_int(raw.get("index")):
                continue
            index, path = raw["index"], f"chunk[{i}].choices[{k}]"
            if not asked.lenient and not 0 <= index < asked.n:
                out.append(Deviation("choices.index", f"{path}.index", f"index {index} outside 0..{asked.n - 1}"))
            choice = outcome.choices.setdefault(index, Choice(index))
            first_of_choice = index not in seen_role and index not in finished and not choice.text
            if asked.endpoint == CHAT:
                delta = _dict(raw.get("delta"))
                if index not in seen_role:
                    if delta.get("role") != "assistant":
                        out.append(Deviation("stream.role", f"{path}.delta.role",
                                             f"the first chunk of choice {index} has role {delta.get('role')!r}, "
                                             "not 'assistant'"))
                    seen_role.add(index)
                piece = _str(delta.get("content"))
                _check_chat_logprobs(raw.get("logprobs"), asked, f"{path}.logprobs", out, choice, stream=True)
            else:
                piece = _str(raw.get("text"))
                _check_completion_logprobs(raw.get("logprobs"), asked, f"{path}.logprobs", out, choice, stream=True,
                                           first_chunk=first_of_choice)
            if index in finished and piece:
                out.append(Deviation("stream.after-finish", path, f"choice {index} gets content {piece!r} after its "
                                                                  f"finish_reason (chunk[{finished[index]}])"))
            choice.text += piece
            reason = raw.get("finish_reason")
            if reason is not None:
                if index in finished:
                    out.append(Deviation("stream.finish-twice", f"{path}.finish_reason",
                                         f"choice {index} has a second finish_reason {reason!r}"))
                else:
                    finished[index] = i
                    choice.finish_reason = reason
    for index in sorted(outcome.choices):  # a choice that never appears is choices.index's finding
        if index not in finished:
            out.append(Deviation("stream.finish-missing", "", f"choice {index} never gets a finish_reason"))
    for index, choice in outcome.choices.items():
        if asked.logprobs and not asked.lenient and choice.text and not choice.logprob_tokens:
            out.append(Deviation("logprobs.missing", f"choice {index}",
                                 "logprobs were requested but no chunk of this choice carries any"))
        _check_top_shortfall(choice, asked, f"choice {index}", out)
        _check_stops(choice, asked, f"choice {index}", out)
        _check_echo(choice, asked, f"choice {index}", out)
    if asked.include_usage:
        last_position = len(chunks) - 1
        last_i, last = chunks[-1]
        if last.get("choices") != [] or not isinstance(last.get("usage"), dict):
            out.append(Deviation("stream.usage-chunk", f"chunk[{last_i}]",
                                 "include_usage: the last chunk must have choices: [] and a usage object"))
        extra = [chunks[p][0] for p in usage_chunks if p != last_position]
        if extra:
            out.append(Deviation("stream.usage-early", f"chunk[{extra[0]}].usage",
                                 f"include_usage: usage must be null on every chunk but the last ({len(extra)} "
                                 "chunk(s) carry it)"))
        if isinstance(last.get("usage"), dict):
            outcome.usage = last["usage"]
            _check_usage(last["usage"], f"chunk[{last_i}].usage", out, asked)
    _check_indices(list(outcome.choices), asked, "choices", out)


def check_forced_text(outcome: Outcome, piece: str, count: int) -> list[Deviation]:
    """A logit_bias of +100 on one token: every generated token is it, so the text is ``piece * count``
    and generation ends by length. Text before the forced tokens was never generated."""
    out: list[Deviation] = []
    choice = outcome.choices.get(0, Choice(0))
    if choice.logprob_tokens != [piece] * count:
        out.append(Deviation("logit_bias.not-forced", "choices[0].logprobs",
                             f"logit_bias +100 on {piece!r}: generated tokens {choice.logprob_tokens!r}"))
    expected = piece * count
    if choice.text != expected:
        if choice.text.endswith(expected) and choice.logprob_tokens == [piece] * count:
            extra = choice.text[:-len(expected)] if expected else choice.text
            out.append(Deviation("text.not-generated", "choices[0].text",
                                 f"the text starts with {extra!r}, which no generated token carries (tokens "
                                 f"{choice.logprob_tokens!r}, text {choice.text!r})"))
        else:
            out.append(Deviation("logit_bias.text", "choices[0].text", f"text {choice.text!r}, expected {expected!r}"))
    if choice.finish_reason != "length":
        out.append(Deviation("logit_bias.finish", "choices[0].finish_reason",
                             f"{choice.finish_reason!r}: the forced token never ends generation, max_tokens does"))
    return out


def summarize(deviations: Sequence[Deviation], limit: int = 12) -> str:
    lines = [f"  - {d}" for d in deviations[:limit]]
    if len(deviations) > limit:
        lines.append(f"  ... and {len(deviations) - limit} more")
    return "\n".join(lines)


__all__ = ["CHAT", "COMPLETIONS", "ENDPOINTS", "Asked", "Choice", "Outcome", "check_accept_or_reject",
           "check_error", "check_forced_text", "check_model_list", "check_rejection", "check_response", "describe",
           "summarize"]
