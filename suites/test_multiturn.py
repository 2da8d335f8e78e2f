"""Multi-turn sessions: conversations whose every turn resends the history with the server's own
replies, so that the prefix cache serves a growing share of each turn's prompt.

Single-shot prompts never show it (vllm#54783: ShareGPT sent as single prompts sees 0% cache
reuse). The base server only: the share is a property of the prefix cache, which both servers
run alike, and on a 2-core CPU the test stays within a minute. One conversation at a time, so the
share of every turn comes from the server's counters read around it where the server does not
report ``usage.prompt_tokens_details.cached_tokens`` (vLLM: ``--enable-prompt-tokens-details``,
not set on the suites' servers so that they stay the ones the other suites use).
"""

from __future__ import annotations

import pytest

from pytest_vllm.load.sessions import MultiTurnWorkload

TURNS = 4


def conversations() -> MultiTurnWorkload:
    # vLLM's CPU backend caches whole blocks of 128 tokens (GPUs: 16), so a turn must add more than
    # a block for the next one to find more of its prompt cached: 112-token user turns and 16-token
    # replies grow the prompt by 139 tokens a turn (the chat template's frames included): 142, 281,
    # 420, 559 tokens. (With 48-token user turns the second turn's 153 tokens found no whole block
    # of the first's 78 + 16 cached: 0%, 0%, 56%, 42%.)
    return MultiTurnWorkload(name="chat_4_turns", num_requests=2, turns=TURNS, input_len=112, output_len=16,
                             concurrency=1, warmup_requests=1, repeats=3)


# Absolute budgets only, until baselines of this test are recorded (until then a relative budget is
# not judged on any class: no file of this test's exists under baselines/). The shares are the
# server's, not the host's speed: a prefix cache that stops serving conversations falls through the
# floors. The TTFT limit is an SLO a healthy server meets on the slowest class by far (0.3 s on this
# 2-core host), one that a hung or swapping one misses.
@pytest.mark.vllm_budget(output_throughput="off", ttft_p50="off", tpot_p50="off", turn2_cached_share=">= 0.3",
                         turn4_cached_share=">= 0.5", turn4_ttft_p50="<= 3 s")
def test_cached_share_rises_from_the_second_turn_on(base_server, vllm_bench) -> None:
    """Each turn's cached share above the one before it, from the second turn on; the first turn
    hits at most the chat template's frame (else the measurement is refused as warm). Per-turn
    TTFT and cached share land in the report's multi-turn table and in results.json."""
    measurement = vllm_bench.run(base_server, conversations())
    shares = [measurement.value(f"turn{turn}_cached_share") for turn in range(1, TURNS + 1)]
    ttfts = [measurement.value(f"turn{turn}_ttft_p50") for turn in range(1, TURNS + 1)]
    shown = ", ".join(f"turn {turn}: {share:.0%} cached, TTFT p50 {ms:.0f} ms"
                      for turn, (share, ms) in enumerate(zip(shares, ttfts), 1))
    assert all(later > earlier for earlier, later in zip(shares, shares[1:])), (
        f"the cached share should rise with every turn of a conversation: {shown}")
