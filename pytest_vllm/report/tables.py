"""A Table is what every report section produces; it renders as text or as markdown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])


def render_text(table: Table) -> list[str]:
    widths = [len(c) for c in table.columns]
    for row in table.rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 or not _numeric(c) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [table.title, line(table.columns), line(["-" * w for w in widths])]
    out += [line(row) for row in table.rows]
    out += [f"  {note}" for note in table.notes]
    return out


def render_markdown(table: Table) -> list[str]:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(table.columns))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.rows]
    out += [""] + [f"- {note}" for note in table.notes] + ([""] if table.notes else [])
    return out


def _numeric(cell: str) -> bool:
    stripped = cell.strip().rstrip("%x").lstrip("+-")
    try:
        float(stripped.split()[0] if stripped else "x")
    except ValueError:
        return False
    return True


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def verdicts(flags: Sequence[bool]) -> str:
    return "PASS" if all(flags) else "FAIL"
