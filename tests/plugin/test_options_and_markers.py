"""The plugin as users meet it: --help, --markers, --fixtures, marker resolution, usage errors.

These run pytest in a subprocess (pytester) with a model path that is never booted: every check
here must answer before any server starts.
"""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def model_dir(pytester: pytest.Pytester) -> str:
    """A stand-in model path: these tests never boot, so no weights are needed."""
    return str(pytester.mkdir("some-model"))


def test_help_lists_the_vllm_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines([
        "vLLM serving gates (pytest-vllm):",
        "*--gpu=PROFILE*",
        "*--gpu-force*",
        "*--base-model=MODEL*",
        "*--compressed-model=MODEL*",
        "*--vllm-url=*ROLE=*URL*",
        "*--vllm-startup-timeout=SECONDS*",
        "*--vllm-log-dir=DIR*",
    ])
    result.stdout.fnmatch_lines(["*vllm_gpu (string)*", "*vllm_base_model (string)*", "*vllm_url (args)*"])


def test_markers_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.vllm_server(role=None, env=None, **flags): boot the server*"])


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures")
    for name in ("base_server", "compressed_server", "vllm_server", "server_pair", "vllm_server_factory",
                 "vllm_client", "vllm_async_client", "base_async_client", "compressed_async_client"):
        result.stdout.fnmatch_lines([f"{name}*", "    *"])
    result.stdout.fnmatch_lines(["*The base model's vLLM server*"])


def test_markers_merge_module_class_function_closest_wins(pytester: pytest.Pytester, model_dir: str) -> None:
    pytester.makepyfile("""
        import pytest
        pytestmark = pytest.mark.vllm_server(max_num_seqs=8, enable_prefix_caching=True)

        class TestGroup:
            pytestmark = pytest.mark.vllm_server(max_num_seqs=4)

            @pytest.mark.vllm_server(max_num_seqs=2)
            def test_function_marker(self, base_server): pass

            def test_class_marker(self, base_server): pass

        def test_module_marker(base_server): pass
        def test_same_as_module(base_server): pass

        @pytest.mark.vllm_server(role="compressed", max_num_seqs=1)
        def test_role_scoped(base_server): pass
    """)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "--base-model", model_dir,
                                           "--compressed-model", model_dir)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    out = result.stdout.str()
    assert "vllm: 3 server configuration(s) planned" in out
    assert "enable_prefix_caching=True, max_model_len=2048, max_num_seqs=2)" in out
    assert "max_num_seqs=4)" in out
    # the module marker spec is shared by three tests (the role-scoped marker does not touch base)
    result.stdout.fnmatch_lines(["*max_num_seqs=8)*, 3 test(s)"])


def test_misspelled_flag_fails_fast_naming_the_flag(pytester: pytest.Pytester, model_dir: str) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.vllm_server(max_num_seqz=8)
        def test_x(base_server): pass
    """)
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--base-model", model_dir)
    elapsed = time.monotonic() - started
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "max_num_seqz" in err and "did you mean --max-num-seqs" in err, err
    assert "test_misspelled_flag_fails_fast_naming_the_flag.py::test_x" in err
    assert "booting" not in result.stdout.str()
    print(f"usage error after {elapsed:.1f}s")
    assert elapsed < 30  # a boot alone takes over 40 s on this machine


def test_malformed_flag_value_is_a_usage_error(pytester: pytest.Pytester, model_dir: str) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.vllm_server(dtype="float33", max_num_seqs="many")
        def test_x(vllm_server): pass
    """)
    result = pytester.runpytest_subprocess("--base-model", model_dir, "--compressed-model", model_dir)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'dtype' (--dtype) must be one of*got 'float33'*",
                                 "*'max_num_seqs' (--max-num-seqs) takes an integer; got 'many'*"])


def test_gpu_profile_that_is_not_this_machine_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--gpu", "h100")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpu h100 was asked for, but this machine has no GPU*--gpu-force*"])


def test_unknown_gpu_profile_lists_known_ones(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--gpu", "tpu9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gpu 'tpu9' is not a known profile; choose one of: cpu, *h100*"])


def test_pyproject_table_sets_options_and_rejects_unknown_keys(pytester: pytest.Pytester, model_dir: str) -> None:
    pytester.makepyfile("""
        def test_x(vllm_session):
            assert vllm_session.config.startup_timeout == 123.0
            assert vllm_session.config.base_model.endswith("some-model")
    """)
    pytester.makefile(".toml", pyproject=f'[tool.pytest_vllm]\nstartup_timeout = 123\nbase_model = "{model_dir}"\n')
    assert pytester.runpytest_subprocess().ret == 0
    pytester.makefile(".toml", pyproject='[tool.pytest_vllm]\nstartup_timout = 123\n')
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown key(s) startup_timout*"])


def test_cli_beats_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nvllm_startup_timeout = 50\n")
    pytester.makepyfile("""
        def test_x(vllm_session, pytestconfig):
            expected = float(pytestconfig.getoption("vllm_startup_timeout") or 50)
            assert vllm_session.config.startup_timeout == expected
    """)
    assert pytester.runpytest_subprocess().ret == 0
    assert pytester.runpytest_subprocess("--vllm-startup-timeout", "7").ret == 0


def test_missing_embedded_models_say_how_to_build_them(pytester: pytest.Pytester, tmp_path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("def test_x(base_server): pass")
    monkeypatch.setenv("PYTEST_VLLM_CACHE", str(tmp_path / "empty-cache"))
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*embedded model smollm2-135m-instruct is not usable*make models*"])


def test_unreachable_remote_server_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(base_server): pass")
    result = pytester.runpytest_subprocess("--vllm-url", "http://127.0.0.1:9")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--vllm-url base=http://127.0.0.1:9: the server does not answer GET /v1/models*"])


def test_remote_mode_skips_tests_it_cannot_serve(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        def test_needs_compressed(compressed_server): pass

        @pytest.mark.vllm_server(max_num_seqs=2)
        def test_needs_flags(base_server): pass
    """)
    result = pytester.runpytest_subprocess("--vllm-url", "http://127.0.0.1:9", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*needs the compressed server; --vllm-url gave none*",
                                 "*needs a base server booted with its vllm_server flags*"])


def test_unknown_budget_metric_fails_at_collection_listing_valid_names(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.vllm_budget(ttft_median="<= baseline * 1.1")
        def test_x(): pass

        @pytest.mark.vllm_pair_budget(output_throughput=">= 100 tok/s")
        def test_y(): pass
    """)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: unknown metric 'ttft_median' in a budget; valid metrics: *ttft_p50*",
                                 "*test_y: pair budget output_throughput='>= 100 tok/s': write a ratio*"])


def test_perf_pair_marker_serves_the_perf_shape_and_other_tests_the_runs_models(pytester: pytest.Pytester) -> None:
    checkout = pytester.mkdir("tokenizer-checkout")
    (checkout / "tokenizer.json").write_text("{}")
    (checkout / "config.json").write_text('{"vocab_size": 49152}')
    pytester.makepyfile("""
        import pytest

        @pytest.mark.vllm_perf_pair
        def test_perf(server_pair): pass

        def test_other(base_server): pass
    """)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "--gpu", "h200", "--gpu-force", "--base-model",
                                           str(checkout), "--vllm-perf-model", "llama-8b")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    out = result.stdout.str()
    assert "vllm: 3 server configuration(s) planned" in out
    result.stdout.fnmatch_lines(["*base server: */tokenizer-checkout (gpu_memory_utilization=0.42) *, 1 test(s)"])
    result.stdout.fnmatch_lines([
        "*base server: */llama-8b-shape-tokenizer-checkout (dtype='bfloat16', gpu_memory_utilization=0.42, "
        "load_format='dummy') *, 1 test(s)",
        "*compressed server: */llama-8b-shape-tokenizer-checkout (dtype='bfloat16', gpu_memory_utilization=0.42, "
        "load_format='dummy', quantization='fp8') *, 1 test(s)",
        "vllm: 1 perf test(s) serve the perf pair: --vllm-perf-model llama-8b -> llama-8b",
    ])


def test_where_the_perf_pair_is_the_runs_pair_its_tests_share_the_runs_servers(pytester: pytest.Pytester) -> None:
    """The CPU profile's perf pair is the run's own: its tests join the run's server groups, so the
    pair boots once (before, they formed a group of their own, and the pair booted again after the
    groups between them: 2 minutes on an avx2-only host)."""
    for name in ("base-checkout", "compressed-checkout"):
        checkout = pytester.mkdir(name)
        (checkout / "tokenizer.json").write_text("{}")
        (checkout / "config.json").write_text('{"vocab_size": 49152}')
    pytester.makepyfile("""
        import pytest

        @pytest.mark.vllm_perf_pair
        def test_perf(server_pair): pass

        @pytest.mark.vllm_server(max_model_len=512)
        def test_between(base_server): pass

        def test_other(server_pair): pass
    """)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "--gpu", "cpu", "--base-model",
                                           str(pytester.path / "base-checkout"), "--compressed-model",
                                           str(pytester.path / "compressed-checkout"), "-p", "no:randomly")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert "vllm: 3 server configuration(s) planned" in result.stdout.str()
    result.stdout.fnmatch_lines(["*base server: */base-checkout (dtype='float32', max_model_len=2048) *, 2 test(s)",
                                 "*compressed server: */compressed-checkout * 2 test(s)"])
    order = [line for line in result.stdout.lines if "::" in line]
    between = order.index("test_where_the_perf_pair_is_the_runs_pair_its_tests_share_the_runs_servers.py::test_between")
    assert between in (0, 2), f"the pair's tests are not next to each other: {order}"
