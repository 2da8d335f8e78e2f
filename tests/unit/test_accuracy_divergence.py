"""KL divergence with the top-k approximation on exact small distributions; agreement folding."""

from __future__ import annotations

import math

import pytest

from pytest_vllm.accuracy.agreement import AgreementResult, add_positions, compare_greedy
from pytest_vllm.accuracy.client import GreedyOutput, PositionLogprobs
from pytest_vllm.accuracy.divergence import kl_divergence, nearest_rank, perplexity, topk_kl
from pytest_vllm.accuracy.evalsets import resolve

P = [0.5, 0.25, 0.15, 0.10]
Q = [0.4, 0.30, 0.05, 0.25]


def logprobs(dist: list[float], tokens: list[int]) -> dict[int, float]:
    return {t: math.log(dist[t]) for t in tokens}


def test_full_kl_by_hand() -> None:
    expected = 0.5 * math.log(0.5 / 0.4) + 0.25 * math.log(0.25 / 0.3) + 0.15 * math.log(0.15 / 0.05) + \
        0.10 * math.log(0.10 / 0.25)
    assert kl_divergence(P, Q) == pytest.approx(expected)
    assert kl_divergence(P, P) == 0.0


def test_topk_kl_is_exact_when_both_sides_return_every_token() -> None:
    assert topk_kl(logprobs(P, [0, 1, 2, 3]), logprobs(Q, [0, 1, 2, 3])) == pytest.approx(kl_divergence(P, Q))


def test_topk_kl_is_exact_when_the_rest_is_one_token() -> None:
    # Shared {0, 1, 2}: the rest bucket is token 3 alone on both sides.
    assert topk_kl(logprobs(P, [0, 1, 2]), logprobs(Q, [0, 1, 2])) == pytest.approx(kl_divergence(P, Q))


def test_topk_kl_coarse_grains_onto_shared_tokens_plus_rest() -> None:
    # P's top-2 is {0, 1}; Q's top-2 is {0, 3}: only token 0 is known on both sides.
    got = topk_kl(logprobs(P, [0, 1]), logprobs(Q, [0, 3]))
    expected = 0.5 * math.log(0.5 / 0.4) + 0.5 * math.log(0.5 / 0.6)
    assert got == pytest.approx(expected)
    assert got <= kl_divergence(P, Q)  # merging tokens never increases KL


def test_topk_kl_of_identical_predictions_is_zero() -> None:
    assert topk_kl(logprobs(P, [0, 1]), logprobs(P, [0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_nearest_rank_percentile_and_perplexity() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 99) == 99.0
    assert nearest_rank(values, 100) == 100.0
    assert nearest_rank([3.0], 99) == 3.0
    assert math.isnan(nearest_rank([], 50))
    assert perplexity([math.log(0.5)] * 4) == pytest.approx(2.0)


def test_positions_fold_into_top1_kl_and_perplexity() -> None:
    corpus, prompts = resolve("agreement_corpus"), resolve("greedy_prompts")
    result = AgreementResult(corpus, prompts, top_k=4, greedy_top_k=2)
    base = [None, PositionLogprobs(0, math.log(P[0]), logprobs(P, [0, 1, 2, 3]), top1=0),
            PositionLogprobs(2, math.log(P[2]), logprobs(P, [0, 1, 2, 3]), top1=0)]
    compressed = [None, PositionLogprobs(0, math.log(Q[0]), logprobs(Q, [0, 1, 2, 3]), top1=0),
                  PositionLogprobs(2, math.log(0.05), {1: math.log(0.6), 2: math.log(0.05)}, top1=1)]
    add_positions(result, base, compressed)
    values = result.values()
    assert result.positions == 2
    assert values["top1_agreement"] == 0.5
    assert values["ppl_base"] == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.15)) / 2))
    assert values["ppl_ratio"] == pytest.approx(math.sqrt(0.5 * 0.15 / (0.4 * 0.05)))
    assert result.kl[0] == pytest.approx(kl_divergence(P, Q))


def test_greedy_check_at_the_first_difference() -> None:
    same = GreedyOutput((5, 6, 7), ({5: -0.1}, {6: -0.1}, {7: -0.1}))
    assert compare_greedy("a", same, same).mismatch_at is None
    near = GreedyOutput((5, 8, 9), ({5: -0.1}, {8: -0.6, 6: -0.8}, {9: -0.1}))
    base = GreedyOutput((5, 6, 7), ({5: -0.1}, {6: -0.7, 8: -0.9}, {7: -0.1}))
    check = compare_greedy("b", base, near)
    assert (check.mismatch_at, check.base_token, check.compressed_token, check.ok) == (1, 6, 8, True)
    far = GreedyOutput((5, 4, 9), ({5: -0.1}, {4: -0.2, 3: -0.5}, {9: -0.1}))
    check = compare_greedy("c", base, far)
    assert check.mismatch_at == 1 and not check.ok
    assert not check.base_in_compressed_top and not check.compressed_in_base_top


def test_prompt_logprobs_payload_is_read_as_vllm_writes_it() -> None:
    from pytest_vllm.accuracy.client import _positions, _token_id
    from pytest_vllm.server.handle import ServerHandle

    server = ServerHandle("base", "http://h:1", "m")
    # vLLM's completions answer with prompt_logprobs=2: position 0 has none; the prompt token is always
    # included, with its rank, even when it is outside the top-k.
    entries = [None,
               {"7": {"logprob": -0.5, "rank": 1, "decoded_token": "a"},
                "9": {"logprob": -1.5, "rank": 2, "decoded_token": "b"}},
               {"4": {"logprob": -6.0, "rank": 40, "decoded_token": "c"},
                "8": {"logprob": -0.2, "rank": 1, "decoded_token": "d"},
                "3": {"logprob": -2.0, "rank": 2, "decoded_token": "e"}}]
    positions = _positions([1, 7, 4], entries, top_k=2, server=server)
    assert positions[0] is None
    assert positions[1] is not None and positions[1].top1 == 7 and positions[1].logprob == -0.5
    assert positions[2] is not None and positions[2].token == 4 and positions[2].top1 == 8
    assert dict(positions[2].top) == {4: -6.0, 8: -0.2, 3: -2.0}
    assert _token_id("token_id:123") == 123
