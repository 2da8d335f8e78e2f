"""KV cache capacity arithmetic: bytes per token from a config, what a server says it allocated
(hand-written /metrics text in vLLM 0.32's format: a test double for exact values), requests held
at once, and the shortfall message naming the flags."""

from __future__ import annotations

from pathlib import Path

from pytest_vllm.server.kv_capacity import (
    AllocatedCache,
    Capacity,
    KVShape,
    capacity_of,
    kv_shape,
    read_allocated,
    shortfall,
)

SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "hidden_size": 576, "dtype": "float32"}
LLAMA_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
            "torch_dtype": "bfloat16"}


def info(tokens: int | None = 46592, memory: int | None = 2147483648, block: int = 128,
         concurrency: float = 22.75) -> str:
    labels = [f'block_size="{block}"', 'cache_dtype="auto"', 'engine="0"', f'kv_cache_max_concurrency="{concurrency}"']
    if memory is not None:
        labels.append(f'kv_cache_memory_bytes="{memory}"')
    if tokens is not None:
        labels.append(f'kv_cache_size_tokens="{tokens}"')
    return ("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
            "# TYPE vllm:cache_config_info gauge\n"
            f"vllm:cache_config_info{{{','.join(labels)}}} 1.0\n"
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\"} 0.0\n")


def test_bytes_per_token_from_the_config_and_the_cache_dtype() -> None:
    assert kv_shape(SMOLLM2, {"dtype": "float32"}) == KVShape(30, 3, 64, "float32")
    assert kv_shape(SMOLLM2, {"dtype": "float32"}).bytes_per_token == 46_080  # type: ignore[union-attr]
    llama = kv_shape(LLAMA_8B, {})  # head dim from hidden / heads, dtype from the config
    assert llama is not None and llama.bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    fp8 = kv_shape(LLAMA_8B, {"kv_cache_dtype": "fp8"})
    assert fp8 is not None and fp8.bytes_per_token == llama.bytes_per_token // 2
    assert kv_shape({"model_type": "mamba"}, {}) is None


def test_what_the_server_allocated_and_what_it_holds(tmp_path: Path) -> None:
    allocated = read_allocated(info())
    assert allocated == AllocatedCache(128, 46592, 2147483648, 22.75, "auto") and allocated.blocks == 364
    assert read_allocated("# TYPE other gauge\nother 1\n") is None
    (tmp_path / "config.json").write_text(__import__("json").dumps(SMOLLM2))
    capacity = capacity_of(info(), str(tmp_path), {"dtype": "float32"})
    assert capacity is not None and capacity.disagreement() is None
    assert capacity.requests_held(128 + 32) == 182  # two blocks of 128 a request
    assert capacity.requests_held(1024 + 4) == 40 and capacity.requests_held(2048) == 22
    # the size from the bytes alone, where a version says no token count
    bytes_only = capacity_of(info(tokens=None), str(tmp_path), {"dtype": "float32"})
    assert bytes_only is not None and bytes_only.tokens == 46592
    assert capacity_of(info(tokens=None), str(tmp_path / "hub-id"), {}) is None  # neither figure known


def test_a_size_the_shape_does_not_explain_is_named() -> None:
    wrong = Capacity(AllocatedCache(128, 93184, 2147483648, 45.5, "auto"), KVShape(30, 3, 64, "float32"))
    assert "allocated 93,184 tokens" in (wrong.disagreement() or "") and "46,592" in (wrong.disagreement() or "")


def test_a_cache_too_small_for_the_concurrency_names_the_flags() -> None:
    tiny = Capacity(AllocatedCache(128, 512, None, 1.0, "auto"), None)
    assert shortfall(tiny, 2, 160, gpu=False) is None
    cpu = shortfall(tiny, 4, 160, gpu=False)
    assert cpu is not None and "2 request(s) of 160 tokens" in cpu and "VLLM_CPU_KVCACHE_SPACE" in cpu
    gpu = shortfall(tiny, 4, 160, gpu=True)
    assert gpu is not None and "--gpu-memory-utilization" in gpu and "kv_cache_dtype" in gpu


def test_a_candidate_cache_must_grow_as_its_cost_per_token_shrinks() -> None:
    from pytest_vllm.server.kv_capacity import KVCapacityRatio

    fp8 = KVCapacityRatio(reference_tokens=46_592, candidate_tokens=93_184, cost_ratio=2.0)
    assert fp8.ratio == 2.0 and fp8.shortfall() is None
    assert fp8.shortfall(floor=1.9) is None
    starved = KVCapacityRatio(reference_tokens=46_592, candidate_tokens=46_592, cost_ratio=2.0)
    problem = starved.shortfall()
    assert problem is not None and "holds 1.00x" in problem and "less memory" in problem
    unknown_shape = KVCapacityRatio(reference_tokens=1000, candidate_tokens=1000, cost_ratio=None)
    assert unknown_shape.shortfall() is None
    below_floor = unknown_shape.shortfall(floor=1.5)
    assert below_floor is not None and "below the floor of 1.5x" in below_floor
