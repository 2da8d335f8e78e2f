"""Multi-turn sessions: the workload's checks, how a conversation's history grows, the JSONL reader,
and the per-turn metrics (the real server's side: tests/integration/test_multiturn_server.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pytest_vllm import baselines
from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import PROFILES
from pytest_vllm.load.client import RequestRecord, StreamParser
from pytest_vllm.load.runner import WorkloadRuns
from pytest_vllm.load.sessions import (
    MAX_TURNS,
    Conversation,
    ConversationRun,
    Message,
    MultiTurnWorkload,
    converse,
    converse_all,
    load_conversations,
)
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.budgets import GatePolicy, parse_budget, parse_budgets
from pytest_vllm.perf.gate import refuse_multi_turn
from pytest_vllm.perf.judge import cold_cache_problem, judge, stored_baseline
from pytest_vllm.perf.metrics import RepeatedResult
from pytest_vllm.perf.results import BenchSettings, Measurement
from pytest_vllm.perf.turns import compute_run, turn_values
from pytest_vllm.server.counters import PrefixCacheCounts


class FakeChat:
    """A test double of the chat endpoint: it records the messages each turn sent and answers
    "reply <n>", so that the history a conversation resends can be compared with what was
    answered, exactly (a real server's replies cannot be known in advance). ``fail_on``: the
    call numbers (1-based) that fail instead; ``delay``: seconds each answer takes."""

    def __init__(self, fail_on: frozenset[int] = frozenset(), delay: float = 0.0) -> None:
        self.sent: list[list[Message]] = []
        self.fail_on = fail_on
        self.delay = delay
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, messages: list[Message], record: RequestRecord) -> None:
        self.sent.append(messages)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        if len(self.sent) in self.fail_on:
            record.error = "HTTP 500: boom"
            return
        record.text = f"reply {len(self.sent)}"


def test_each_turn_resends_the_history_with_the_replies_the_server_gave() -> None:
    conversation = Conversation(["first", "second", "third"], [{"role": "system", "content": "be brief"}])
    records = [RequestRecord(i) for i in range(3)]
    chat = FakeChat()
    asyncio.run(converse(conversation, records, chat))
    assert chat.sent[0] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"}]
    assert chat.sent[2] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "reply 1"},
        {"role": "user", "content": "second"}, {"role": "assistant", "content": "reply 2"},
        {"role": "user", "content": "third"},
    ]
    assert [len(m) for m in chat.sent] == [2, 4, 6], "every turn adds its user turn and the reply before it"
    assert conversation.history[-1] == {"role": "assistant", "content": "reply 3"}
    assert all(r.ok and r.scheduled_at > 0 for r in records)


def test_a_failed_turn_ends_its_conversation() -> None:
    records = [RequestRecord(i) for i in range(3)]
    chat = FakeChat(fail_on=frozenset({2}))
    asyncio.run(converse(Conversation(["a", "b", "c"]), records, chat))
    assert len(chat.sent) == 2, "the third turn has no reply to build on and is not sent"
    assert records[1].error == "HTTP 500: boom"
    assert records[2].error == "not sent: turn 2 of its conversation failed"


def test_conversations_run_at_the_given_concurrency_each_in_sequence() -> None:
    conversations = [Conversation([f"c{c}t{t}" for t in range(3)]) for c in range(5)]
    records = [[RequestRecord(0) for _ in range(3)] for _ in conversations]
    chat = FakeChat(delay=0.01)
    asyncio.run(converse_all(conversations, records, chat, concurrency=2))
    assert chat.most_in_flight == 2
    assert len(chat.sent) == 15
    for c, conversation in enumerate(conversations):
        users = [m["content"] for m in conversation.history if m["role"] == "user"]
        assert users == [f"c{c}t0", f"c{c}t1", f"c{c}t2"], "a conversation's turns go in order"


def test_every_turn_of_a_conversation_goes_to_its_replica() -> None:
    """Session affinity: a conversation's history is cached on the replica that answered it."""
    conversations = [Conversation([f"c{c}t{t}" for t in range(3)], replica=f"http://r{c % 2}") for c in range(4)]
    records = [[RequestRecord(0) for _ in range(3)] for _ in conversations]
    seen: dict[str, set[str]] = {}

    async def chat(messages: list[Message], record: RequestRecord) -> None:
        seen.setdefault(messages[-1]["content"][:2], set()).add(record.replica)
        await asyncio.sleep(0.001)
        record.text = "ok"

    asyncio.run(converse_all(conversations, records, chat, concurrency=3))
    assert seen == {f"c{c}": {f"http://r{c % 2}"} for c in range(4)}
    assert all(r.replica == conversation.replica for conversation, turns in zip(conversations, records)
               for r in turns)


def test_think_time_separates_the_turns_of_a_conversation() -> None:
    records = [RequestRecord(i) for i in range(3)]
    asyncio.run(converse(Conversation(["a", "b", "c"]), records, FakeChat(), think_time_s=0.05))
    gaps = [b.scheduled_at - a.scheduled_at for a, b in zip(records, records[1:])]
    assert all(gap >= 0.05 for gap in gaps)


@pytest.mark.parametrize(("changes", "message"), [
    ({"endpoint": "completions"}, "chat endpoint"),
    ({"request_rate": 2.0}, "closed loop"),
    ({"turns": 0}, "turns must be 1 to"),
    ({"turns": MAX_TURNS + 1}, "turns must be 1 to"),
    ({"think_time_s": -1.0}, "think_time_s must be 0 or more"),
    ({"shared_prefix_len": 8}, "shared_prefix_len does not apply"),
])
def test_invalid_multi_turn_workloads_name_the_problem(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        MultiTurnWorkload(name="chat", **changes)


def test_the_turns_and_think_time_are_part_of_the_workload_key() -> None:
    base = MultiTurnWorkload(name="chat", turns=4)
    assert base.key == MultiTurnWorkload(name="other", turns=4, repeats=5).key
    assert base.key != base.with_(turns=3).key
    assert base.key != base.with_(think_time_s=0.5).key
    assert "4 turns" in base.describe()


def test_per_turn_metrics_carry_budgets() -> None:
    assert parse_budget("turn3_ttft_p50", "<= baseline * 1.2").kind == "relative"
    assert parse_budget("turn2_cached_share", ">= 0.5").op == ">="
    with pytest.raises(UsageError, match="unknown metric"):
        parse_budget(f"turn{MAX_TURNS + 1}_ttft_p50", "<= 10 ms")


def test_jsonl_conversations_keep_the_user_turns_and_drop_the_assistant_ones(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "u1"},
                          {"role": "assistant", "content": "recorded answer"}, {"role": "user", "content": "u2"},
                          {"role": "assistant", "content": "another"}, {"role": "user", "content": "u3"}]},
            {"messages": [{"role": "user", "content": "only"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    conversations = load_conversations(path, count=4, max_turns=2, seed=0)
    by_first = {c.user_turns[0]: c for c in conversations}
    assert by_first["u1"].user_turns == ["u1", "u2"], "user turns in order, at most max_turns"
    assert by_first["u1"].history == [{"role": "system", "content": "sys"}]
    assert by_first["only"].user_turns == ["only"] and by_first["only"].history == []
    assert len(conversations) == 4, "the file's two rows cycle"
    conversations[0].add_reply(0, "x")
    assert conversations[2].history != conversations[0].history, "each conversation has a history of its own"


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "x"}', "needs \"messages\""),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "no user turn"),
    ("[1, 2]", "not a JSON object"),
])
def test_bad_conversation_rows_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=message):
        load_conversations(path, count=1, max_turns=4, seed=0)


def turn_record(index: int, prompt: int, cached: int | None, ttft: float) -> RequestRecord:
    """A hand-made turn: exact figures no real server gives (test double of a streamed answer)."""
    return RequestRecord(index, sent_at=0.0, first_token_at=ttft, chunk_times=[ttft, ttft + 0.1], prompt_tokens=prompt,
                         output_tokens=2, cached_tokens=cached, text="r")


def conversation_run(cached: list[int | None], turn_cache: list[PrefixCacheCounts | None] | None = None,
                     run_counts: PrefixCacheCounts | None = None) -> ConversationRun:
    """Two conversations of two turns: prompts of 100 then 200 tokens, TTFT 0.1 s then 0.2 / 0.4 s."""
    records = [turn_record(0, 100, cached[0], 0.1), turn_record(1, 200, cached[1], 0.2),
               turn_record(2, 100, cached[2], 0.1), turn_record(3, 200, cached[3], 0.4)]
    return ConversationRun(records, 0.0, 2.0, prefix_cache=run_counts, turns=[0, 1, 0, 1], turn_cache=turn_cache or [])


def test_per_turn_metrics_from_the_usage_cached_tokens() -> None:
    values = turn_values(conversation_run([16, 112, 0, 128]))
    assert values["turn1_cached_share"] == pytest.approx(16 / 200)
    assert values["turn2_cached_share"] == pytest.approx(240 / 400)
    assert values["cached_share"] == pytest.approx(256 / 600)
    assert values["turn1_ttft_p50"] == pytest.approx(100.0)
    assert values["turn2_ttft_p50"] == pytest.approx(300.0)
    assert values["turn2_prompt_tokens"] == 200.0


def test_per_turn_shares_fall_back_to_counters_read_around_each_turn() -> None:
    counts = [PrefixCacheCounts(0, 100), PrefixCacheCounts(96, 200), PrefixCacheCounts(16, 100),
              PrefixCacheCounts(144, 200)]
    values = turn_values(conversation_run([None] * 4, counts, run_counts=PrefixCacheCounts(256, 600)))
    assert values["turn1_cached_share"] == pytest.approx(16 / 200)
    assert values["turn2_cached_share"] == pytest.approx(240 / 400)
    assert values["cached_share"] == pytest.approx(256 / 600), "the repetition's counters"


def test_without_usage_or_per_turn_counters_the_share_is_per_run_only() -> None:
    result = compute_run(conversation_run([None] * 4, run_counts=PrefixCacheCounts(300, 600)))
    assert "turn1_cached_share" not in result.values and "turn2_cached_share" not in result.values
    assert result["cached_share"] == pytest.approx(0.5) == result["prefix_cache_hit_rate"]
    assert result["turn2_ttft_p50"] == pytest.approx(300.0), "the per-turn latencies still are"
    assert result["completed"] == 4.0


def test_the_stream_parser_reads_the_cached_tokens_of_the_usage() -> None:
    record = RequestRecord(0)
    parser = StreamParser(record, chat=True)
    usage = {"prompt_tokens": 90, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 64}}
    events = [{"choices": [{"delta": {"content": "hi"}}]}, {"choices": [], "usage": usage}]
    parser.feed(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n", 1.0)
    parser.finish()
    assert (record.cached_tokens, record.prompt_tokens, record.text) == (64, 90, "hi")
    plain = RequestRecord(1)
    parser = StreamParser(plain, chat=True)
    parser.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}\n', 1.0)
    assert plain.cached_tokens is None, "not reported is not 0"


CLASS = "cpu-test-2c"
CHAT = MultiTurnWorkload(name="chat", num_requests=2, turns=2, repeats=3)


def chat_measurement(turn2_ttft: float = 0.2, turn1_cached: int = 0) -> Measurement:
    runs = []
    for jitter in (0.0, 0.01, -0.01):
        run = conversation_run([turn1_cached, 112, turn1_cached, 128])
        run.records[1].first_token_at = run.records[3].first_token_at = turn2_ttft + jitter
        runs.append(compute_run(run))
    return Measurement("suites/test_multiturn.py::test_t", "base", "m", CHAT, RepeatedResult(runs), "srv", {})


def test_per_turn_metrics_are_judged_against_their_baseline_like_any_other(tmp_path: Path) -> None:
    settings = BenchSettings(profile=PROFILES["cpu"], host_class=CLASS, baseline_dir=tmp_path, record=False,
                             missing="auto", policy=GatePolicy(), default_budgets={}, environment={})
    recorded = chat_measurement()
    baselines.write(tmp_path, recorded.baseline_key(CLASS), recorded.entry({}))
    budgets = parse_budgets({"turn2_ttft_p50": "<= baseline * 1.10", "turn2_cached_share": ">= 0.5"})
    for turn2_ttft, passed in ((0.2, True), (0.5, False)):
        current = chat_measurement(turn2_ttft)
        stored, _ = stored_baseline(settings, current)
        checks = {c.metric: c for c in judge(current, budgets, stored, settings)}
        assert checks["turn2_ttft_p50"].reference == pytest.approx(200.0)
        assert checks["turn2_ttft_p50"].passed is passed
        assert checks["turn2_cached_share"].passed, "240 of 400 tokens cached"


def test_a_first_turn_served_from_the_cache_makes_the_measurement_invalid() -> None:
    runs = WorkloadRuns(CHAT, [], template_tokens=20)
    assert cold_cache_problem(chat_measurement(turn1_cached=16), runs) is None, "within the template's frame"
    problem = cold_cache_problem(chat_measurement(turn1_cached=64), runs)
    assert problem and "64% of a repetition's first-turn prompt tokens" in problem and "--vllm-prompt-seed" in problem


@pytest.mark.parametrize("method", ["compare", "single_stream"])
def test_only_run_measures_conversations(method: str) -> None:
    refuse_multi_turn(Workload(name="single_shot"), method)
    with pytest.raises(UsageError, match=f"vllm_bench.{method} does not run multi-turn workloads.*vllm_bench.run"):
        refuse_multi_turn(CHAT, method)
