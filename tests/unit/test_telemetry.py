"""Server telemetry from /metrics text: what is read, how repetitions are summed up, and that a
metric the server does not export stays absent (hand-written Prometheus text, in the format of
vLLM 0.32's /metrics: a test double for exact values)."""

from __future__ import annotations

from pytest_vllm.load.runner import RunResult
from pytest_vllm.perf.metrics import METRICS, compute
from pytest_vllm.server.telemetry import Sample, TelemetrySampler, combine, parse_sample, summarize


def metrics_text(running: float, waiting: float, kv: float, preemptions: float, spec: tuple[float, float] | None = None,
                 kv_name: str = "vllm:kv_cache_usage_perc") -> str:
    labels = '{engine="0",model_name="m"}'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{labels} {running}",
        "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{labels} {waiting}",
        "# TYPE vllm:num_requests_waiting_by_reason gauge",
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0',
        f"# TYPE {kv_name} gauge", f"{kv_name}{labels} {kv}",
        "# TYPE vllm:num_preemptions counter", f"vllm:num_preemptions_total{labels} {preemptions}",
        f"vllm:num_preemptions_created{labels} 1.79e+09",
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 4.0',
        f"vllm:e2e_request_latency_seconds_count{labels} 4.0", f"vllm:e2e_request_latency_seconds_sum{labels} 1.0",
    ]
    if spec is not None:
        lines += ["# TYPE vllm:spec_decode_num_accepted_tokens counter",
                  f"vllm:spec_decode_num_accepted_tokens_total{labels} {spec[0]}",
                  "# TYPE vllm:spec_decode_num_draft_tokens counter",
                  f"vllm:spec_decode_num_draft_tokens_total{labels} {spec[1]}"]
    return "\n".join(lines) + "\n"


def test_a_sample_reads_the_gauges_and_counters_and_nothing_else() -> None:
    sample = parse_sample(metrics_text(running=3, waiting=1, kv=0.25, preemptions=2))
    assert sample == Sample(kv_usage=0.25, running=3, waiting=1, preemptions=2)  # waiting_by_reason not summed in
    assert sample.in_flight == 4
    older = parse_sample(metrics_text(1, 0, 0.5, 0, kv_name="vllm:gpu_cache_usage_perc"))
    assert older.kv_usage == 0.5
    assert parse_sample("# TYPE other gauge\nother 1\n") == Sample() and Sample().in_flight is None


def test_a_repetition_keeps_peaks_means_and_counter_deltas() -> None:
    samples = [parse_sample(metrics_text(*row)) for row in
               [(0, 0, 0.0, 5, (10, 20)), (4, 2, 0.6, 5, (40, 60)), (2, 0, 0.2, 7, (70, 100))]]
    telemetry = summarize(samples)
    assert telemetry is not None and telemetry.samples == 3
    assert telemetry.kv_cache_usage_peak == 0.6 and abs(telemetry.kv_cache_usage_mean - 0.8 / 3) < 1e-12
    assert telemetry.requests_running_peak == 4 and telemetry.requests_waiting_peak == 2
    assert telemetry.num_preemptions == 2  # the counter's delta over the run, not its total
    assert telemetry.spec_decode_acceptance == 60 / 80
    assert summarize([]) is None


def test_absent_metrics_stay_absent_in_the_results() -> None:
    """No speculative decoding, or an older vLLM: the figures are missing, never 0."""
    telemetry = summarize([parse_sample(metrics_text(1, 0, 0.1, 0))] * 2)
    assert telemetry is not None and telemetry.spec_decode_acceptance is None
    values = compute(RunResult([], 0.0, 1.0, telemetry=telemetry)).values
    assert values["num_preemptions"] == 0 and "spec_decode_acceptance" not in values
    assert all(name in METRICS for name in telemetry.values()), "every figure is a metric with unit and direction"


def test_more_requests_on_the_server_than_the_workload_sends_is_another_clients_load() -> None:
    from pytest_vllm.load.workload import Workload
    from pytest_vllm.perf.gate import foreign_load
    from pytest_vllm.perf.metrics import BenchResult, RepeatedResult

    def result(running: float, waiting: float) -> RepeatedResult:
        return RepeatedResult([BenchResult({"requests_running_peak": running, "requests_waiting_peak": waiting})])

    closed = Workload(name="w", num_requests=8, concurrency=4, repeats=1)
    assert foreign_load(result(4, 3), closed) is None  # its own four, some queued at first
    assert foreign_load(result(6, 0), closed) == 6
    assert foreign_load(RepeatedResult([BenchResult({})]), closed) is None  # not exported: nothing to say
    assert foreign_load(result(9, 9), closed.with_(concurrency=None, request_rate=2.0)) is None  # open loop: no cap
    from pytest_vllm.load.workload import LongPrompts
    beside = closed.with_(long_prompts=LongPrompts(count=2))
    assert foreign_load(result(6, 0), beside) is None and foreign_load(result(7, 0), beside) == 7  # its long prompts


def test_counters_are_read_from_their_own_lines_only() -> None:
    from pytest_vllm.server.counters import counter_value

    text = metrics_text(running=3, waiting=1, kv=0.25, preemptions=7) + "\n".join([
        "# TYPE http_requests counter",
        'http_requests_total{handler="/tokenize",method="POST"} 5.0',
        'http_requests_total{handler="/metrics",method="GET"} 2.0',
        'http_requests_created{handler="/tokenize",method="POST"} 1.79e+09',
    ]) + "\n"
    assert counter_value(text, "vllm:num_preemptions") == 7  # the _total sample, not _created
    assert counter_value(text, "http_requests", handler="/tokenize") == 5
    assert counter_value(text, "http_requests") == 7
    assert counter_value(text, "vllm:prefix_cache_hits") is None  # not exported: absent, never 0


def test_replicas_read_as_one_server_counts_summed_kv_the_fullest() -> None:
    one = parse_sample(metrics_text(running=3, waiting=1, kv=0.20, preemptions=2))
    two = parse_sample(metrics_text(running=4, waiting=0, kv=0.70, preemptions=5))
    both = combine([one, two])
    assert (both.running, both.waiting, both.preemptions, both.kv_usage) == (7, 1, 7, 0.70)
    assert combine([one]) is one
    # A figure one replica lacks is absent for the role: a partial sum would read as a drop.
    assert combine([one, Sample(kv_usage=0.9, running=1.0)]).waiting is None


def test_a_sampler_of_several_replicas_samples_every_one() -> None:
    """Two local HTTP servers stand in for two replicas' /metrics (a test double: exact values);
    the second answers 503 once, and that tick is dropped whole."""
    import http.server
    import threading

    texts = [metrics_text(running=2, waiting=0, kv=0.1, preemptions=0),
             metrics_text(running=3, waiting=2, kv=0.6, preemptions=4)]
    fail_once = threading.Event()

    def handler(index: int) -> type[http.server.BaseHTTPRequestHandler]:
        class Metrics(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if index == 1 and not fail_once.is_set():
                    fail_once.set()
                    self.send_response(503)
                    self.end_headers()
                    return
                body = texts[index].encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass
        return Metrics

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(i)) for i in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sampler = TelemetrySampler([f"http://127.0.0.1:{s.server_address[1]}" for s in servers], interval=0.05)
        sampler.start()
        import time
        time.sleep(0.3)
        telemetry = sampler.stop()
    finally:
        for server in servers:
            server.shutdown()
    assert telemetry is not None and fail_once.is_set()
    assert telemetry.requests_running_peak == 5 and telemetry.requests_waiting_peak == 2
    assert telemetry.kv_cache_usage_peak == 0.6 and telemetry.num_preemptions == 0
    # Each replica's own figures over the same ticks, by URL: the second one is the one that queued.
    first, second = (sampler.by_replica[f"http://127.0.0.1:{s.server_address[1]}"] for s in servers)
    assert (first.requests_waiting_peak, first.kv_cache_usage_peak, first.samples) == (0, 0.1, telemetry.samples)
    assert (second.requests_waiting_peak, second.kv_cache_usage_peak) == (2, 0.6)


def test_one_server_has_no_per_replica_telemetry() -> None:
    """Nothing listens on the URL (no double needed): no tick is read, and nothing is split."""
    sampler = TelemetrySampler(["http://127.0.0.1:9"], interval=0.05).start()
    assert sampler.stop() is None and sampler.by_replica == {}


def test_prefix_cache_counters_of_replicas_are_summed_and_absent_if_one_lacks_them() -> None:
    """httpx's MockTransport stands in for two replicas' /metrics (a test double: exact counts)."""
    import asyncio

    import httpx

    from pytest_vllm.server.counters import read_summed_prefix_cache

    def replica(hits: int | None, queries: int) -> httpx.AsyncClient:
        lines = ["# TYPE vllm:prefix_cache_queries counter", f'vllm:prefix_cache_queries_total{{engine="0"}} {queries}']
        if hits is not None:
            lines += ["# TYPE vllm:prefix_cache_hits counter", f'vllm:prefix_cache_hits_total{{engine="0"}} {hits}']
        text = "\n".join(lines) + "\n"
        return httpx.AsyncClient(base_url="http://r", transport=httpx.MockTransport(lambda _: httpx.Response(200,
                                                                                                          text=text)))

    async def read(*clients: httpx.AsyncClient):
        return await read_summed_prefix_cache(list(clients))

    both = asyncio.run(read(replica(30, 100), replica(12, 50)))
    assert both is not None and (both.hits, both.queries) == (42, 150)
    assert asyncio.run(read(replica(30, 100), replica(None, 50))) is None
