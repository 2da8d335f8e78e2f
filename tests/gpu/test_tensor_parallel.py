"""Multi-GPU by flags: tensor parallelism through the vllm_server marker.

Runs on a machine with 2 or more GPUs (e.g. `pytest tests/gpu --gpu h200`) and skips elsewhere.
Pipeline parallelism and Ray pass through the same way: pipeline_parallel_size=2,
distributed_executor_backend="ray" (see the README).
"""

from __future__ import annotations

import pytest

from pytest_vllm.gpu import detect_device
from pytest_vllm.load.workload import Workload

pytestmark = [
    pytest.mark.skipif(detect_device().count < 2, reason="needs a machine with 2 or more GPUs"),
    pytest.mark.vllm_server(tensor_parallel_size=2),
]


def test_tensor_parallel_server_answers(base_server) -> None:
    assert base_server.spec is not None and base_server.spec.flag_dict["tensor_parallel_size"] == 2
    reply = base_server.client().chat.completions.create(
        model=base_server.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=16)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert base_server.is_healthy()
    log = base_server.log_path.read_text() if base_server.log_path else ""
    assert "world_size=2" in log or "tensor_parallel_size=2" in log, "vLLM did not start 2 tensor-parallel ranks"


def test_tensor_parallel_throughput(base_server, vllm_bench, vllm_session) -> None:
    """Measured and reported (not gated: one run on a lent machine is no baseline)."""
    concurrency = vllm_session.profile.concurrency_levels[-1]
    workload = Workload(name=f"tp2_c{concurrency}", num_requests=vllm_session.profile.requests_per_slot * concurrency,
                        input_len=128, output_len=48, concurrency=concurrency)
    measurement = vllm_bench.run(base_server, workload, gate=False)
    assert measurement.value("output_throughput") > 0
