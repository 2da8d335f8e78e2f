"""Loaded by the vLLM servers of a run with PYTEST_VLLM_EMULATE_AVX2=1 (see pytest_vllm/hostclass.py).

vLLM's CPU build picks its kernels by asking torch which ISA the CPU has; answering "no AVX-512"
makes it load its avx2 kernels (vllm._C_AVX2), and ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA
(set beside this file) keep torch's and oneDNN's own kernels at avx2 too. For sizing test runs
for avx2-only hosts on an AVX-512 one; never for recording baselines.
"""

try:
    import torch.cpu as _cpu

    for _name in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_avx512_vnni_supported",
                  "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        if hasattr(_cpu, _name):
            setattr(_cpu, _name, lambda: False)
except Exception:  # noqa: BLE001 - never break the interpreter's start
    pass
