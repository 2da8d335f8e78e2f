"""Multi-GPU by flags: tensor parallelism through the server flags of a marker or the factory.

Runs on a machine with 2 or more GPUs (e.g. `pytest tests/gpu --gpu h200`) and skips elsewhere.
Pipeline parallelism and Ray pass through the same way: pipeline_parallel_size=2,
distributed_executor_backend="ray" (see the README).

Tensor parallelism splits the attention heads across the GPUs, so a model whose head counts do
not divide by the GPU count cannot run with it (vLLM refuses at boot). The embedded SmolLM2-135M
has 9 query and 3 KV heads; for it the test serves a model of the same family and tokenizer with
8 and 4 heads and random weights (vLLM's ``load_format="dummy"``, as its own CI measures speed
without downloads): real tensor-parallel serving, but its text is noise, so the functional check
is exact token counts rather than the answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_vllm.gpu import detect_device
from pytest_vllm.load.workload import Workload

TP = 2

pytestmark = pytest.mark.skipif(detect_device().count < TP, reason=f"needs a machine with {TP} or more GPUs")


def heads_divide(config: dict, parts: int) -> bool:
    heads = config.get("num_attention_heads", 0)
    return heads % parts == 0 and config.get("num_key_value_heads", heads) % parts == 0


def even_heads_variant(model: Path, target: Path, parts: int) -> Path:
    """``model``'s tokenizer and config with head counts that divide by ``parts`` (head size kept),
    no weights: for ``load_format="dummy"``."""
    target.mkdir(parents=True, exist_ok=True)
    for item in model.iterdir():
        weights = "safetensors" in item.name or item.suffix == ".bin"
        if item.is_file() and not weights and item.name not in ("config.json", "pytest-vllm-manifest.json"):
            shutil.copy2(item, target / item.name)  # tokenizer and generation config
    config = json.loads((model / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    heads = 4 * parts
    config.update(num_attention_heads=heads, num_key_value_heads=parts * 2, head_dim=head_dim,
                  hidden_size=heads * head_dim)
    (target / "config.json").write_text(json.dumps(config, indent=1))
    return target


def test_tensor_parallel_server(vllm_server_factory, vllm_session, vllm_bench, tmp_path_factory) -> None:
    """Boot with tensor_parallel_size=2, check that both ranks serve, and measure throughput
    (reported, not gated: one run on a lent machine is no baseline)."""
    base = Path(vllm_session.role_model("base").model)
    config = json.loads((base / "config.json").read_text())
    if heads_divide(config, TP):
        server = vllm_server_factory(role="tp2", tensor_parallel_size=TP)
    else:
        variant = even_heads_variant(base, tmp_path_factory.mktemp("even-heads"), TP)
        server = vllm_server_factory(model=str(variant), role="tp2", tensor_parallel_size=TP, load_format="dummy")
    assert server.spec is not None and server.spec.flag_dict["tensor_parallel_size"] == TP

    reply = server.client().completions.create(model=server.model, prompt="The capital of France is",
                                               temperature=0, max_tokens=16, extra_body={"ignore_eos": True})
    assert reply.usage is not None and reply.usage.completion_tokens == 16
    if heads_divide(config, TP):
        assert "Paris" in reply.choices[0].text
    log = server.log_path.read_text() if server.log_path else ""
    assert f"tensor_parallel_size={TP}" in log or f"world_size={TP}" in log, f"vLLM did not start {TP} ranks"

    concurrency = min(64, vllm_session.profile.concurrency_levels[-1])  # a short run on a lent machine
    workload = Workload(name=f"tp{TP}_c{concurrency}", input_len=128, output_len=48, concurrency=concurrency,
                        num_requests=vllm_session.profile.requests_per_slot * concurrency)
    measurement = vllm_bench.run(server, workload, gate=False)
    vllm_session.say(f"tensor_parallel_size={TP}: {measurement.value('output_throughput'):.0f} output tok/s at "
                     f"concurrency {concurrency}, TPOT p50 {measurement.value('tpot_p50'):.2f} ms")
    assert measurement.value("output_throughput") > 0
    assert server.is_healthy()
