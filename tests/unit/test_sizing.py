"""A slow host class (sizing.py): fewer perf repetitions and conformance examples, said in the header."""

from __future__ import annotations

import pytest

from pytest_vllm.conformance.profiles import get_profile
from pytest_vllm.gpu import PROFILES
from pytest_vllm.sizing import SLOW_PERF_REPEATS, sizing_for

CPU = PROFILES["cpu"]


@pytest.mark.parametrize("tier", ["avx2", "avx2emu", "baseisa"])
def test_a_cpu_class_without_avx512_is_sized_for_ci(tier: str) -> None:
    sizing = sizing_for(CPU, tier, remote=False)
    assert sizing.slow
    profile = sizing.apply(CPU)
    assert profile.repeats == SLOW_PERF_REPEATS < CPU.repeats
    assert profile.concurrency_levels == CPU.concurrency_levels  # only the repetitions change
    line = sizing.describe(profile)
    assert line is not None and f"ISA tier {tier}" in line and "3 repetitions" in line and "0.5x" in line


@pytest.mark.parametrize("tier", ["amx", "avx512vnni", "avx512bf16", "avx512"])
def test_avx512_classes_keep_the_full_sizes(tier: str) -> None:
    sizing = sizing_for(CPU, tier, remote=False)
    assert not sizing.slow and sizing.apply(CPU) is CPU and sizing.describe(CPU) is None
    assert sizing.conformance_scale == 1.0


def test_remote_servers_and_gpus_are_never_sized_by_this_hosts_cpu() -> None:
    assert not sizing_for(CPU, "avx2", remote=True).slow  # --vllm-url: the servers run elsewhere
    assert not sizing_for(PROFILES["h200"], "avx2", remote=False).slow


def test_the_conformance_budget_halves_on_a_slow_class_and_nightly_scales_from_it() -> None:
    scale = sizing_for(CPU, "avx2", remote=False).conformance_scale
    assert get_profile("ci").scaled(scale).examples(25) == 12  # round(12.5): banker's rounding
    assert get_profile("ci").scaled(scale).examples(1) == 1  # never below one example
    assert get_profile("nightly").scaled(scale).examples(25) == 125
    assert get_profile("ci").scaled(1.0) is get_profile("ci")


def test_a_slow_class_scores_every_other_passage_of_the_large_corpus_as_a_set_of_its_own() -> None:
    from pytest_vllm.accuracy.evalsets import resolve

    assert sizing_for(CPU, "avx2", remote=False).large_corpus_share == 0.5
    assert sizing_for(CPU, "amx", remote=False).large_corpus_share == 1.0

    corpus = resolve("docs_corpus")
    half = corpus.every(round(1 / 0.5))
    assert len(half.items) == (len(corpus.items) + 1) // 2 and half.items[1] == corpus.items[2]
    assert half.sha256 != corpus.sha256 and half.name == "docs_corpus (1 text in 2)"
    assert corpus.every(1) is corpus


def test_a_slow_class_scores_every_other_item_of_the_public_benchmark_samples() -> None:
    assert sizing_for(CPU, "avx2", remote=False).benchmark_sample_share == 0.5
    assert sizing_for(CPU, "avx512", remote=False).benchmark_sample_share == 1.0
    assert sizing_for(CPU, "avx2", remote=True).benchmark_sample_share == 1.0
    assert "public benchmark samples 0.5x" in (sizing_for(CPU, "avx2", remote=False).describe(CPU) or "")
    from pytest_vllm.accuracy.evalsets import resolve

    for name in ("piqa_sample", "hellaswag_sample"):
        full = resolve(name)
        half = full.every(2)
        assert len(half.items) == (len(full.items) + 1) // 2 and half.sha256 != full.sha256
