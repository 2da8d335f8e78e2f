"""A Table is what every report section produces; it renders as text, markdown or HTML.

Cells are text, or a ``gating.Verdict``, which renders as its label and which the HTML page
colours by its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_vllm.gating import Verdict

Cell = str | Verdict


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([c if isinstance(c, Verdict) else str(c) for c in cells])

    def text_rows(self) -> list[list[str]]:
        return [[str(c) for c in row] for row in self.rows]


def render_text(table: Table) -> list[str]:
    widths = [len(c) for c in table.columns]
    rows = table.text_rows()
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 or not _numeric(c) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [table.title, line(table.columns), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    out += [f"  {note}" for note in table.notes]
    return out


def render_markdown(table: Table) -> list[str]:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(table.columns))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.text_rows()]
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

