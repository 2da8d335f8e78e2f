"""What a conformance check finds: a ``Deviation`` from the OpenAI contract, and vLLM's known ones.

A check returns every deviation it sees (not just the first), each with a stable ``rule`` id and
the JSON path where it occurs, so that a report names all problems of a response at once and a
known deviation can be told apart from a new one by rule and path, never by message text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Deviation:
    """One way a response, stream or error body breaks the OpenAI API contract."""

    rule: str  # stable id, e.g. "schema.missing", "stream.id-changed"
    path: str  # where: "choices[0].message.role", "chunk[3].id", "" for the whole exchange
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.message} [{self.rule}]"


def generic_path(path: str) -> str:
    """``chunk[3].choices[0].index`` -> ``chunk[*].choices[*].index``: the shape of a path."""
    return re.sub(r"\[\d+\]", "[*]", path)


@dataclass(frozen=True)
class KnownDeviation:
    """A deviation the server under test is known to have, reported as an expected failure.

    ``server`` names the server family it is known for (``families``: detected from what the server
    reports about itself): the allowance applies only to servers of that family, so the same
    finding on any other server is a plain failure. ``owner`` names the one
    property that reports it (as its xfail) when the deviation shows up everywhere, like the shape
    of every error body; other properties then go on judging the rest of the exchange.
    """

    key: str
    rule: str
    path: str  # generic path (indices as [*])
    reason: str
    message: str = ""  # a regular expression the deviation's message must match ("" matches any)
    server: str = "vllm"
    owner: str = ""  # the test function that reports it ("" : whichever property meets it)
    before: str = ""  # the first version of the family without it ("": every version has it)

    def applies_to(self, version: str | None) -> bool:
        """Whether a server of this version (of its family) may have it (an unknown version: yes)."""
        if not self.before or version is None:
            return True
        try:
            return Version(version) < Version(self.before)
        except InvalidVersion:
            return True

    def matches(self, deviation: Deviation) -> bool:
        return (deviation.rule == self.rule and generic_path(deviation.path) == self.path
                and (not self.message or re.search(self.message, deviation.message) is not None))


# vLLM's deviations from the OpenAI API, decided on purpose: each is reported as an xfail whose
# reason names it, never skipped and never allowed silently. Those with ``before`` were seen on an
# older vLLM (the CUDA 0.24 build on the GPU machines) and are gone in 0.32: a newer server that
# shows them again fails.
KNOWN_VLLM_DEVIATIONS: tuple[KnownDeviation, ...] = (
    KnownDeviation(
        key="error-code-integer",
        rule="schema.type",
        path="error.code",
        reason="vLLM sends error.code as the HTTP status integer (e.g. 400); OpenAI's Error object has "
               "code: string | null (openai-openapi components.schemas.Error, openai-python ErrorObject)",
        owner="test_error_bodies_follow_the_openai_error_schema",
    ),
    KnownDeviation(
        key="greedy-n-refused",
        rule="http.status",
        path="",
        message=r"n must be 1 when using greedy sampling",
        reason="vLLM refuses n > 1 at temperature 0 (HTTP 400 'n must be 1 when using greedy sampling'); the OpenAI "
               "API accepts any n with any temperature (CreateChatCompletionRequest.n)",
    ),
    KnownDeviation(
        key="empty-prompt-refused",
        rule="http.status",
        path="",
        message=r"prompt cannot be empty|must be provided and non-empty",
        reason="vLLM refuses a completion prompt with no tokens (HTTP 400 'Either prompt or prompt_embeds must be "
               "provided and non-empty' for '', 'The decoder prompt cannot be empty' for control characters only, "
               "which its tokenizer drops); OpenAI completes such a prompt "
               "from the start of a document (CreateCompletionRequest.prompt: '<|endoftext|> is the document "
               "separator ... if a prompt is not specified the model will generate as if from the beginning of a "
               "new document')",
        owner="test_a_prompt_without_tokens_is_completed",
    ),
    KnownDeviation(
        key="completion-text-not-generated",
        rule="text.not-generated",
        path="choices[*].text",
        reason="vLLM's incremental detokenizer starts a completion's text with prompt characters (a character "
               "split over several byte tokens at the end of the prompt comes out as U+FFFD) that no generated "
               "token carries; the text must hold only the completion (Completion.choices[].text)",
    ),
    KnownDeviation(
        key="logit-bias-range-accepted",
        rule="error.accepted",
        path="logit_bias",
        reason="vLLM accepts logit_bias values outside [-100, 100]; the OpenAI API reference allows only -100..100 "
               "(CreateChatCompletionRequest.logit_bias)",
    ),
    KnownDeviation(
        key="connection-dropped-after-error",
        rule="http.connection-dropped",
        path="",
        reason="vLLM 0.24 answers some invalid sampling parameters (top_k below -1, a non-integer logprobs) with "
               "a 400, then lets the same ValueError reach uvicorn, which closes the connection without "
               "'Connection: close'; the next request a client sends on it is reset (seen on 0.24.0, not on 0.32.0)",
        before="0.32",
    ),
    KnownDeviation(
        key="malformed-request-500",
        rule="http.5xx",
        path="",
        message=r"object has no attribute 'get'|invalid literal for int\(\)|not supported between instances|"
                r"'NoneType' object is not iterable",
        reason="vLLM 0.24 answers some malformed requests with HTTP 500 from an unhandled exception: a JSON array "
               "or string as the body (\"'list' object has no attribute 'get'\"), a logit_bias key that is not a "
               "token id (\"invalid literal for int()\"), an object where logprobs takes a number; a malformed "
               "request is a 400 invalid_request_error (seen on 0.24.0; 0.32.0 answers 400)",
        before="0.32",
    ),
    KnownDeviation(
        key="negative-stop-token-id-accepted",
        rule="error.accepted",
        path="stop_token_ids",
        reason="vLLM 0.24 accepts a negative id in its stop_token_ids extension (HTTP 200); no token has a "
               "negative id, and 0.32.0 refuses it with a 400",
        before="0.32",
    ),
    KnownDeviation(
        key="stop-sequences-unlimited",
        rule="error.accepted",
        path="stop",
        reason="vLLM 0.24 accepts more than 4 stop sequences (HTTP 200); the OpenAI API allows up to 4 "
               "(CreateCompletionRequest.stop), and 0.32.0 refuses a fifth with a 400 (its VLLM_MAX_STOP_STRINGS, "
               "default 4)",
        before="0.32",
    ),
    KnownDeviation(
        key="top-k-one-not-argmax",
        rule="sampling.top-k-one",
        path="",
        reason="vLLM 0.24 on CUDA (its PyTorch top-k path, FlashInfer's sampler off) once chose, with top_k=1 "
               "and a seed, a token other than the most likely one (logprob below -3.2 where the argmax had "
               "-0.22) in 15 examples; top_k=1 keeps only the most likely token (seen on 0.24.0, not on 0.32.0)",
        before="0.32",
    ),
    KnownDeviation(
        key="parameterless-tool-arguments-unconstrained",
        rule="tool.arguments-no-parameters",
        path="tool_calls[*].function.arguments",
        reason="vLLM 0.32 constrains a forced call of a function declared without parameters to any JSON value "
               "(vllm/tool_parsers/structural_tag_registry.py get_function_parameters: no parameters -> schema "
               "True), so a model may fill arguments with a string such as '\"lookup_user\"'; OpenAI reads "
               "omitted parameters as an empty parameter list (FunctionDefinition.parameters: 'Omitting "
               "parameters defines a function with an empty parameter list'), arguments '{}'",
        owner="test_a_function_without_parameters_is_called_with_no_arguments",
    ),
    KnownDeviation(
        key="required-call-arguments-reserialized",
        rule="tool.stream-arguments-text",
        path="tool_calls[*].function.arguments",
        reason="vLLM 0.32 parses a non-streamed tool_choice 'required' call and writes its arguments again "
               "(json.dumps: '{}', '{\"a\": 1}') while the streamed call carries the generated text ('{\n    }'): "
               "the same JSON, another string; OpenAI's streamed argument deltas concatenate to the call's "
               "arguments string",
    ),
)


# Every family's known deviations. Another family's go here with ``server=`` its name
# (``families.DETECTORS`` must recognise it); llama-cpp-python has none declared, so a run against it
# reports everything it finds.
KNOWN_DEVIATIONS: tuple[KnownDeviation, ...] = KNOWN_VLLM_DEVIATIONS


def applicable(known: Sequence[KnownDeviation], version: str | None) -> tuple[KnownDeviation, ...]:
    """The known deviations a server of this version (of their family) may have."""
    return tuple(k for k in known if k.applies_to(version))


def known_for(family: str | None, version: str | None) -> tuple[KnownDeviation, ...]:
    """The known deviations of a server of this family and version (none for an unknown family)."""
    if family is None:
        return ()
    return applicable(tuple(k for k in KNOWN_DEVIATIONS if k.server == family), version)


def split_known(found: Iterable[Deviation], known: Sequence[KnownDeviation]
                ) -> tuple[list[Deviation], list[tuple[KnownDeviation, Deviation]]]:
    """(new deviations, (known deviation, occurrence) pairs)."""
    new: list[Deviation] = []
    expected: list[tuple[KnownDeviation, Deviation]] = []
    for deviation in found:
        match = next((k for k in known if k.matches(deviation)), None)
        if match is None:
            new.append(deviation)
        else:
            expected.append((match, deviation))
    return new, expected
