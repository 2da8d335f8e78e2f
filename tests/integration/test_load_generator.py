"""The load generator against a real server: exact prompt lengths, datasets, open loop, failures."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from pytest_vllm.load.runner import build_prompt_sets, forget_built_prompts, run_async, run_workload
from pytest_vllm.load.workload import Workload
from pytest_vllm.perf.metrics import compute

pytestmark = pytest.mark.integration


def tokens(server, text: str) -> list[int]:
    return server.tokenize(text)


@pytest.mark.parametrize("length", [16, 300, 1500])
def test_synthetic_prompts_have_exact_token_lengths(base_server, length: int) -> None:
    workload = Workload(input_len=length, num_requests=4, seed=length, repeats=3)
    sets = run_async(build_prompt_sets(base_server.url, base_server.model, workload))
    prompts = sets.runs[0]
    assert len(prompts) == 4 and len(sets.warmup) == 1 and len(sets.runs) == 3
    assert [len(tokens(base_server, p.text)) for p in prompts] == [length] * 4
    texts = [p.text for p in [*sets.warmup, *(p for run in sets.runs for p in run)]]
    assert len(set(texts)) == 13, "seeded but distinct prompts: no two sets share one"
    forget_built_prompts()
    again = run_async(build_prompt_sets(base_server.url, base_server.model, workload))
    assert [p.text for p in again.runs[1]] == [p.text for p in sets.runs[1]], "the same seed gives the same prompts"


def test_prompts_are_built_once_per_tokenizer_and_workload(base_server) -> None:
    """The two servers of a pair share a tokenizer: the second asks /tokenize only for its fingerprint."""
    forget_built_prompts()
    first = Workload(name="a", input_len=40, num_requests=3, concurrency=1, output_len=8, repeats=1)
    built = run_async(build_prompt_sets(base_server.url, base_server.model, first))
    before = tokenize_calls(base_server)
    again = run_async(build_prompt_sets(base_server.url, base_server.model,
                                        first.with_(concurrency=3, warmup_requests=1, output_len=16)))
    assert [p.text for p in again.runs[0]] == [p.text for p in built.runs[0]]
    assert tokenize_calls(base_server) - before == 1, "only the tokenizer fingerprint is asked for"
    other_name = run_async(build_prompt_sets(base_server.url, base_server.model, first.with_(name="b")))
    assert not {p.text for p in other_name.runs[0]} & {p.text for p in built.runs[0]}, (
        "another measurement draws prompts of its own: the server's prefix cache must not serve them")
    other_shape = run_async(build_prompt_sets(base_server.url, base_server.model, first.with_(input_len=41)))
    assert {len(tokens(base_server, p.text)) for p in other_shape.runs[0]} == {41}, "another shape is built anew"


def test_repetitions_miss_the_prefix_cache_and_a_rerun_of_the_same_prompts_hits_it(base_server) -> None:
    """The server's own counters: each repetition on prompts of its own is cold; the same workload
    sent again (what a repeated measurement name would do) is served from the cache."""
    workload = Workload(name="cold", input_len=300, output_len=2, num_requests=3, concurrency=3, repeats=3)
    cold = run_workload(base_server.url, base_server.model, workload).runs
    assert [r.prefix_cache.hit_rate for r in cold if r.prefix_cache] == [0.0, 0.0, 0.0]
    warm = run_workload(base_server.url, base_server.model, workload).runs
    assert all(r.prefix_cache and r.prefix_cache.hit_rate > 0.5 for r in warm)


def tokenize_calls(server) -> float:
    """/tokenize requests the server has answered (its Prometheus counter)."""
    calls = server.counter("http_requests_total", handler="/tokenize")
    assert calls is not None, "the server exports no per-handler request counter"
    return calls


def test_shared_prefix_prompts_share_their_first_tokens(base_server) -> None:
    workload = Workload(input_len=200, shared_prefix_len=160, num_requests=3)
    prompts = run_async(build_prompt_sets(base_server.url, base_server.model, workload)).runs[0]
    ids = [tokens(base_server, p.text) for p in prompts]
    assert all(len(i) == 200 for i in ids)
    assert ids[0][:150] == ids[1][:150] == ids[2][:150]
    assert ids[0][170:] != ids[1][170:]


def test_closed_loop_run_counts_exact_tokens(base_server) -> None:
    workload = Workload(input_len=64, output_len=12, num_requests=6, concurrency=3, repeats=1)
    run = run_workload(base_server.url, base_server.model, workload).runs[0]
    assert all(r.ok for r in run.records), [r.error for r in run.records]
    assert [r.prompt_tokens for r in run.records] == [64] * 6
    assert [r.output_tokens for r in run.records] == [12] * 6  # ignore_eos: exact output lengths
    assert all(len(r.chunk_times) >= 2 for r in run.records)
    result = compute(run)
    assert result["completed"] == 6 and result["output_throughput"] > 0 and result["tpot_p50"] > 0
    assert "num_preemptions" not in result.values, "no telemetry unless asked for"


def test_the_servers_telemetry_is_sampled_during_a_run(base_server) -> None:
    """Three requests at a time for a few seconds: the server's /metrics saw them run, in a KV cache
    far from full, with nothing queued or preempted. 96 tokens per request: with 24 the run was over
    before a sample in its middle once, under a full CI run's load (CI run of 8c74118: 2 samples, both idle)."""
    workload = Workload(input_len=64, output_len=96, num_requests=6, concurrency=3, repeats=1)
    run = run_workload(base_server.url, base_server.model, workload, telemetry_interval=0.2).runs[0]
    took = max(r.sent_at + (r.e2el or 0.0) for r in run.records) - min(r.sent_at for r in run.records)
    assert run.telemetry is not None and run.telemetry.samples >= 3, (run.telemetry, f"run took {took:.2f}s")
    values = compute(run).values
    assert 1 <= values["requests_running_peak"] <= 3
    assert 0 < values["kv_cache_usage_peak"] < 0.5 and values["kv_cache_usage_mean"] <= values["kv_cache_usage_peak"]
    assert values["requests_waiting_peak"] == 0 and values["num_preemptions"] == 0
    assert "spec_decode_acceptance" not in values, "no speculative decoding: absent, not 0"


def test_open_loop_keeps_its_schedule(base_server) -> None:
    workload = Workload(input_len=32, output_len=4, num_requests=8, concurrency=None, request_rate=4.0, repeats=1)
    run = run_workload(base_server.url, base_server.model, workload).runs[0]
    assert all(r.ok for r in run.records)
    result = compute(run)
    assert result["send_delay_p99"] < 50.0, "absolute-time scheduling: requests leave when they are due"


def test_chat_conversations_from_a_jsonl_dataset(base_server, tmp_path: Path) -> None:
    dataset = tmp_path / "chats.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {"prompt": "Name a color."},
    ]))
    workload = Workload(endpoint="chat", dataset=str(dataset), num_requests=2, output_len=8, concurrency=2,
                        repeats=1, ignore_eos=False)
    run = run_workload(base_server.url, base_server.model, workload).runs[0]
    assert all(r.ok for r in run.records), [r.error for r in run.records]
    assert any("Paris" in r.text for r in run.records)  # the rows in a seeded order


def test_failed_requests_are_recorded_not_hidden(base_server, tmp_path: Path) -> None:
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text(json.dumps({"prompt": "Hello"}))
    workload = Workload(dataset=str(dataset), output_len=4, num_requests=2, concurrency=2, repeats=1,
                        warmup_requests=0)
    run = run_workload(base_server.url, base_server.model + "-missing", workload).runs[0]
    assert all(not r.ok for r in run.records)
    assert all(r.error and r.error.startswith("HTTP 404") for r in run.records), [r.error for r in run.records]
    assert compute(run)["failed"] == 2
    with httpx.Client(base_url=base_server.url) as http:
        assert http.get("/health").status_code == 200
