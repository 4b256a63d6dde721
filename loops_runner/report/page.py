"""The self-contained HTML page: sections of plots, tables, and everything inlined.

plotly.js (about 4.8 MB) is inlined gzipped and base64-encoded (about 2 MB) and
unpacked by the browser's ``DecompressionStream``: that keeps a report under
5 MB and still opening from disk with no network.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from loops_runner.report.charts import Section
from loops_runner.report.plotly_figures import figure_json, template

GENERATOR = "loops-runner report"
REPORT_FILE = "report.html"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    sortable: bool = False
    scroll: bool = False
    # Cells holding HTML we built ourselves (links); everything else is escaped.
    html_columns: frozenset[int] = frozenset()


@dataclass
class Page:
    title: str
    subtitle: str
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # element id -> figure
    tables: list[Table] = field(default_factory=list)
    rollouts: dict[str, Any] | None = None
    rollouts_note: str | None = None
    divergence: dict[str, Any] | None = None  # the divergent-token browser's steps
    divergence_note: str | None = None


@functools.cache
def _plotly_js_packed() -> str:
    from plotly.offline import get_plotlyjs

    packed = gzip.compress(get_plotlyjs().encode(), compresslevel=3, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def _asset(name: str) -> str:
    return (resources.files("loops_runner.report") / "assets" / name).read_text("utf-8")


def _json_block(element_id: str, payload: Any) -> str:
    # "<" escaped so no string in the data can close the script element.
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _cell(value: Any, raw_html: bool) -> str:
    if raw_html:
        return f"<td>{value}</td>"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num" data-value="{value!r}">{html.escape(format_cell(value))}</td>'
    return f'<td class="wrap">{html.escape(format_cell(value))}</td>'


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(_cell(v, i in table.html_columns) for i, v in enumerate(row))
                   + "</tr>" for row in table.rows)
    css = ' class="sortable"' if table.sortable else ""
    body = (f"<table{css}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            if table.rows else "<p>(none)</p>")
    if table.scroll:
        body = f'<div class="scroll">{body}</div>'
    return f"<div><h3>{html.escape(table.title)}</h3>{body}</div>"


def anchor(text: str) -> str:
    return "s-" + "".join(ch if ch.isalnum() else "-" for ch in text.lower())


def _section(section: Section) -> str:
    plots = "".join(f'<div class="plot" id="plot-{html.escape(chart.slug)}"></div>'
                    for chart in section.charts)
    return (f'<section id="{anchor(section.title)}"><h2>{html.escape(section.title)}</h2>'
            f'<div class="grid">{plots}</div></section>')


def _step_browser(section_id: str, name: str, title: str, note: str | None,
                  intro: str = "") -> str:
    """A section whose controls pick a step; report.js fills ``<name>-view``."""
    notes = "".join(f'<p class="sub">{html.escape(text)}</p>' for text in (intro, note or "")
                    if text)
    return (f'<section id="{section_id}"><h2>{html.escape(title)}</h2>' + notes +
            f'<div class="rollout-controls"><button id="{name}-prev">◀ previous</button>'
            f'<select id="{name}-step"></select><button id="{name}-next">next ▶</button>'
            f'<span id="{name}-summary" class="sub"></span></div>'
            f'<div id="{name}-view"></div></section>')


DIVERGENCE_INTRO = ("Per step, the sampled tokens whose trainer logprob differs most from "
                    "the sampler's (diff = trainer - sampler; the importance ratio is "
                    "exp(diff)). Large gaps on the same weights mean the sampler and trainer "
                    "compute different models (docs/rl.md).")


def render(page: Page) -> str:
    nav_items = [(s.title, anchor(s.title)) for s in page.sections if s.charts]
    if page.tables:
        nav_items.append(("Tables", "s-tables"))
    if page.rollouts is not None:
        nav_items.append(("Rollouts", "s-rollouts"))
    if page.divergence is not None:
        nav_items.append(("Divergent tokens", "s-divergence"))
    nav = "".join(f'<a href="#{target}">{html.escape(title)}</a>' for title, target in nav_items)
    notes = ""
    if page.notes:
        notes = ('<div class="notes"><ul>' +
                 "".join(f"<li>{html.escape(n)}</li>" for n in page.notes) + "</ul></div>")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta name="generator" content="{GENERATOR}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(page.title)}</title>",
        f"<style>{_asset('report.css')}</style></head>",
        '<body data-render="pending">',
        f"<h1>{html.escape(page.title)}</h1>",
        f'<p class="sub">{html.escape(page.subtitle)} · written '
        f'{time.strftime("%Y-%m-%d %H:%M:%S")} by {GENERATOR}</p>',
        f"<nav>{nav}</nav>",
        '<div id="report-errors" hidden></div>',
        "<noscript><p>The plots need JavaScript; the PNGs beside this file show "
        "them too.</p></noscript>",
        notes,
        *(_section(s) for s in page.sections if s.charts),
    ]
    if page.tables:
        parts.append('<section id="s-tables"><h2>Tables</h2><div class="tables">' +
                     "".join(_table(t) for t in page.tables) + "</div></section>")
    if page.rollouts is not None:
        parts.append(_step_browser("s-rollouts", "rollout", "Rollouts", page.rollouts_note))
        parts.append(_json_block("report-rollouts", page.rollouts))
    if page.divergence is not None:
        parts.append(_step_browser("s-divergence", "divergence", "Divergent tokens",
                                   page.divergence_note, DIVERGENCE_INTRO))
        parts.append(_json_block("report-divergence", page.divergence))
    parts.append(_json_block("report-figures", page.figures))
    if page.figures:
        parts.append(_json_block("report-template", template()))
        parts.append('<script type="application/gzip;base64" id="plotly-js-gz">'
                     f"{_plotly_js_packed()}</script>")
    parts.append(f"<script>{_asset('report.js')}</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def add_figures(built: Page, sections: list[Section]) -> None:
    """Give every chart a unique element id and its plotly figure; the page shows them."""
    used: set[str] = set()
    for section in sections:
        for chart in section.charts:
            base, number = chart.slug, 2
            while chart.slug in used:
                chart.slug, number = f"{base}-{number}", number + 1
            used.add(chart.slug)
            built.figures[f"plot-{chart.slug}"] = figure_json(chart)
    built.sections = sections
