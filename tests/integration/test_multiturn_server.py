"""Multi-turn sessions against real servers: the usage's cached tokens with conversations at once,
and JSONL conversations answered by the server (the counters' path: suites/test_multiturn.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_vllm.load.runner import Target
from pytest_vllm.load.sessions import ConversationRun, MultiTurnWorkload, run_conversations
from pytest_vllm.perf.turns import turn_values
from pytest_vllm.server.launcher import IN_PROCESS_WORKER_ENV

pytestmark = pytest.mark.integration


def test_usage_cached_tokens_give_each_turns_share_with_conversations_at_once(vllm_server_factory) -> None:
    """With --enable-prompt-tokens-details every turn's usage says what the prefix cache served, so
    three conversations at once still have per-turn shares; they add up to the server's counters."""
    # Eager: the usage counts are checked, not the speed (80 s boot instead of 117 s on an avx2-only host).
    server = vllm_server_factory(role="prompt_details", enable_prompt_tokens_details=True, enforce_eager=True,
                                 env=IN_PROCESS_WORKER_ENV)
    workload = MultiTurnWorkload(name="usage_shares", num_requests=3, concurrency=3, turns=3, input_len=112,
                                 output_len=8, warmup_requests=1, repeats=1)
    runs = run_conversations(Target(server.url, server.model, server.api_key), workload)
    run = runs.runs[0]
    assert isinstance(run, ConversationRun) and all(r.ok for r in run.records), [r.error for r in run.records]
    assert all(r.cached_tokens is not None for r in run.records), "every answer reports its cached tokens"
    values = turn_values(run)
    shares = [values[f"turn{turn}_cached_share"] for turn in (1, 2, 3)]
    assert shares[0] == 0.0 and shares[0] < shares[1] < shares[2], shares
    assert run.prefix_cache is not None
    assert sum(r.cached_tokens or 0 for r in run.records) == run.prefix_cache.hits, (
        "the usage's cached tokens are the hits the server counted")
    for conversation, turns in zip(run.conversations, [run.records[i:i + 3] for i in range(0, 9, 3)]):
        replies = [m["content"] for m in conversation.history if m["role"] == "assistant"]
        assert replies == [r.text for r in turns], "the history holds the replies the server gave, in order"


def test_jsonl_conversations_send_their_user_turns_with_the_servers_replies(base_server, tmp_path: Path) -> None:
    recorded = "A RECORDED ANSWER THAT MUST NOT BE SENT"
    rows = [{"messages": [{"role": "system", "content": "You answer in one short sentence."},
                          {"role": "user", "content": f"Name a colour, conversation {n}."},
                          {"role": "assistant", "content": recorded},
                          {"role": "user", "content": "Name a fruit of that colour."},
                          {"role": "assistant", "content": recorded},
                          {"role": "user", "content": "And a vegetable?"}]} for n in range(2)]
    dataset = tmp_path / "chats.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    workload = MultiTurnWorkload(name="jsonl", dataset=str(dataset), num_requests=2, concurrency=1, turns=3,
                                 output_len=12, warmup_requests=0, repeats=1)
    run = run_conversations(Target(base_server.url, base_server.model, base_server.api_key), workload).runs[0]
    assert isinstance(run, ConversationRun) and all(r.ok for r in run.records), [r.error for r in run.records]
    for conversation in run.conversations:
        roles = [m["role"] for m in conversation.history]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
        users = [m["content"] for m in conversation.history if m["role"] == "user"]
        assert users[1:] == ["Name a fruit of that colour.", "And a vegetable?"]
        assert recorded not in [m["content"] for m in conversation.history], "the server's replies replace the file's"
    prompts = [r.prompt_tokens for r in run.records]
    assert prompts[0] < prompts[1] < prompts[2], f"each turn resends the history: prompt tokens {prompts}"
    assert len(turn_values(run)) >= 7, "per-turn TTFT, prompt length and (counters, one at a time) cached share"
