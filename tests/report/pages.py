"""Reading a written report back: its embedded JSON blocks, tables and inlined plotly.js."""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
from pathlib import Path
from typing import Any

MAX_REPORT_BYTES = 5_000_000


def json_block(page_html: str, element_id: str) -> Any:
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>',
                      page_html, re.S)
    assert match is not None, f"no #{element_id} block"
    return json.loads(match.group(1))


def figures(report: Path) -> dict[str, dict[str, Any]]:
    return json_block(report.read_text(), "report-figures")


def trace_names(figure: dict[str, Any]) -> list[str]:
    return [t["name"] for t in figure["data"] if t.get("showlegend", True) is not False]


def plotly_js(page_html: str) -> str:
    match = re.search(r'<script type="application/gzip;base64" id="plotly-js-gz">(.*?)</script>',
                      page_html, re.S)
    assert match is not None, "plotly.js is not inlined"
    return gzip.decompress(base64.b64decode(match.group(1))).decode()


def table_rows(page_html: str, title: str) -> list[list[str]]:
    """The cell texts of the table under the heading ``title``."""
    match = re.search(rf"<h3>{re.escape(html.escape(title))}</h3>.*?<tbody>(.*?)</tbody>",
                      page_html, re.S)
    assert match is not None, f"no table {title!r}"
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell))
             for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)]
