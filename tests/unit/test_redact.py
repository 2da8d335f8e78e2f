"""The one redaction rule: secret names, bearer headers, URL credentials, registered values."""

from __future__ import annotations

import pytest

from pytest_vllm import redact
from pytest_vllm.conformance.replay import curl_line
from pytest_vllm.server.handle import ServerHandle
from pytest_vllm.server.process import LaunchPlan
from pytest_vllm.server.spec import ServerSpec


@pytest.mark.parametrize("name", ["hf_token", "api_key", "--api-key", "HF_TOKEN", "WANDB_API_KEY", "db_password",
                                  "client-secret", "apiKey", "AWS_SECRET_ACCESS_KEY"])
def test_secret_names(name: str) -> None:
    assert redact.is_secret_name(name)


@pytest.mark.parametrize("name", ["max_num_batched_tokens", "tokenizer", "tokenizer_mode", "ssl_keyfile",
                                  "VLLM_CPU_KVCACHE_SPACE", "served_model_name", "skip_tokenizer_init", "monkey"])
def test_names_that_are_not_secret(name: str) -> None:
    assert not redact.is_secret_name(name)


def test_numbers_and_switches_under_secret_names_are_shown() -> None:
    shown = redact.mapping({"long_prefill_token_threshold": 128, "return_tokens_as_token_ids": True,
                            "hf_token": "hf_abcdef", "api_key": "EMPTY", "VLLM_X_TOKEN_LIMIT": "64"})
    assert shown == {"long_prefill_token_threshold": 128, "return_tokens_as_token_ids": True,
                     "hf_token": redact.MASK, "api_key": "EMPTY", "VLLM_X_TOKEN_LIMIT": "64"}


def test_bearer_headers_and_url_credentials() -> None:
    assert redact.text("Authorization: Bearer sk-live-123") == "Authorization: Bearer ***"
    assert redact.text("GET https://alice:pa55@host:8000/v1 and http://bob@h/x") == \
        "GET https://***@host:8000/v1 and http://***@h/x"
    assert redact.text("http://127.0.0.1:8000/v1/models") == "http://127.0.0.1:8000/v1/models"


def test_registered_values_are_masked_anywhere() -> None:
    redact.register("planted-registered-value-1")
    redact.register("EMPTY")  # vLLM's "no key" is not a secret
    redact.register("ab")  # too short to mask without hiding unrelated text
    assert redact.text("vLLM says: bad key planted-registered-value-1!") == "vLLM says: bad key ***!"
    assert redact.text("EMPTY ab") == "EMPTY ab"


def test_argv_masks_the_value_of_secret_flags_only() -> None:
    argv = ["python", "-m", "vllm", "--hf-token", "hf_secretvalue", "--api-key=k3y-value",
            "--long-prefill-token-threshold", "128", "--tokenizer", "/m", "--max-num-batched-tokens", "512"]
    assert redact.argv(argv) == ["python", "-m", "vllm", "--hf-token", "***", "--api-key=***",
                                 "--long-prefill-token-threshold", "128", "--tokenizer", "/m",
                                 "--max-num-batched-tokens", "512"]


def test_a_spec_with_secret_flags_never_shows_them() -> None:
    spec = ServerSpec.create("base", "/models/m", {"hf_token": "hf_planted_in_spec", "max_num_seqs": 4},
                             {"HF_TOKEN": "hf_planted_in_env"})
    assert "hf_planted" not in spec.describe() and "max_num_seqs=4" in spec.describe()
    assert spec.recorded_flags == {"hf_token": redact.MASK, "max_num_seqs": 4}
    assert spec.flag_dict["hf_token"] == "hf_planted_in_spec"  # the server itself still gets it
    # Registered at creation: a log line or error message that echoes either value is masked.
    assert redact.text("token=hf_planted_in_spec env=hf_planted_in_env") == "token=*** env=***"


def test_launch_plan_shell_line_and_handle_repr() -> None:
    plan = LaunchPlan(argv=["vllm", "--hf-token", "hf_in_argv_1"], env={"VLLM_API_KEY": "key-in-env-1", "A": "1"},
                      api_key="key-in-env-1")
    assert plan.shell_line() == "A=1 VLLM_API_KEY='***' vllm --hf-token '***'"
    assert plan.headers == {"Authorization": "Bearer key-in-env-1"}  # what is sent is the real key
    handle = ServerHandle(role="base", url="http://h:1", model="m", api_key="key-in-handle-1")
    assert "key-in-handle-1" not in repr(handle)


def test_curl_lines_read_a_real_key_from_the_environment() -> None:
    line = curl_line("http://h/v1/completions", b"{}", api_key="sk-curl-secret")
    assert "sk-curl-secret" not in line and '-H "Authorization: Bearer $VLLM_API_KEY"' in line
    assert "'Authorization: Bearer EMPTY'" in curl_line("http://h/v1/completions", b"{}", api_key="EMPTY")
