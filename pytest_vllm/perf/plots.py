"""PNG plots for the HTML report (matplotlib, headless): latency CDFs, throughput against
concurrency, and base against compressed."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from pytest_vllm.perf.results import BenchState, Measurement


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7.5, 4.2), dpi=110)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _label(m: Measurement) -> str:
    return f"{m.role}: {m.nodeid.split('::')[-1]} {m.workload.name}"


def latency_cdf(state: BenchState, metric: str = "ttft") -> bytes | None:
    import numpy as np

    series: list[tuple[str, Any]] = []
    for m in state.measurements:
        values = [getattr(r, metric) for run in m.records for r in run if r.ok and getattr(r, metric) is not None]
        if values:
            series.append((_label(m), np.sort(np.asarray(values) * 1000.0)))
    if not series:
        return None
    fig, ax = _figure()
    for label, values in series[:12]:
        ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=label)
    ax.set_xlabel(f"{metric.upper()} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{metric.upper()} distribution (all repetitions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _png(fig)


def throughput_vs_concurrency(state: BenchState) -> bytes | None:
    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for m in state.measurements:
        if m.workload.closed_loop and m.workload.concurrency:
            test = m.nodeid.split("::")[-1].split("[")[0]
            groups[f"{m.role} · {test}"].append((m.workload.concurrency, m.value("output_throughput")))
    groups = {k: sorted(v) for k, v in groups.items() if len({c for c, _ in v}) > 1}
    if not groups:
        return None
    fig, ax = _figure()
    for label, points in groups.items():
        ax.plot([c for c, _ in points], [t for _, t in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput against concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def base_vs_compressed(state: BenchState) -> bytes | None:
    if not state.pairs:
        return None
    import numpy as np

    metrics = ("output_throughput", "ttft_p50", "tpot_p50", "e2el_p50")
    fig, ax = _figure()
    width = 0.8 / max(1, len(state.pairs))
    x = np.arange(len(metrics))
    for i, pair in enumerate(state.pairs):
        ax.bar(x + i * width, [pair.ratio(m) for m in metrics], width, label=pair.workload.name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x + width * (len(state.pairs) - 1) / 2, metrics)
    ax.set_ylabel("compressed / base")
    ax.set_title("Compressed against base (>1: higher for compressed)")
    ax.legend(fontsize=7)
    return _png(fig)


def goodput_vs_rate(state: BenchState) -> bytes | None:
    """Each capacity search's probes: goodput against the asked rate, with the line where every
    request sent is good (goodput = rate), and the capacity found."""
    searched = [m for m in state.capacities if m.probes]
    if not searched:
        return None
    fig, ax = _figure()
    markers = {"pass": "o", "fail": "x", "inconclusive": "s"}
    highest = 0.0
    for m in searched:
        probes = sorted(m.probes, key=lambda p: p.rate)
        line, = ax.plot([p.rate for p in probes], [p.goodput for p in probes], alpha=0.6,
                        label=f"{m.role}: capacity {m.value('capacity'):.3g} req/s")
        for p in probes:
            ax.scatter([p.rate], [p.goodput], marker=markers[p.outcome], color=line.get_color())
        ax.axvline(m.value("capacity"), color=line.get_color(), linestyle=":", linewidth=1)
        highest = max(highest, *(p.rate for p in probes))
    ax.plot([0, highest], [0, highest], color="grey", linestyle="--", linewidth=0.8, label="goodput = rate")
    ax.set_xlabel("asked request rate (req/s, Poisson)")
    ax.set_ylabel("goodput (req/s within the SLOs)")
    ax.set_title("Capacity search: goodput against rate (o pass, x fail, square inconclusive)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def all_plots(state: BenchState) -> dict[str, bytes]:
    plots = {"ttft_cdf.png": latency_cdf(state, "ttft"), "e2el_cdf.png": latency_cdf(state, "e2el"),
             "throughput_vs_concurrency.png": throughput_vs_concurrency(state),
             "base_vs_compressed.png": base_vs_compressed(state), "goodput_vs_rate.png": goodput_vs_rate(state)}
    return {name: png for name, png in plots.items() if png}
