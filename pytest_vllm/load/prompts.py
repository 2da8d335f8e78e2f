"""Seeded prompts of exact token lengths, measured with the server's own tokenizer.

The server's ``/tokenize`` and ``/detokenize`` endpoints count tokens the way the model does,
so no local tokenizer (and no hub download) is needed, and a ``--vllm-url`` server works too.
Where the served checkpoint is a local folder with a ``tokenizer.json`` whose ids for a probe
text match the server's, that file counts instead (local_tokenizer.py: a thousand times faster,
the same prompts). Text is seeded random English words, trimmed to the exact count and
re-checked, because detokenize → tokenize does not always round-trip.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path

import httpx

from pytest_vllm.errors import UsageError
from pytest_vllm.load.local_tokenizer import LocalTokenizer
from pytest_vllm.load.workload import Workload
from pytest_vllm.server.handle import token_ids, tokenize_request

WORDS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line "
    "end member law car city community name president team minute idea kid body information back "
    "parent face others level office door health person art war history party result change "
    "morning reason research girl guy moment air teacher force education foot boy age policy music "
    "river market garden window paper table light road letter forest island bridge mountain ocean "
    "apple bread coffee silver engine signal planet summer winter spring autumn yellow green blue "
    "quiet rapid gentle bright simple careful honest modern ancient golden hidden narrow"
).split()

MAX_ADJUST_ROUNDS = 8
PARALLEL_PROMPTS = 32  # prompts built at once (each a few /tokenize round trips)
# Text whose token ids identify a tokenizer (casing, digits, accents, CJK, emoji, whitespace): two
# tokenizers that split all of it alike build the same exact-length prompts.
TOKENIZER_PROBE = "pytest-vllm Probe: 2024-11-21, naïve café ½ — 東京 🙂\n\tThe END."


@dataclass(frozen=True)
class Prompt:
    """One request body's input: ``text`` for completions or ``messages`` for chat."""

    text: str | None
    messages: list[dict[str, str]] | None
    input_tokens: int


class PromptFactory:
    """Builds exact-length prompts against one server (``/tokenize`` of that server's model, or its
    tokenizer file once ``use_local_tokenizer`` proved that it counts alike)."""

    def __init__(self, http: httpx.AsyncClient, model: str) -> None:
        self._http = http
        self._model = model
        self.local: LocalTokenizer | None = None

    async def use_local_tokenizer(self) -> bool:
        """Count with the served checkpoint's own tokenizer file when the server names a local folder
        (``/v1/models`` root) and both give TOKENIZER_PROBE the same ids, with and without special
        tokens; the server tokenizes otherwise (a remote server, another tokenizer, no library)."""
        try:
            response = await self._http.get("/v1/models")
            roots = [str(m.get("root") or "") for m in response.json().get("data", []) if m.get("id") == self._model]
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        local = LocalTokenizer.load(roots[0]) if roots and roots[0] else None
        if local is None:
            return False
        for special in (True, False):
            if local.encode(TOKENIZER_PROBE, special) != await self._server_tokenize(TOKENIZER_PROBE, special=special):
                return False
        frame = local.encode("")
        if frame != await self._server_tokenize(""):
            return False
        # Special tokens that only frame a text (a BOS, say): counted once for every prompt.
        if len(local.encode(TOKENIZER_PROBE)) != len(local.encode(TOKENIZER_PROBE, special=False)) + len(frame):
            return False
        self.local = local
        return True

    async def _tokenize(self, text: str | None = None, messages: list[dict[str, str]] | None = None,
                        special: bool = True) -> list[int]:
        if self.local is not None and messages is None and text is not None:
            return self.local.encode(text, special)
        return await self._server_tokenize(text, messages, special)

    async def _server_tokenize(self, text: str | None = None, messages: list[dict[str, str]] | None = None,
                               special: bool = True) -> list[int]:
        response = await self._http.post("/tokenize", json=tokenize_request(self._model, text, messages, special))
        ids = token_ids(response.json()) if response.status_code == 200 else None
        if ids is None:
            raise UsageError(f"the server's /tokenize answered {response.status_code}: {response.text[:300]}")
        return ids

    async def tokenizer_fingerprint(self) -> tuple[int, ...]:
        """The token ids of TOKENIZER_PROBE: equal for servers whose prompts may be shared."""
        return tuple(await self._server_tokenize(TOKENIZER_PROBE))

    async def _detokenize(self, tokens: list[int]) -> str:
        if self.local is not None:
            return self.local.decode(tokens)
        response = await self._http.post("/detokenize", json={"model": self._model, "tokens": tokens})
        response.raise_for_status()
        return str(response.json()["prompt"])

    async def text_of_length(self, rng: random.Random, n_tokens: int, prefix: str = "") -> str:
        """``prefix`` + seeded words: exactly ``n_tokens`` prompt tokens (special tokens included)."""
        special = len(await self._tokenize(""))
        text = prefix + " ".join(rng.choice(WORDS) for _ in range(n_tokens + 8))
        for _ in range(MAX_ADJUST_ROUNDS):
            count = len(await self._tokenize(text))
            if count == n_tokens:
                return text
            if count > n_tokens:
                body = await self._tokenize(text, special=False)
                cut = await self._detokenize(body[: max(0, n_tokens - special)])
                text = cut if cut.startswith(prefix) else prefix + cut[len(prefix):]
            else:
                text = text + " " + rng.choice(WORDS)
        raise UsageError(f"could not build a prompt of exactly {n_tokens} tokens with this tokenizer")

    def _local_texts(self, rngs: list[random.Random], n_tokens: int, prefix: str) -> list[str]:
        """text_of_length for many prompts at once with the local tokenizer: the same steps on each
        prompt's own generator, so the same texts, but every round's encoding in one batch."""
        local = self.local
        assert local is not None
        special = len(local.encode(""))
        texts = [prefix + " ".join(rng.choice(WORDS) for _ in range(n_tokens + 8)) for rng in rngs]
        pending = list(range(len(texts)))
        for _ in range(MAX_ADJUST_ROUNDS):
            if not pending:
                return texts
            # One encoding per prompt and round: the special tokens only frame the text (checked in
            # use_local_tokenizer), so the count is the body's plus theirs.
            still = []
            for i, body in zip(pending, local.encode_batch([texts[i] for i in pending], special=False)):
                count = len(body) + special
                if count < n_tokens:
                    texts[i] = texts[i] + " " + rngs[i].choice(WORDS)
                elif count > n_tokens:
                    cut = local.decode(body[: max(0, n_tokens - special)])
                    texts[i] = cut if cut.startswith(prefix) else prefix + cut[len(prefix):]
                if count != n_tokens:
                    still.append(i)
            pending = still
        if pending:
            raise UsageError(f"could not build a prompt of exactly {n_tokens} tokens with this tokenizer")
        return texts

    async def template_tokens(self, workload: Workload) -> int:
        """Tokens every prompt of ``workload`` has beside its own text (a chat template's frame)."""
        if workload.endpoint != "chat" or workload.dataset:
            return 0
        return len(await self._tokenize(messages=[{"role": "user", "content": ""}]))

    async def build(self, workload: Workload, count: int, prompt_set: str, start: int = 0) -> list[Prompt]:
        """``count`` prompts of the set named ``prompt_set`` ("warmup", "run1", ...): seeded by the
        workload's name, seed and the set, so every set differs from every other (a repetition must
        not be served from the prefix cache its predecessor filled) while every server and every
        run get the same sets. Dataset rows: a seeded permutation, each set from ``start`` on."""
        if workload.dataset:
            return load_dataset(Path(workload.dataset), workload.endpoint, count,
                                workload.seed + 7919 * workload.prompt_seed, start)
        prefix = ""
        if workload.shared_prefix_len:
            seed = f"{workload.seed}-{workload.prompt_seed}" if workload.prompt_seed else workload.seed
            prefix = await self.text_of_length(random.Random(seed), workload.shared_prefix_len) + " "
        chat_overhead = await self.template_tokens(workload)

        def rng_of(index: int) -> random.Random:
            return random.Random(f"{workload.name}-{workload.seed}-{workload.prompt_seed}-{prompt_set}-{index}")

        if self.local is not None and workload.endpoint != "chat":  # no chat template here: the server's
            texts = self._local_texts([rng_of(i) for i in range(count)], workload.input_len, prefix)
            return [Prompt(text, None, workload.input_len) for text in texts]

        async def one(index: int) -> Prompt:
            rng = rng_of(index)
            if workload.endpoint == "chat":
                target = max(1, workload.input_len - chat_overhead)
                content = await self.text_of_length(rng, target, prefix)
                messages = [{"role": "user", "content": content}]
                return Prompt(None, messages, len(await self._tokenize(messages=messages)))
            text = await self.text_of_length(rng, workload.input_len, prefix)
            return Prompt(text, None, workload.input_len)

        # At most PARALLEL_PROMPTS prompts in flight: a thousand at once would queue on the HTTP
        # pool and could hit its timeout on a busy server.
        limit = asyncio.Semaphore(PARALLEL_PROMPTS)

        async def bounded(index: int) -> Prompt:
            async with limit:
                return await one(index)

        return list(await asyncio.gather(*(bounded(i) for i in range(count))))


def load_dataset(path: Path, endpoint: str, count: int, seed: int, start: int = 0) -> list[Prompt]:
    """``count`` prompts from a JSONL file of rows with "prompt" (text) or "messages" (a
    conversation): rows ``start``, ``start + 1``, ... of a seeded permutation, cycling when the
    file has fewer rows, so consecutive sets reuse a row only when the file runs out."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{path}:{number}: not JSON ({exc})") from None
        if "messages" in row:
            messages = row["messages"]
            text = None if endpoint == "chat" else "\n".join(m["content"] for m in messages)
            rows.append(Prompt(text, messages if endpoint == "chat" else None, 0))
        elif "prompt" in row:
            text = str(row["prompt"])
            rows.append(Prompt(None if endpoint == "chat" else text,
                               [{"role": "user", "content": text}] if endpoint == "chat" else None, 0))
        else:
            raise UsageError(f"{path}:{number}: a row needs a 'prompt' or 'messages' field")
    if not rows:
        raise UsageError(f"{path} holds no prompts")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[order[(start + i) % len(rows)]] for i in range(count)]
