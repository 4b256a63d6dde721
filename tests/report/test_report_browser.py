"""The pages in a real browser: headless Chromium draws every plot with no console error.

CI installs Debian's ``chromium`` (.ci/run), so there a missing browser is a
failure; on a developer machine without it the test is skipped, saying why.
The page reports how rendering went on ``<body>`` (data-render, data-plots-drawn,
data-errors), which ``--dump-dom`` shows after its scripts ran.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from loops_runner.report import write_report
from tests.report.pages import figures
from tests.report.synthetic import write_rl_run, write_sweep

CLICK_EVAL_NLL = """<script>
for (const th of document.querySelectorAll("table.sortable th")) {
  if (th.textContent === "eval/nll") th.click();
}
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
    pytest.skip("chromium is not installed (apt-get install chromium); the page structure is "
                "still checked by test_run_report.py and test_sweep_report.py")


def _render(report: Path, tmp_path: Path) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and Chromium's log (console lines included)."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=30000",
               "--window-size=1400,1000", "--dump-dom", report.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


def _assert_rendered(report: Path, tmp_path: Path) -> str:
    dom, log = _render(report, tmp_path)
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:2000]
    attributes = body.group(1)
    assert 'data-render="done"' in attributes, attributes
    assert "data-errors" not in attributes, attributes
    shown = figures(report)
    assert f'data-plots-drawn="{len(shown)}"' in attributes
    for element_id in shown:  # each plot's div holds plotly's drawn SVG
        block = dom.split(f'id="{element_id}"', 1)[1][:3000]
        assert 'class="main-svg"' in block, element_id
    return dom


def test_run_and_sweep_pages_render_in_headless_chromium(tmp_path: Path) -> None:
    run_report = write_report([write_rl_run(tmp_path / "rl", steps=20)], pngs=False).html
    dom = _assert_rendered(run_report, tmp_path)
    # The rollouts browser opened on the last step (sampled by policy version 19).
    assert dom.count("<option") == 40  # 20 steps in each browser
    assert dom.count('class="group"') == 8 and dom.count("policy version 19 ·") == 8
    assert "8 group(s), 64 completion(s)" in dom
    # The divergent-token browser too: the last step's table, worst token first.
    assert dom.count('class="divergent"') == 1
    assert "3 token(s), largest |diff| 20.000" in dom
    assert '<td class="completion">"tok1&lt;/script&gt;"</td>' in dom
    sweep_report = write_report([write_sweep(tmp_path / "sweep", steps=30)], pngs=False).html
    # Click the eval/nll column, as a reader sorting the jobs would.
    page_html = sweep_report.read_text()
    sweep_report.write_text(page_html.replace("</body>", CLICK_EVAL_NLL + "</body>"))
    written = _eval_nll_column(page_html)
    assert written != sorted(written)  # the jobs' order is not already the sorted one
    dom = _assert_rendered(sweep_report, tmp_path)
    assert _eval_nll_column(dom) == sorted(written)
    assert re.search(r'<th[^>]*data-sorted="asc"[^>]*>eval/nll</th>', dom)


def _eval_nll_column(page_html: str) -> list[float]:
    table = page_html.split('<table class="sortable">', 1)[1].split("</table>", 1)[0]
    headers = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]
    column = headers.index("eval/nll")
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])
    return [float(re.findall(r"<td[^>]*>(.*?)</td>", row)[column]) for row in rows]
