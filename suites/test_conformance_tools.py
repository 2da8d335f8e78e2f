"""OpenAI API conformance of tool calling on /v1/chat/completions, and base vs compressed tool behaviour.

Requests carry 1-3 function tools (names, descriptions, JSON-schema parameters of varied shape,
``pytest_vllm.conformance.tools``) and a ``tool_choice``. vLLM 0.32 takes a forced choice (named or
``"required"``) only from a server with a tool parser, and then needs no tool-trained model: the call
is decoded as structured output against the declared parameters. ``"auto"`` needs
``--enable-auto-tool-choice`` as well. The servers of this file are started so (``pytestmark``);
a server that refuses a choice for want of these flags skips the properties that need it, naming them.

Budgets: the examples below are small (every forced call is up to ``TOOL_MAX_TOKENS`` guided
tokens on a CPU server); ``--vllm-conformance-profile nightly`` runs ten times as many. The compressed
server's valid-call rate must be at least ``--vllm-tool-call-budget`` (default 0.8) times the base's.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume

from pytest_vllm.conformance import tools as T
from pytest_vllm.conformance.runner import PropertyRun
from pytest_vllm.conformance.validators import CHAT, ENDPOINTS, check_response
from pytest_vllm.session import SESSION_KEY

# What the servers of this file are started with: a tool parser, for vLLM 0.32 takes no tool_choice but
# "none" without one; hermes parses ChatML's <tool_call> tags (SmolLM2's template), and
# --enable-auto-tool-choice is what "auto" needs. VLLM_ENFORCE_STRICT_TOOL_CALLING=0 turns off the
# parser's xgrammar structural tag, so that a forced choice is decoded as structured output against
# the declared parameters (vLLM's JSON-schema path); with the tag (the default), arguments are held to
# the schema only for tools with strict: true or at --tool-strict-level parameter, a flag vLLM 0.24
# does not have. README "Tool calling and the Responses API" says what each path gave.
# disable_any_whitespace: guided JSON without free whitespace, which SmolLM2 at temperature 0 can
# repeat until max_tokens (seen: a '{}' call cut at 96 tokens on both servers); calls are also shorter.
# It needs the xgrammar backend named: vLLM 0.32 refuses it with backend "auto".
pytestmark = pytest.mark.vllm_server(tool_call_parser="hermes", enable_auto_tool_choice=True,
                                     structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
                                     env={"VLLM_ENFORCE_STRICT_TOOL_CALLING": "0"})
FLAGS_HINT = ("--tool-call-parser <parser> (hermes for ChatML models such as SmolLM2), and --enable-auto-tool-choice "
              "for 'auto'")


def require_tool_choice(run: PropertyRun, *choices: str) -> None:
    """Skip, naming the flags, where the server takes none of ``choices`` (a vLLM without a tool parser)."""
    for choice in choices:
        probe = run.probe.post(ENDPOINTS[CHAT], run.with_model(T.probe_request(choice)))
        run.probe.history.clear()
        if T.not_configured(probe.status, probe.text):
            pytest.skip(f"the server refuses tool_choice {choice!r} ({probe.text[:160]}): start vLLM with {FLAGS_HINT}")


def send_tool_request(conformance: PropertyRun, request: T.ToolRequest) -> Any:
    """The request, validated as any chat request, then its tool calls checked (a call cut by max_tokens
    is discarded: there is no whole call to judge)."""
    outcome = conformance.send(CHAT, request.body, f"chat request with tool_choice {request.body['tool_choice']!r}")
    assume(outcome.finish_reason() != "length")
    conformance.expect(T.check_tool_calls(outcome, request), f"tool calls for tool_choice "
                                                             f"{request.body['tool_choice']!r}")
    return outcome


def test_forced_tool_choices_yield_valid_calls(conformance: PropertyRun) -> None:
    """A named or required choice: calls with ids, the function asked, arguments valid against its parameters."""
    require_tool_choice(conformance, T.REQUIRED, T.NAMED)
    conformance.run(lambda request: send_tool_request(conformance, request), T.tool_requests(), examples=8)


def test_streamed_tool_calls_reassemble_into_the_non_streamed_call(conformance: PropertyRun) -> None:
    require_tool_choice(conformance, T.REQUIRED, T.NAMED)

    def check(request: T.ToolRequest) -> None:
        whole = send_tool_request(conformance, request)
        pieces = send_tool_request(conformance, T.ToolRequest(
            {**request.body, "stream": True, "stream_options": {"include_usage": True}}, request.choice,
            request.name, request.tools))
        conformance.expect(T.compare_streamed(T.tool_calls(whole), T.tool_calls(pieces)),
                           "streamed tool calls against the non-streamed ones")
        assert pieces.finish_reason() == whole.finish_reason()

    conformance.run(check, T.tool_requests(stream=False, temperatures=(0.0,)), examples=4)


def test_a_function_without_parameters_is_called_with_no_arguments(conformance: PropertyRun) -> None:
    """Omitted ``parameters`` is an empty parameter list: a forced call's arguments are ``{}``."""
    require_tool_choice(conformance, T.REQUIRED, T.NAMED)

    def check() -> None:
        for choice in (T.REQUIRED, T.NAMED):
            body = {"messages": [{"role": "user", "content": "Find the user called Ada."}], "temperature": 0,
                    "tools": [{"type": "function", "function": {"name": "lookup_user"}}],
                    "max_tokens": T.TOOL_MAX_TOKENS, "tool_choice": T.tool_choice_value(choice, "lookup_user")}
            request = T.ToolRequest(body, choice, "lookup_user" if choice == T.NAMED else None, {"lookup_user": None})
            outcome = conformance.send(CHAT, body, f"chat request with tool_choice {body['tool_choice']!r}")
            assert outcome.finish_reason() != "length", (
                f"a call without arguments took all {T.TOOL_MAX_TOKENS} tokens: {outcome.exchange.text[:300]}")
            conformance.expect(T.check_tool_calls(outcome, request), f"tool_choice {body['tool_choice']!r}")

    conformance.once(check)


def test_tool_choice_none_yields_no_calls(conformance: PropertyRun) -> None:
    def check(request: T.ToolRequest) -> None:
        body = {**request.body, "max_tokens": 12}  # text, not a call: a few tokens tell
        outcome = conformance.send(CHAT, body, "chat request with tool_choice 'none'")
        conformance.expect(T.check_tool_calls(outcome, request), "tool_choice 'none'")

    conformance.run(check, T.tool_requests(choices=(T.NONE,)), examples=3)


def test_tool_choice_auto_calls_validly_or_answers(conformance: PropertyRun) -> None:
    """``auto``: either valid calls with finish_reason 'tool_calls', or a text answer."""
    require_tool_choice(conformance, T.AUTO)

    def check(request: T.ToolRequest) -> None:
        outcome = conformance.send(CHAT, request.body, "chat request with tool_choice 'auto'")
        assume(outcome.finish_reason() != "length" or not T.tool_calls(outcome))
        conformance.expect(T.check_tool_calls(outcome, request), "tool_choice 'auto'")

    conformance.run(check, T.tool_requests(choices=(T.AUTO,)), examples=2)


def test_broken_tool_schemas_and_unknown_functions_are_refused(conformance: PropertyRun) -> None:
    """A tool whose parameters are no JSON Schema, or a tool_choice naming no declared function: a 4xx error
    object (the server cannot hold the model to such a call)."""
    require_tool_choice(conformance, T.REQUIRED, T.NAMED)  # else every forced request is refused for that

    def check() -> None:
        conformance.canary()
        for what, body in T.broken_tool_requests():
            conformance.reject(CHAT, conformance.with_model(body), param="tools", what=f"tool parameters with {what}")
        unknown = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                   "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                   "tool_choice": {"type": "function", "function": {"name": "not_declared"}}}
        conformance.reject(CHAT, conformance.with_model(unknown), param="tool_choice",
                           what="tool_choice naming an undeclared function")
        conformance.assert_healthy(after="refusing broken tool requests")

    conformance.once(check)


# -- base vs compressed --------------------------------------------------------------------------------
def test_compressed_server_keeps_the_base_servers_valid_tool_calls(
        conformance_pair: tuple[PropertyRun, PropertyRun], request: pytest.FixtureRequest) -> None:
    """Over the same forced requests at temperature 0, the compressed server's rate of valid calls (whole,
    the function asked, arguments valid against the schema) is at least the budget times the base's."""
    base, compressed = conformance_pair
    require_tool_choice(base, T.REQUIRED, T.NAMED)
    require_tool_choice(compressed, T.REQUIRED, T.NAMED)
    budget = request.config.stash[SESSION_KEY].config.tool_call_budget
    valid = {"base": 0, "compressed": 0}
    invalid: list[str] = []

    def check(tool_request: T.ToolRequest) -> None:
        for label, run in (("base", base), ("compressed", compressed)):
            exchange = run.probe.post(ENDPOINTS[CHAT], run.with_model(tool_request.body))
            outcome = check_response(exchange, CHAT, tool_request.body)
            if T.valid_call(outcome, tool_request):
                valid[label] += 1
            else:
                invalid.append(f"{label}: {tool_request.body['tool_choice']!r} -> {exchange.text[:300]}")

    base.run(check, T.tool_requests(temperatures=(0.0,), stream=False), examples=6)
    tried = base.record.examples
    rates = {label: count / tried for label, count in valid.items()}
    request.node.add_report_section("call", "valid tool calls", f"base {valid['base']}/{tried}, compressed "
                                    f"{valid['compressed']}/{tried}, budget {budget}\n" + "\n".join(invalid))
    assert valid["base"], (f"the base server made no valid call in {tried} forced requests: nothing to hold the "
                           "compressed server to (see the base server's own tool properties)\n  "
                           + "\n  ".join(invalid))
    assert rates["compressed"] >= rates["base"] * budget, (
        f"valid tool calls: compressed {valid['compressed']}/{tried}, base {valid['base']}/{tried}; the budget "
        f"(--vllm-tool-call-budget {budget}) needs at least {rates['base'] * budget:.2f}. Invalid calls:\n  "
        + "\n  ".join(invalid[:10]))
