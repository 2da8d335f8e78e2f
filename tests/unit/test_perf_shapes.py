"""The perf pair's production shapes: folders built from a tokenizer, the weights they serve, the
roofline they are judged against, and which pair each profile's perf suite serves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_vllm.config import RunConfig
from pytest_vllm.errors import UsageError
from pytest_vllm.gpu import PROFILES
from pytest_vllm.models import shapes
from pytest_vllm.models.pair import SHAPE_FLAGS, perf_model_choice, resolve_perf_role
from pytest_vllm.models.weights import dense_params, served_weight_bytes
from pytest_vllm.perf.roofline import bandwidth_of, roofline
from pytest_vllm.server.memory import GIB, MIB, pinned_kv_cache_bytes

H200_BYTES = 143771 * MIB
# Llama-3.1-8B dimensions with SmolLM2's 49,152-token vocabulary (untied embeddings): the figures
# the H200 runs printed (14.76 GB bf16, 7.79 GB with FP8 linear layers).
LLAMA8B_LINEAR = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
LLAMA8B_OTHER = 2 * 49152 * 4096 + 65 * 4096


def tokenizer_dir(tmp_path: Path, name: str = "tok") -> Path:
    """A checkout folder with a tokenizer: building a shape copies it, never parses it."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tokenizer.json").write_text('{"stand-in": true}')
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2,
                                                    "hidden_size": 576}))
    (folder / "model.safetensors").write_bytes(b"weights are never copied")
    return folder


def test_a_shape_takes_its_dimensions_and_the_tokenizers_vocabulary(tmp_path: Path) -> None:
    folder = shapes.build_shape(shapes.SHAPES["llama-8b"], tokenizer_dir(tmp_path), tmp_path / "models")
    config = json.loads((folder / "config.json").read_text())
    assert folder.name == "llama-8b-shape-tok"
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (4096, 32, 14336)
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (49152, 1, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer.json", "tokenizer_config.json"]


def test_a_current_shape_is_kept_and_a_changed_tokenizer_rebuilds_it(tmp_path: Path) -> None:
    source = tokenizer_dir(tmp_path)
    folder = shapes.build_shape(shapes.SHAPES["llama-1b"], source, tmp_path / "models")
    stamp = (folder / "config.json").stat().st_mtime_ns
    os.utime(folder / "config.json", ns=(stamp - 10**9, stamp - 10**9))
    assert shapes.build_shape(shapes.SHAPES["llama-1b"], source, tmp_path / "models") == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp - 10**9  # not rewritten
    (source / "tokenizer.json").write_text('{"another": true}')
    shapes.build_shape(shapes.SHAPES["llama-1b"], source, tmp_path / "models")
    assert (folder / "tokenizer.json").read_text() == '{"another": true}'
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_checkout_without_a_tokenizer_or_vocabulary_is_a_usage_error_naming_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="holds no tokenizer.*--vllm-perf-model user"):
        shapes.build_shape(shapes.SHAPES["llama-8b"], empty, tmp_path / "models")
    source = tokenizer_dir(tmp_path)
    (source / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="no vocab_size.*--vllm-perf-model user"):
        shapes.build_shape(shapes.SHAPES["llama-8b"], source, tmp_path / "models")
    with pytest.raises(UsageError, match="llama-8b, llama-3b, llama-1b"):
        shapes.shape_named("llama-70b")


def test_weight_bytes_of_the_8b_shape_in_bf16_and_online_fp8(tmp_path: Path) -> None:
    folder = shapes.build_shape(shapes.SHAPES["llama-8b"], tokenizer_dir(tmp_path), tmp_path / "models")
    params = dense_params(json.loads((folder / "config.json").read_text()))
    assert params is not None and (params.linear, params.other) == (LLAMA8B_LINEAR, LLAMA8B_OTHER)
    assert served_weight_bytes(str(folder), SHAPE_FLAGS) == 2 * (LLAMA8B_LINEAR + LLAMA8B_OTHER) == 14_764_482_560
    assert served_weight_bytes(str(folder), {**SHAPE_FLAGS, "quantization": "fp8"}) == 7_785_160_704
    assert served_weight_bytes(str(folder), {**SHAPE_FLAGS, "quantization": "awq"}) is None  # not an online scheme


def test_real_weights_count_their_files_and_mixtures_of_experts_are_not_estimated(tmp_path: Path) -> None:
    source = tokenizer_dir(tmp_path)
    assert served_weight_bytes(str(source), {}) == len(b"weights are never copied")
    (source / "config.json").write_text(json.dumps({"num_local_experts": 8, "hidden_size": 4096}))
    assert served_weight_bytes(str(source), {"load_format": "dummy"}) is None


def test_random_weights_get_a_fixed_kv_cache_from_their_config(tmp_path: Path) -> None:
    folder = shapes.build_shape(shapes.SHAPES["llama-8b"], tokenizer_dir(tmp_path), tmp_path / "models")
    flags = {**SHAPE_FLAGS, "gpu_memory_utilization": 0.42}
    kv = pinned_kv_cache_bytes(str(folder), flags, H200_BYTES)
    # The H200 runs: "KV cache fixed at 39.8 GiB of its share"; FP8 is sized as unquantized.
    assert kv is not None and 39.7 * GIB < kv < 39.9 * GIB
    assert pinned_kv_cache_bytes(str(folder), {**flags, "quantization": "fp8"}, H200_BYTES) == kv


def test_bandwidth_table_matches_the_drivers_names() -> None:
    assert bandwidth_of("NVIDIA H200") == pytest.approx(4.8e12)
    assert bandwidth_of("NVIDIA H100 80GB HBM3") == pytest.approx(3.35e12)
    assert bandwidth_of("NVIDIA H100 PCIe") == pytest.approx(2.0e12)
    assert bandwidth_of("NVIDIA A100-SXM4-80GB") == pytest.approx(2.039e12)
    assert bandwidth_of("NVIDIA L40S") == pytest.approx(0.864e12)
    assert bandwidth_of("NVIDIA L4") == pytest.approx(0.3e12)
    assert bandwidth_of("Intel(R) Xeon(R) Platinum 8581C CPU") is None


def test_roofline_share_is_the_floor_over_the_measured_tpot() -> None:
    found = roofline("NVIDIA H200", 14_764_482_560, 4.552)  # machine 1's bf16 single stream
    assert found is not None
    assert found.floor_ms == pytest.approx(3.076, abs=0.001)
    assert found.share == pytest.approx(0.676, abs=0.001)
    assert "68% of the bandwidth limit" in found.describe()
    assert roofline("NVIDIA H200", None, 4.5) is None
    assert roofline("a CPU", 10**9, 4.5) is None


def test_perf_model_auto_is_the_users_pair_else_a_shape_on_gpus_and_the_embedded_pair_on_cpu() -> None:
    assert perf_model_choice("auto", None, PROFILES["h200"]) == shapes.DEFAULT_SHAPE
    assert perf_model_choice("auto", None, PROFILES["cpu"]) == "embedded"
    assert perf_model_choice("auto", "org/model", PROFILES["h200"]) == "user"
    assert perf_model_choice("llama-3b", "org/model", PROFILES["h200"]) == "llama-3b"


def test_a_shape_serves_random_weights_and_its_online_fp8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tokenizer_dir(tmp_path)
    monkeypatch.setenv("PYTEST_VLLM_CACHE", str(tmp_path / "cache"))
    base = resolve_perf_role("base", "llama-8b", str(source), None, PROFILES["h200"])
    compressed = resolve_perf_role("compressed", "llama-8b", str(source), "ignored", PROFILES["h200"])
    with pytest.raises(UsageError, match="needs online quantization.*--vllm-perf-model embedded or user"):
        resolve_perf_role("base", "llama-8b", str(source), None, PROFILES["cpu"])
    assert base.model == compressed.model == str(tmp_path / "cache" / "models" / "llama-8b-shape-tok")
    assert base.flags == {"load_format": "dummy", "dtype": "bfloat16"}
    assert compressed.flags == {"load_format": "dummy", "dtype": "bfloat16", "quantization": "fp8",
                                "served_model_name": "llama-8b-shape-tok-fp8"}


def test_perf_model_option_values_are_checked(tmp_path: Path) -> None:
    assert RunConfig.from_values(tmp_path, {}, {}).perf_model == "auto"
    assert RunConfig.from_values(tmp_path, {"perf_model": "LLAMA-1B"}, {}).perf_model == "llama-1b"
    with pytest.raises(UsageError, match="must be one of auto, user, embedded, llama-8b"):
        RunConfig.from_values(tmp_path, {"perf_model": "llama-70b"}, {})
    with pytest.raises(UsageError, match="no --base-model was given: pass --base-model MODEL"):
        RunConfig.from_values(tmp_path, {"perf_model": "user"}, {})


def test_workload_sizes_follow_the_concurrency() -> None:
    h200, cpu = PROFILES["h200"], PROFILES["cpu"]
    assert [h200.requests_at(c) for c in h200.concurrency_levels] == [16, 256, 512, 1024]
    assert [cpu.requests_at(c) for c in cpu.concurrency_levels] == [3, 12]  # the recorded CPU workloads
    assert (h200.repeats, cpu.repeats) == (3, 5)


def test_the_gpu_long_prompts_fit_every_shapes_context_and_one_engine_step() -> None:
    """The chunked-prefill test's GPU long prompts (with their output tokens) fit a shape's context,
    and a whole one fits vLLM's default GPU step budget of 8,192 tokens, so the base server is the
    unchunked reference: 8,192-token prompts were refused on an H200 (context 8,192, plus one output)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "suites" / "test_perf.py"
    spec = importlib.util.spec_from_file_location("suite_perf_for_unit_test", path)
    assert spec is not None and spec.loader is not None
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    long_prompts = suite.long_prompts_beside_streams(PROFILES["h200"]).long_prompts
    assert long_prompts is not None
    for shape in shapes.SHAPES.values():
        context = shape.config({"vocab_size": 49152})["max_position_embeddings"]
        assert long_prompts.input_len + long_prompts.output_len <= context, shape.name
    assert long_prompts.input_len <= 8192
    assert long_prompts.input_len > 4 * suite.CHUNKED_PREFILL_TOKENS["gpu"]
