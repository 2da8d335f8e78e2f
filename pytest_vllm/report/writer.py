"""Writes the run's reports: results.json, summary.md (and $GITHUB_STEP_SUMMARY), report.html + PNGs.

Each subsystem (performance, accuracy, conformance) contributes a ``Section``: tables for people,
a JSON-able dict for machines, and optional plots. Each file is replaced atomically
(``pytest_vllm.storage``): a CI step or ``pytest-vllm baselines add`` that reads results.json while
a run writes it, or after a run was killed, reads the previous file whole, never half of one.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_vllm import redact
from pytest_vllm.gating import Verdict
from pytest_vllm.report.tables import Table, render_markdown, render_text
from pytest_vllm.storage import atomic_write_bytes, atomic_write_text


@dataclass
class Section:
    name: str  # key in results.json
    tables: list[Table]
    data: dict[str, Any]
    plots: dict[str, bytes] = field(default_factory=dict)
    failed: bool = False  # the section fails the run by itself (a finding no test reported, say)


def terminal_lines(sections: Sequence[Section]) -> list[str]:
    lines: list[str] = []
    for section in sections:
        for table in section.tables:
            lines += render_text(table) + [""]
    return [redact.text(line) for line in lines]


def write_reports(report_dir: Path, sections: Sequence[Section], run_info: dict[str, Any],
                  say: Callable[[str], None] = print) -> list[Path]:
    """Write every report file; returns their paths. Plots that fail to draw are reported, not fatal."""
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    results = {"run": run_info, **{s.name: s.data for s in sections}}
    path = report_dir / "results.json"
    atomic_write_text(path, redact.text(json.dumps(results, indent=1, default=str)) + "\n")
    written.append(path)

    markdown = [f"## pytest-vllm: {run_info.get('verdict', '')}", "",
                f"profile `{run_info.get('gpu')}` · device {run_info.get('device')} · "
                f"vLLM {run_info.get('vllm_version')}",
                ""]
    for section in sections:
        for table in section.tables:
            markdown += render_markdown(table)
    path = report_dir / "summary.md"
    atomic_write_text(path, redact.text("\n".join(markdown)) + "\n")
    written.append(path)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(redact.text("\n".join(markdown)) + "\n")

    images = {}
    for section in sections:
        for name, png in section.plots.items():
            atomic_write_bytes(report_dir / name, png)
            written.append(report_dir / name)
            images[name] = png
    path = report_dir / "report.html"
    atomic_write_text(path, redact.text(_html(sections, run_info, images)))
    written.append(path)
    return written


def _html(sections: Sequence[Section], run_info: dict[str, Any], images: dict[str, bytes]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>pytest-vllm report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin-bottom:1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}.FAIL{background:#fdd}.PASS{background:#dfd}"
             ".NOT_JUDGED,.NO_BASELINE{background:#ffd}"
             "</style></head><body>",
             f"<h1>pytest-vllm report: {html.escape(str(run_info.get('verdict', '')))}</h1>",
             f"<p>{html.escape(json.dumps(run_info, default=str))}</p>",
             f"<p>generated {datetime.now(UTC).isoformat(timespec='seconds')}</p>"]
    for section in sections:
        for table in section.tables:
            parts.append(f"<h2>{html.escape(table.title)}</h2><table><tr>"
                         + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr>")
            for row in table.rows:
                parts.append("<tr>" + "".join(
                    f"<td class='{c.outcome.name if isinstance(c, Verdict) else ''}'>{html.escape(str(c))}</td>"
                    for c in row) + "</tr>")
            parts.append("</table>" + "".join(f"<p>{html.escape(n)}</p>" for n in table.notes))
    for name, png in images.items():
        parts.append(f"<h2>{html.escape(name)}</h2><img src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'/>")
    parts.append("</body></html>")
    return "\n".join(parts)
