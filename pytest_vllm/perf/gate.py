"""The ``vllm_bench`` fixture's object: measure, look up the baseline, judge, then fail, skip or
record, as pytest needs it.

``vllm_bench.run(server, workload)`` runs the workload's repetitions, each on prompts of its own,
refuses a run with any failed request or with prompts the server's prefix cache had seen
(invalid, not averaged away), and fails the test once with a table of every metric against its
budget. ``compare`` does the same for two servers with their repetitions interleaved, and gates
the median of the per-pair ratios. ``--update-baselines`` / ``--add-baselines`` record instead.
What is decided lives in ``judge.py`` (pure functions); this module is the pytest layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
import pytest

from pytest_vllm import baselines
from pytest_vllm.errors import BaselineError, UsageError
from pytest_vllm.gating import closest_wins
from pytest_vllm.gpu import GPUProfile
from pytest_vllm.load.runner import Target, WorkloadRuns, run_async, run_pair_async, run_single_stream, run_workload
from pytest_vllm.load.sessions import MultiTurnWorkload, run_conversations
from pytest_vllm.load.workload import Workload
from pytest_vllm.models.weights import served_weight_bytes
from pytest_vllm.perf import capacity_bench, deferral
from pytest_vllm.perf.budgets import MARKER, PAIR_MARKER, Budget, GatePolicy, default_budgets, parse_budgets
from pytest_vllm.perf.capacity import CapacityWorkload
from pytest_vllm.perf.capacity_bench import CapacityMeasurement
from pytest_vllm.perf.judge import (
    cold_cache_problem,
    failure_text,
    judge,
    missing_baseline,
    pair_failure_text,
    stored_baseline,
)
from pytest_vllm.perf.metrics import RepeatedResult
from pytest_vllm.perf.results import (
    PAIR_METRICS,
    BenchSettings,
    BenchState,
    Judged,
    KVCacheCheck,
    KVCachePair,
    Measurement,
    PairComparison,
    pair_ratios,
)
from pytest_vllm.perf.roofline import Roofline, roofline
from pytest_vllm.perf.turns import compute_run
from pytest_vllm.server.handle import ServerHandle
from pytest_vllm.server.kv_capacity import CACHE_CONFIG_INFO, Capacity, capacity_of, kv_capacity_ratio, shortfall

J = TypeVar("J", Measurement, PairComparison)
# Offsets the prompt seed of a confirming second measurement: its prompts are none of the first's.
CONFIRMATION_PROMPT_SEED = 7_000_003


class Bench:
    """The ``vllm_bench`` fixture: measure, compare with the baseline, gate."""

    def __init__(self, state: BenchState, item: pytest.Item, say: Callable[[str], None]) -> None:
        self._state = state
        self._item = item
        self._say = say
        self._budgets: dict[str, Budget] = closest_wins(item, MARKER)
        self._pair_budgets: dict[str, Budget] = in_force(closest_wins(item, PAIR_MARKER))
        self._calls: dict[int, Judged] = {}  # this run's gated measurements, by call order
        self._kept = (len(state.measurements), len(state.pairs))  # the state before this run
        self._benchmark: Any = None  # pytest-benchmark's fixture, when single_stream timed with it

    @property
    def settings(self) -> BenchSettings:
        return self._state.settings

    # -- public API ----------------------------------------------------------------------------
    def run(self, server: ServerHandle, workload: Workload, budgets: Mapping[str, str] | None = None,
            gate: bool = True) -> Measurement:
        """Measure ``workload`` on ``server`` and gate it (``gate=False``: measure and record only);
        a MultiTurnWorkload runs as conversations, with per-turn metrics."""
        wanted = self._budget_set(budgets)

        def measure(attempt: Workload) -> Measurement:
            self._say(f"measuring {attempt.name} on the {server.role} server: {attempt.describe()}")
            if isinstance(attempt, MultiTurnWorkload):
                runs = run_conversations(self._target(server, attempt), attempt, say=self._say)
            else:
                runs = run_workload(server.url, server.model, attempt, api_key=server.api_key, say=self._say,
                                    label=f"{server.role}/{attempt.name}",
                                    telemetry_interval=self.settings.profile.telemetry_interval_s,
                                    replicas=server.replica_urls, balance=self.settings.balance)
            return self._evaluated(self._measurement(server, runs), wanted)

        measurement = self._confirmed(measure, self._prepared(workload), gate)
        return self._settle(measurement, wanted, gate)

    def compare(self, reference: ServerHandle, candidate: ServerHandle, workload: Workload,
                budgets: Mapping[str, str] | None = None,
                pair_budgets: Mapping[str, str] | None = None) -> PairComparison:
        """Measure the same workload on two servers (``compare(*server_pair, w)``: base, then
        compressed), their repetitions interleaved, and apply the ``vllm_pair_budget`` ratios
        candidate / reference to the median of the per-pair ratios (``pair_budgets`` override the
        markers' per metric: a budget that depends on the run, such as the GPU speedup floor)."""
        refuse_multi_turn(workload, "compare")
        wanted = self._budget_set(budgets)
        ratio_budgets = self._pair_budgets
        if pair_budgets:
            ratio_budgets = in_force({**ratio_budgets, **parse_budgets(pair_budgets, kind_hint="pair",
                                                                       where=f"{self._item.nodeid}: ")})

        def measure(attempt: Workload) -> PairComparison:
            self._say(f"measuring {attempt.name} on the {reference.role} and {candidate.role} servers, "
                      f"repetitions interleaved: {attempt.describe()}")
            runs = run_async(run_pair_async(self._target(reference, attempt), self._target(candidate, attempt),
                                            attempt, say=self._say))
            first = self._evaluated(self._measurement(reference, runs[0]), wanted)
            second = self._evaluated(self._measurement(candidate, runs[1]), wanted)
            metrics = sorted(set(PAIR_METRICS) | set(ratio_budgets))
            comparison = PairComparison(self._item.nodeid, attempt, first, second,
                                        pair_ratios(first.result, second.result, metrics))
            return self._evaluated(comparison, ratio_budgets)

        comparison = self._confirmed(measure, self._prepared(workload), gate=True)
        for measurement in (comparison.reference, comparison.candidate):
            self._settle(measurement, wanted, gate=False)
        self._state.pairs.append(comparison)
        if self.settings.record:
            self._record(comparison)
        if not comparison.all_passed:
            pytest.fail(pair_failure_text(comparison), pytrace=False)
        for measurement in (comparison.reference, comparison.candidate):
            self._require_baseline(measurement, wanted)
        self._require_baseline(comparison, ratio_budgets)
        return comparison

    def single_stream(self, server: ServerHandle, workload: Workload, benchmark: Any = None,
                      budgets: Mapping[str, str] | None = None) -> Measurement:
        """Sequential requests, one at a time; each request is also a pytest-benchmark round, so the
        end-to-end latencies reach ``--benchmark-json`` / ``--benchmark-compare`` (a confirming
        second measurement runs outside pytest-benchmark, which times one run per test)."""
        refuse_multi_turn(workload, "single_stream")
        wanted = self._budget_set(budgets)
        earlier = deferral.attempts_of(self._item)
        if earlier is not None:  # the second run: pytest-benchmark timed the first run's rounds
            benchmark = earlier.benchmark
        timers: Iterator[Any] = iter([benchmark] if earlier is None else [])  # the first attempt's rounds only
        self._benchmark = benchmark

        def measure(attempt: Workload) -> Measurement:
            self._say(f"measuring {attempt.name} on the {server.role} server: {attempt.describe()}")
            runs = run_single_stream(self._target(server, attempt), attempt, next(timers, None),
                                     say=self._say)
            return self._evaluated(self._measurement(server, runs), wanted)

        measurement = self._confirmed(measure, self._prepared(workload.with_(concurrency=1, request_rate=None)),
                                      gate=True)
        measurement.roofline = self._roofline(server, measurement)
        if benchmark is not None:
            for metric in ("ttft_p50", "tpot_p50", "itl_p50", "e2el_p50", "output_throughput"):
                benchmark.extra_info[metric] = round(measurement.value(metric), 3)
            benchmark.extra_info["server"] = f"{server.role}:{server.model}"
        return self._settle(measurement, wanted, gate=True)

    def kv_cache(self, server: ServerHandle, workloads: Sequence[Workload]) -> KVCacheCheck:
        """The server's KV cache against ``workloads``, before any load: say what it holds, and fail
        when it cannot hold a workload's concurrency at the workload's lengths without preempting,
        or when the cost per token computed from the model's shape does not explain what vLLM
        allocated (its own max concurrency included)."""
        capacity = self._kv_capacity(server)
        flags = server.spec.flag_dict if server.spec else {}
        max_len = flags.get("max_model_len")
        if max_len is None and capacity.allocated.max_concurrency:
            max_len = round(capacity.tokens / capacity.allocated.max_concurrency)
        check = KVCacheCheck(self._item.nodeid, server.role, server.model, capacity,
                             int(max_len) if max_len else None,
                             {w.name: (capacity.requests_held(w.input_len + w.output_len), w.concurrency or 1)
                              for w in workloads})
        if problem := capacity.disagreement():
            check.problems.append(problem)
        vllm_figure = capacity.allocated.max_concurrency
        if vllm_figure is not None and check.max_model_len and flags.get("max_model_len"):
            if abs(capacity.tokens / check.max_model_len - vllm_figure) > 0.01:
                check.problems.append(f"vLLM says its cache holds {vllm_figure:g} requests at max_model_len "
                                      f"{check.max_model_len}; {capacity.tokens:,} tokens hold "
                                      f"{capacity.tokens / check.max_model_len:.2f}")
        gpu = self.settings.profile.is_gpu
        for w in workloads:
            if problem := shortfall(capacity, w.concurrency or 1, w.input_len + w.output_len, gpu):
                check.problems.append(f"{w.name}: {problem}")
        self._state.kv_caches.append(check)
        self._say(check.describe())
        if check.problems:
            pytest.fail(f"the {server.role} server's KV cache ({server.model}):\n  " + "\n  ".join(check.problems),
                        pytrace=False)
        return check

    def kv_cache_pair(self, reference: ServerHandle, candidate: ServerHandle,
                      floor: float | None = None) -> KVCachePair:
        """The candidate's KV cache against the reference's, before any load: the tokens it holds
        must grow at least as its cost per token shrinks (an fp8 cache, a smaller serving dtype),
        and reach ``floor`` times the reference's where one is asked."""
        ratio = kv_capacity_ratio(self._kv_capacity(reference), self._kv_capacity(candidate))
        pair = KVCachePair(self._item.nodeid, reference.role, candidate.role, ratio, floor, ratio.shortfall(floor))
        self._state.kv_pairs.append(pair)
        self._say(pair.describe())
        if pair.problem:
            pytest.fail(f"the {candidate.role} server's KV cache against the {reference.role} server's: "
                        f"{pair.describe()}: {pair.problem}", pytrace=False)
        return pair

    def capacity(self, server: ServerHandle, workload: CapacityWorkload,
                 budgets: Mapping[str, str] | None = None) -> CapacityMeasurement:
        """Search ``server``'s capacity under the workload's SLOs and gate it like a metric
        (``capacity``: default CAPACITY_BUDGET, markers and ``budgets`` over it)."""
        wanted = self._capacity_budgets(workload, budgets)
        measurement = self._evaluated_capacity(self._searched([server], workload)[0], wanted, workload)
        self._state.capacities.append(measurement)
        if self.settings.record:
            self._record(measurement)
        self._fail_or_skip(measurement, [measurement])
        self._require_baseline(measurement, wanted)
        return measurement

    def compare_capacity(self, reference: ServerHandle, candidate: ServerHandle, workload: CapacityWorkload,
                         budgets: Mapping[str, str] | None = None,
                         pair_budgets: Mapping[str, str] | None = None) -> PairComparison:
        """Both servers' capacities, their probes interleaved, each gated as ``capacity`` does, and
        the ratio candidate / reference by the ``vllm_pair_budget`` markers and ``pair_budgets``."""
        wanted = self._capacity_budgets(workload, budgets)
        ratio_budgets = dict(self._pair_budgets)
        if pair_budgets:
            ratio_budgets.update(parse_budgets(pair_budgets, kind_hint="pair", where=f"{self._item.nodeid}: "))
        ratio_budgets = self._checked_capacity_budgets(in_force(ratio_budgets), workload)
        first, second = (self._evaluated_capacity(m, wanted, workload)
                         for m in self._searched([reference, candidate], workload))
        comparison = PairComparison(self._item.nodeid, workload, first, second,
                                    capacity_bench.capacity_ratio(first, second))
        comparison = self._evaluated(comparison, ratio_budgets)
        comparison.checks = capacity_bench.bounded_by_precision(comparison.checks, workload.precision)
        self._state.capacities += [first, second]
        self._state.capacity_pairs.append(comparison)
        self._say(f"capacity {candidate.role} / {reference.role}: {comparison.ratio('capacity'):.3f}")
        if self.settings.record:
            for judged in (first, second, comparison):
                self._record(judged)
        self._fail_or_skip(comparison, [first, second])
        for judged, its_budgets in ((first, wanted), (second, wanted), (comparison, ratio_budgets)):
            self._require_baseline(judged, its_budgets)
        return comparison

    # -- internals -----------------------------------------------------------------------------
    def _kv_capacity(self, server: ServerHandle) -> Capacity:
        """What the server's /metrics say it allocated, with the cost per token from its model's shape."""
        try:
            text = httpx.get(f"{server.url}/metrics", timeout=30,
                             headers={"Authorization": f"Bearer {server.api_key}"}).text
        except httpx.HTTPError as exc:
            pytest.fail(f"the {server.role} server's /metrics could not be read: {exc}", pytrace=False)
        flags = server.spec.flag_dict if server.spec else {}
        capacity = capacity_of(text, server.spec.model if server.spec else server.model, flags)
        if capacity is None:
            pytest.skip(f"the {server.role} server exports no {CACHE_CONFIG_INFO}: its KV cache size is unknown")
        return capacity

    def _capacity_budgets(self, workload: CapacityWorkload, budgets: Mapping[str, str] | None) -> dict[str, Budget]:
        wanted = {**parse_budgets({"capacity": capacity_bench.CAPACITY_BUDGET}), **self._budgets}
        if budgets:
            wanted.update(parse_budgets(budgets, where=f"{self._item.nodeid}: "))
        return self._checked_capacity_budgets(in_force(wanted), workload)

    def _checked_capacity_budgets(self, budgets: dict[str, Budget], workload: CapacityWorkload) -> dict[str, Budget]:
        try:
            return capacity_bench.capacity_budgets(budgets, workload)
        except UsageError as exc:
            pytest.fail(f"{self._item.nodeid}: {exc}", pytrace=False)

    def _searched(self, servers: Sequence[ServerHandle], workload: CapacityWorkload) -> list[CapacityMeasurement]:
        """Each server's capacity search (probes interleaved), as measurements not yet judged."""
        workload = dataclasses.replace(workload, prompt_seed=workload.prompt_seed or self.settings.prompt_seed)
        self._say(f"searching the capacity of the {' and '.join(s.role for s in servers)} server(s): "
                  f"{workload.describe()}")
        targets = [self._target(server, workload) for server in servers]
        searches = run_async(capacity_bench.run_searches(targets, workload, self._say))
        measured = []
        for server, search in zip(servers, searches):
            if search.capacity is None:
                pytest.fail(f"{workload.name} on the {server.role} server: {search.verdict()}, so it has no capacity "
                            f"under these SLOs ({workload.describe()}). Loosen slo_ms or lower good_fraction if the "
                            "SLOs are stricter than this server can ever meet", pytrace=False)
            measured.append(CapacityMeasurement(
                self._item.nodeid, server.role, server.model, workload, capacity_bench.capacity_result(search),
                server.spec.portable_key if server.spec else f"remote:{server.model}",
                server.spec.recorded_flags if server.spec else {}, search=search))
        return measured

    def _evaluated_capacity(self, measurement: CapacityMeasurement, budgets: Mapping[str, Budget],
                            workload: CapacityWorkload) -> CapacityMeasurement:
        self._evaluated(measurement, budgets)
        measurement.checks = capacity_bench.bounded_by_precision(measurement.checks, workload.precision)
        return measurement

    def _fail_or_skip(self, judged: Judged, searched: Sequence[CapacityMeasurement]) -> None:
        """Fail a capacity out of budget, unless a search behind it was inconclusive (client-bound
        or not converged): that is no verdict on the server, and the test skips saying so."""
        if judged.all_passed:
            return
        if doubtful := [m for m in searched if m.inconclusive]:
            pytest.skip("capacity out of budget, but inconclusive: " + "; ".join(
                f"{m.role}: {m.search.verdict()}" for m in doubtful if m.search is not None))
        text = pair_failure_text(judged) if isinstance(judged, PairComparison) else failure_text(judged)
        pytest.fail(text, pytrace=False)

    def _prepared(self, workload: Workload) -> Workload:
        """The workload with the run's --vllm-repeats and --vllm-prompt-seed."""
        settings = self.settings
        return workload.with_(repeats=settings.repeats or workload.repeats,
                              prompt_seed=workload.prompt_seed or settings.prompt_seed)

    def _target(self, server: ServerHandle, workload: Workload) -> Target:
        return Target(server.url, server.model, server.api_key, f"{server.role}/{workload.name}",
                      self.settings.profile.telemetry_interval_s, replicas=server.replica_urls,
                      balance=self.settings.balance)

    def _roofline(self, server: ServerHandle, measurement: Measurement) -> Roofline | None:
        """On a GPU, one request at a time: TPOT against weight bytes / the device's bandwidth."""
        if not self.settings.profile.is_gpu or server.spec is None:
            return None
        found = roofline(str(self.settings.environment.get("device_name", "")),
                         served_weight_bytes(server.spec.model, server.spec.flag_dict), measurement.value("tpot_p50"))
        if found is not None:
            self._say(f"roofline of the {server.role} server: {found.describe()}")
        return found

    def _budget_set(self, budgets: Mapping[str, str] | None) -> dict[str, Budget]:
        wanted = {**self.settings.default_budgets, **self._budgets}
        if budgets:
            wanted.update(parse_budgets(budgets, where=f"{self._item.nodeid}: "))
        return in_force(wanted)

    def _say_once(self, line: str) -> None:
        if line not in self._state.said:
            self._state.said.add(line)
            self._say(line)

    def _measurement(self, server: ServerHandle, runs: WorkloadRuns) -> Measurement:
        workload = runs.workload
        result = RepeatedResult([compute_run(run, workload.slo_ms) for run in runs.runs])
        if result.errors:
            shown = "\n  ".join(result.errors[:10])
            more = f"\n  ... and {len(result.errors) - 10} more" if len(result.errors) > 10 else ""
            pytest.fail(f"{workload.name} on the {server.role} server is invalid: {len(result.errors)} request(s) "
                        f"failed (a run with failures is not averaged away):\n  {shown}{more}", pytrace=False)
        if result.client_saturated:
            self._say(f"warning: the load client was saturated during {workload.name} (event-loop lag or CPU); "
                      "latencies include client delay")
        server_key = server.spec.portable_key if server.spec else f"remote:{server.model}"
        flags = server.spec.recorded_flags if server.spec else {}
        measurement = Measurement(self._item.nodeid, server.role, server.model, workload, result, server_key, flags,
                                  prompt_tokens=runs.prompt_tokens, records=[run.records for run in runs.runs],
                                  replica_telemetry=[run.replica_telemetry for run in runs.runs])
        if (foreign := foreign_load(result, workload)) is not None:
            self._say(f"warning: the {server.role} server held up to {foreign:.0f} requests at once during "
                      f"{workload.name}, which sends at most {workload.concurrency}: another client was using it, "
                      "and the measurement includes its load")
        if not result.has("prefix_cache_hit_rate"):
            self._say_once(f"the {server.role} server ({server.url}) exports no prefix cache counters: its "
                           "repetitions cannot be proven to have missed the cache")
        if problem := cold_cache_problem(measurement, runs):
            pytest.fail(problem, pytrace=False)
        return measurement

    def _stored(self, judged: Judged) -> tuple[baselines.Baseline | None, str]:
        try:
            return stored_baseline(self.settings, judged)
        except BaselineError as exc:
            pytest.fail(str(exc), pytrace=False)

    def _evaluated(self, judged: J, budgets: Mapping[str, Budget]) -> J:
        """``judged`` with its baseline and checks (nothing failed, recorded or kept yet)."""
        if isinstance(judged, Measurement):
            if missing := [metric for metric in budgets if not judged.result.has(metric)]:
                pytest.fail(f"{judged.workload.name} on the {judged.role} server: a budget names "
                            f"{', '.join(missing)}, which this measurement does not have: the server's /metrics "
                            "does not export it (or could not be read; server/telemetry.py lists the names read). "
                            f"Switch the budget off for this server ({missing[0]}=\"off\") or remove it",
                            pytrace=False)
        judged.baseline, judged.baseline_note = self._stored(judged)
        judged.checks = judge(judged, budgets, judged.baseline, self.settings)
        return judged

    def _confirmed(self, measure: Callable[[Workload], J], workload: Workload, gate: bool) -> J:
        """A measurement out of budget is measured once more, on prompts of its own, and the second
        decides: a regression repeats, a slow spell of a shared host does not. The second
        measurement waits for the end of the session (``deferral``: in CI the spell outlasted an
        immediate one), except in the session's last test. Both attempts are reported."""
        index = len(self._calls)
        earlier = deferral.attempts_of(self._item)
        if earlier is not None and index in earlier.settled:  # decided in the first run
            self._calls[index] = earlier.settled[index]
            return earlier.settled[index]
        if earlier is not None and index == earlier.pending:
            self._say(f"{workload.name}: out of budget {earlier.ago()} ago; measuring again on prompts of its own "
                      "to confirm")
            return self._second(measure, workload, earlier.first, f"{earlier.ago()} later, at the end of the session")
        first = measure(workload)
        self._calls[index] = first
        if not gate or self.settings.record or first.all_passed:
            return first
        if deferral.can_defer(self._item):
            self._say(f"{workload.name}: out of budget ({_failing(first)}); measuring again at the end of the "
                      "session, after the other tests, on prompts of its own")
            del self._state.measurements[self._kept[0]:], self._state.pairs[self._kept[1]:]
            settled = {i: judged for i, judged in self._calls.items() if i != index}
            deferral.defer(self._item, deferral.Attempts(settled, index, first, benchmark=self._benchmark))
        self._say(f"{workload.name}: out of budget ({_failing(first)}); measuring again on prompts of its own "
                  "to confirm")
        return self._second(measure, workload, first, "right away")

    def _second(self, measure: Callable[[Workload], J], workload: Workload, first: J, when: str) -> J:
        """The confirming measurement of ``first``, which decides."""
        second = measure(workload.with_(prompt_seed=workload.prompt_seed + CONFIRMATION_PROMPT_SEED))
        second.first_attempt = first
        verdict = "confirmed: out of budget again" if not second.all_passed else "not confirmed: passed"
        note = (f"a first measurement was out of budget ({_failing(first)}); measured again on fresh prompts "
                f"{when}, {verdict}")
        second.baseline_note = "; ".join(filter(None, [note, second.baseline_note]))
        self._say(f"{workload.name}: {verdict}")
        return second

    def _settle(self, measurement: Measurement, budgets: Mapping[str, Budget], gate: bool) -> Measurement:
        """Keep the measurement for the reports, record it or fail the test as the verdict says."""
        self._state.measurements.append(measurement)
        if self.settings.record:
            self._record(measurement)
        if not gate:
            return measurement
        if not measurement.passed:
            pytest.fail(failure_text(measurement), pytrace=False)
        self._require_baseline(measurement, budgets)
        return measurement

    def _require_baseline(self, judged: Judged, budgets: Mapping[str, Budget]) -> None:
        missing = missing_baseline(self.settings, judged, budgets)
        if missing.action == "not judged":
            judged.judged = False
            if missing.new_test:
                judged.baseline_note = "; ".join(filter(None, [judged.baseline_note, missing.message]))
            else:
                self._state.unjudged_classes[judged.model_of_record] = list(missing.recorded_classes)
            self._say_once(missing.message)
        elif missing.action == "skip":
            pytest.skip(missing.message)
        elif missing.action == "fail":
            pytest.fail(missing.message, pytrace=False)

    def _record(self, judged: Judged) -> None:
        settings = self.settings
        key = judged.baseline_key(settings.host_class)
        try:
            path = baselines.write(settings.baseline_dir, key, judged.entry(settings.environment),
                                   pool=settings.add_recording)
        except BaselineError as exc:
            pytest.fail(f"not recorded: {exc}", pytrace=False)
        verb = "added to" if settings.add_recording else "written to"
        judged.baseline_note = f"baseline {verb} {path}"
        self._state.written.append(path)
        self._say(f"baseline {verb}: {path} [{key.entry_name}]")


def refuse_multi_turn(workload: Workload, method: str) -> None:
    """Conversations run only through ``vllm_bench.run``: say so before anything is measured."""
    if isinstance(workload, MultiTurnWorkload):
        raise UsageError(f"vllm_bench.{method} does not run multi-turn workloads ({workload.name!r}): measure "
                         "conversations with vllm_bench.run(server, workload), one server at a time "
                         "(concurrency=1 for sequential conversations)")


def foreign_load(result: RepeatedResult, workload: Workload) -> float | None:
    """The most requests the server ran, or queued, at once when that is more than a closed-loop
    workload sends (another client's load; its long prompts count as its own), else None."""
    if workload.concurrency is None:
        return None
    held = max((v for name in ("requests_running_peak", "requests_waiting_peak") if result.has(name)
                for v in result.values(name)), default=0.0)
    sent = workload.concurrency + (workload.long_prompts.count if workload.long_prompts else 0)
    return held if held > sent else None


def _failing(judged: Judged) -> str:
    """The checks out of budget, with their deltas: "output_throughput -17%, tpot_p50 +21%"."""
    return ", ".join(f"{c.metric} {c.delta:+.0%}" if c.delta is not None else c.metric
                     for c in judged.all_checks if not c.passed)


def in_force(budgets: Mapping[str, Budget]) -> dict[str, Budget]:
    """The budgets that are not switched off."""
    return {metric: budget for metric, budget in budgets.items() if budget.kind != "off"}


def settings_for(config: Any, profile: GPUProfile, host_class: str, environment: dict[str, Any]) -> BenchSettings:
    """BenchSettings from a RunConfig (``config``), the GPU profile and the host's class.

    Default budgets: the field's (DEFAULT_BUDGETS; GPU_DEFAULT_BUDGETS on GPU profiles), then
    ``[tool.pytest_vllm.budgets]``; markers override per test. The noise model widens each to what the
    measured noise allows.
    """
    return BenchSettings(profile=profile, host_class=host_class, baseline_dir=config.baseline_dir,
                         record=config.update_baselines or config.add_baselines, missing=config.missing_baseline,
                         policy=GatePolicy(config.false_alarm_rate, config.max_tolerance),
                         default_budgets=default_budgets(config.budgets, gpu=profile.is_gpu), environment=environment,
                         repeats=config.repeats,
                         add_recording=config.add_baselines, prompt_seed=config.prompt_seed, balance=config.balance,
                         baseline_gate_fails=(profile.baseline_gate_fails if config.baseline_gate == "auto"
                                              else config.baseline_gate == "fail"))
