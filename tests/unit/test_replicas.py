"""Several replicas per role: --vllm-url lists, the balancer, the marker's replicas=N, the role's
handle over its replicas and the per-replica figures. Nothing boots (specs are checked against the
installed vLLM's parser); the integration test tests/integration/test_replica_servers.py serves real ones."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from pytest_vllm import redact
from pytest_vllm.config import OPTIONS_BY_NAME, RunConfig, coerce, parse_urls
from pytest_vllm.errors import UsageError
from pytest_vllm.load.balancer import LEAST_OUTSTANDING, ROUND_ROBIN, LeastOutstanding, RoundRobin, make_balancer
from pytest_vllm.load.client import RequestRecord
from pytest_vllm.perf.replicas import replica_shares
from pytest_vllm.server.handle import ServerHandle
from pytest_vllm.server.replicas import join_replicas, replica_of
from pytest_vllm.server.spec import MarkerFlags, ServerSpec, replica_count
from pytest_vllm.session import VLLMSession


# -- --vllm-url ROLE=URL1,URL2 -------------------------------------------------------------------
def test_a_role_of_several_replicas_keeps_their_order_and_its_first_as_the_roles_url() -> None:
    urls = parse_urls(("base=http://a:8000/v1, http://b:8000/", "compressed=http://c:8001"))
    assert urls.replicas_of("base") == ("http://a:8000", "http://b:8000")
    assert urls.base == "http://a:8000"
    assert urls.replicas_of("compressed") == ("http://c:8001",)


def test_a_plain_url_is_a_role_of_one_replica() -> None:
    urls = parse_urls(("http://a:8000",))
    assert urls.replicas_of("base") == ("http://a:8000",) and urls.replicas_of("compressed") == ()


def test_the_ini_twin_takes_the_same_lists() -> None:
    """pytest.ini's ``vllm_url = base=URL1,URL2 compressed=URL3`` (whitespace between entries)."""
    entries = coerce(OPTIONS_BY_NAME["url"], "base=http://a:1,http://b:2 compressed=http://c:3")
    assert parse_urls(entries).replicas_of("base") == ("http://a:1", "http://b:2")


@pytest.mark.parametrize("entry", ["base=http://a:1,,http://b:2", "base=http://a:1,", "base=,http://a:1"])
def test_an_empty_replica_entry_is_a_usage_error_naming_the_fix(entry: str) -> None:
    with pytest.raises(UsageError, match="empty entry.*URL1,URL2"):
        parse_urls((entry,))


def test_a_replica_listed_twice_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="twice; name each replica once"):
        parse_urls(("base=http://a:1,http://a:1/v1",))


def test_a_replica_that_is_no_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="http"):
        parse_urls(("base=http://a:1,b:2",))


def test_url_credentials_stay_out_of_errors_and_output() -> None:
    with pytest.raises(UsageError) as caught:
        parse_urls(("base=http://alice:s3cr3t-pw@a:1,http://alice:s3cr3t-pw@a:1",))
    assert "s3cr3t-pw" not in str(caught.value)
    # the password is registered: masked also where it shows up outside a URL
    assert "s3cr3t-pw" not in redact.text("connecting with s3cr3t-pw")


def test_the_balance_option_takes_its_two_policies_only(tmp_path: Path) -> None:
    assert RunConfig.from_values(tmp_path, {}, {}).balance == ROUND_ROBIN
    assert RunConfig.from_values(tmp_path, {"balance": "least_outstanding"}, {}).balance == LEAST_OUTSTANDING
    with pytest.raises(UsageError, match="round_robin, least_outstanding"):
        RunConfig.from_values(tmp_path, {"balance": "random"}, {})


# -- the balancer ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("replicas", "requests"), [(2, 7), (3, 10), (2, 1)])
def test_round_robin_counts_differ_by_at_most_one_in_any_stretch(replicas: int, requests: int) -> None:
    balancer = RoundRobin([f"http://r{i}" for i in range(replicas)])
    picks = [balancer.acquire() for _ in range(requests + 5)]
    for start in range(5):  # a stretch after a warmup that began the turn elsewhere
        counts = Counter(picks[start:start + requests])
        assert max(counts.values()) - min(counts.get(u, 0) for u in balancer.urls) <= 1


def test_least_outstanding_goes_to_the_replica_with_fewest_in_flight() -> None:
    balancer = LeastOutstanding(["http://a", "http://b"])
    first, second = balancer.acquire(), balancer.acquire()
    assert {first, second} == {"http://a", "http://b"}  # an idle pair is spread, not piled on one
    balancer.release(second)
    assert balancer.acquire() == second  # the one that finished takes the next, the busy one does not
    assert balancer.acquire() == first  # a tie again: the turn goes on
    assert balancer.outstanding == {first: 2, second: 1}


def test_least_outstanding_spreads_evenly_when_requests_finish_at_once() -> None:
    balancer = LeastOutstanding(["http://a", "http://b", "http://c"])
    counts: Counter[str] = Counter()
    for _ in range(9):
        url = balancer.acquire()
        counts[url] += 1
        balancer.release(url)
    assert set(counts.values()) == {3}


def test_a_balancer_needs_a_replica_and_a_known_policy() -> None:
    with pytest.raises(UsageError, match="at least one replica"):
        make_balancer(ROUND_ROBIN, [])
    with pytest.raises(UsageError, match="--vllm-balance"):
        make_balancer("random", ["http://a"])
    assert make_balancer(ROUND_ROBIN, ["http://a"]).acquire() == "http://a"


# -- a role's handle over its replicas ---------------------------------------------------------------
def handle(url: str, model: str = "m") -> ServerHandle:
    return ServerHandle(role="base", url=url, model=model, api_key="k")


def test_the_roles_handle_is_its_first_replica_carrying_all_of_them() -> None:
    role = join_replicas([handle("http://a"), handle("http://b")])
    assert role.url == "http://a" and role.replica_urls == ("http://a", "http://b")
    assert replica_of(role, 1).url == "http://b" and replica_of(role, 1).members == (replica_of(role, 1),)
    assert "2 replicas" in role.describe()
    with pytest.raises(UsageError, match="2 replica"):
        replica_of(role, 2)
    lone = handle("http://a")
    assert join_replicas([lone]) is lone and lone.replica_urls == ("http://a",)


def test_a_replica_serving_another_model_is_a_usage_error_naming_both() -> None:
    with pytest.raises(UsageError, match=r"serves 'm' but http://b serves 'other'.*same deployment"):
        join_replicas([handle("http://a"), handle("http://b", model="other")])


# -- vllm_server(replicas=N) --------------------------------------------------------------------------
def test_replicas_of_a_spec_are_distinct_servers_and_a_lone_spec_keeps_its_key() -> None:
    spec = ServerSpec.create("base", "m", {"max_num_seqs": 4})
    replicas = spec.as_replicas(2)
    assert len({s.key for s in replicas}) == 2 and spec.key not in {s.key for s in replicas}
    assert spec.as_replicas(1) == (spec,)
    # a lone server's key is the one recorded before replicas existed (its baselines stay found)
    import hashlib
    import json
    assert spec.key == hashlib.sha256(json.dumps(["base", "m", spec.flags, spec.env]).encode()).hexdigest()[:12]
    assert "replica 2" in replicas[1].describe()


def test_the_closest_replicas_marker_wins_per_role() -> None:
    module = MarkerFlags.from_kwargs({"replicas": 2}, "t")
    function = MarkerFlags.from_kwargs({"replicas": 3, "role": "compressed"}, "t")
    assert (replica_count("base", [module, function]), replica_count("compressed", [module, function])) == (2, 3)
    assert replica_count("base", []) == 1


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_a_replica_count_is_a_whole_number_of_at_least_one(value: object) -> None:
    with pytest.raises(UsageError, match="whole number of replicas"):
        MarkerFlags.from_kwargs({"replicas": value}, "t")


def test_a_booted_role_of_two_replicas_plans_two_servers(tmp_path: Path) -> None:
    session = VLLMSession(RunConfig(rootdir=tmp_path, gpu="cpu"))
    marker = MarkerFlags.from_kwargs({"replicas": 2}, "t")
    session.plan([("t::test", ("base",), [marker])])
    need = session.needs["t::test"]
    assert [s.replica for s in need.specs] == [0, 1] and need.specs_of("base") == need.specs
    assert session.replicas_for("base", [marker]) == 2


def test_more_replicas_than_the_pool_runs_at_once_is_a_usage_error(tmp_path: Path) -> None:
    session = VLLMSession(RunConfig(rootdir=tmp_path, gpu="cpu"))
    with pytest.raises(UsageError, match="4 servers at once.*role='base'"):
        session.plan([("t::test", ("base", "compressed"), [MarkerFlags.from_kwargs({"replicas": 2}, "t")])])


# -- per-replica figures --------------------------------------------------------------------------------
def record(index: int, replica: str, tokens: int = 10, error: str | None = None) -> RequestRecord:
    return RequestRecord(index=index, replica=replica, output_tokens=tokens, error=error)


def test_replica_shares_count_each_replicas_requests_and_throughput() -> None:
    turn = itertools.cycle(["http://a", "http://b"])
    runs = [[record(i, next(turn)) for i in range(5)], [record(i, next(turn)) for i in range(5)]]
    runs[1][0].error = "HTTP 500"
    shares = replica_shares(runs, durations=[2.0, 2.0])
    by_replica = {s.replica: s for s in shares}
    # run 1: a a a b b (a, b, a, b, a); run 2 starts on b: b a b a b, its first (b) failed
    assert (by_replica["http://a"].requests, by_replica["http://b"].requests) == (5, 5)
    assert (by_replica["http://a"].completed, by_replica["http://b"].completed) == (5, 4)
    assert by_replica["http://a"].output_throughput == pytest.approx(12.5)  # median of 30/2 and 20/2
    assert by_replica["http://b"].output_throughput == pytest.approx(10.0)  # median of 20/2 and 20/2


def test_replica_shares_carry_each_replicas_own_server_figures() -> None:
    """The peak over repetitions, preemptions summed; a replica never sampled shows none."""
    from pytest_vllm.server.telemetry import ServerTelemetry

    runs = [[record(0, "http://a"), record(1, "http://b"), record(2, "http://c")]] * 2
    telemetry = [{"http://a": ServerTelemetry(3, kv_cache_usage_peak=0.2, requests_waiting_peak=0, num_preemptions=0),
                  "http://b": ServerTelemetry(3, kv_cache_usage_peak=0.9, requests_waiting_peak=4, num_preemptions=2)},
                 {"http://a": ServerTelemetry(3, kv_cache_usage_peak=0.3, requests_waiting_peak=1, num_preemptions=0),
                  "http://b": ServerTelemetry(3, kv_cache_usage_peak=0.7, requests_waiting_peak=6, num_preemptions=1)}]
    shares = {s.replica: s for s in replica_shares(runs, [1.0, 1.0], telemetry)}
    assert (shares["http://a"].kv_cache_usage_peak, shares["http://a"].requests_waiting_peak) == (0.3, 1)
    assert (shares["http://b"].kv_cache_usage_peak, shares["http://b"].requests_waiting_peak,
            shares["http://b"].num_preemptions) == (0.9, 6, 3)
    assert shares["http://c"].kv_cache_usage_peak is None and shares["http://c"].num_preemptions is None
    assert shares["http://b"].to_json()["num_preemptions"] == 3


def test_one_server_has_no_replica_split() -> None:
    assert replica_shares([[record(0, "http://a"), record(1, "http://a")]], [1.0]) == []


@pytest.mark.parametrize(("devices", "expected"), [(2, ["0", "1"]), (1, [None, None])])
def test_gpu_replicas_get_a_device_each_where_the_machine_has_several(tmp_path: Path, devices: int,
                                                                      expected: list[str | None]) -> None:
    """Planned only (nothing boots; the lent machines have one GPU): on two devices each replica sees
    its own, on one they share it as any two servers do."""
    from pytest_vllm.gpu import DeviceInfo

    session = VLLMSession(RunConfig(rootdir=tmp_path, gpu="h100", gpu_force=True))
    session.__dict__["device"] = DeviceInfo(name="NVIDIA H100 80GB HBM3", count=devices, memory_mib=81559)
    replicas = session.spec_for("base", [], model="some-org/some-model").as_replicas(2)
    plans = [session.launcher.plan(spec, port=8000 + i, slot=i, slots=2) for i, spec in enumerate(replicas)]
    assert [plan.env.get("CUDA_VISIBLE_DEVICES") for plan in plans] == expected
