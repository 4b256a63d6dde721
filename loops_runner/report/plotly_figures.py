"""Chart specs -> plotly figures: the JSON ``{data, layout}`` that the page's plotly.js draws.

The figures are written as plain plotly.js JSON rather than built with
``plotly.graph_objects``: its validation cost about 0.4 s per report and
checked nothing these fixed shapes need. The page applies one shared template
(plotly's own ``plotly_white``) to every figure.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from loops_runner.report.charts import Chart, Curve

# Matplotlib's default cycle, so a run has the same colour on the page and in its PNG.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
TEMPLATE = "plotly_white"


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def template() -> dict[str, Any]:
    """plotly's ``plotly_white`` template (``layout.template`` of every figure on the page)."""
    path = resources.files("plotly") / "package_data" / "templates" / f"{TEMPLATE}.json"
    return json.loads(path.read_text("utf-8"))


def _rgba(hex_color: str, alpha: float) -> str:
    red, green, blue = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _traces(curve: Curve, index: int, scatter: bool,
            alone: bool) -> list[tuple[dict[str, Any], list[Any], list[Any]]]:
    """(trace, x against step, x against wall time) for a curve, its band and its trend."""
    hue = color(index)
    traces = []
    if curve.band is not None:
        upper = [v + b for v, b in zip(curve.values, curve.band, strict=True)]
        lower = [v - b for v, b in zip(curve.values, curve.band, strict=True)]
        band_trace = {
            "type": "scatter", "x": curve.steps + curve.steps[::-1], "y": upper + lower[::-1],
            "fill": "toself", "fillcolor": _rgba(hue, 0.2), "line": {"width": 0},
            "hoverinfo": "skip", "name": f"{curve.name} ± std", "legendgroup": curve.name,
            "showlegend": False}
        traces.append((band_trace, curve.steps + curve.steps[::-1],
                       curve.elapsed_s + curve.elapsed_s[::-1]))
    line: dict[str, Any] = {
        "type": "scatter", "x": curve.steps, "y": curve.values, "name": curve.name,
        "legendgroup": curve.name,
        "mode": "markers" if scatter else (
            "lines+markers" if len(curve.values) <= 30 else "lines"),
        "marker": {"color": hue, "size": 10 if scatter else 5}, "line": {"color": hue}}
    if curve.smoothed is not None:
        line["opacity"] = 0.35
    traces.append((line, curve.steps, curve.elapsed_s))
    if curve.smoothed is not None:
        # Among several curves one legend entry per curve toggles raw and trend together.
        trend = {"type": "scatter", "x": curve.steps, "y": curve.smoothed,
                 "name": f"{curve.name} (smoothed)", "legendgroup": curve.name,
                 "mode": "lines", "line": {"color": hue}, "showlegend": alone}
        traces.append((trend, curve.steps, curve.elapsed_s))
    return traces


def _y_axis(chart: Chart) -> dict[str, Any]:
    axis: dict[str, Any] = {"title": {"text": chart.y_label}}
    values = {v for curve in chart.curves for v in curve.values}
    if len(values) == 1:
        # plotly shows a constant as +/-1 around it, which hides the scale of a small value.
        (value,) = values
        spread = abs(value) * 0.1 or 1.0
        axis["range"] = [value - spread, value + spread]
    return axis


def figure_json(chart: Chart) -> dict[str, Any]:
    """The ``{data, layout}`` of one chart, with a step / wall-time switch for curves."""
    traces, x_step, x_wall = [], [], []
    for index, curve in enumerate(chart.curves):
        for trace, by_step, by_wall in _traces(curve, index, chart.scatter,
                                               len(chart.curves) == 1):
            traces.append(trace)
            x_step.append(by_step)
            x_wall.append(by_wall)
    x_axis: dict[str, Any] = {"title": {"text": chart.x_label}}
    if chart.categories is not None:
        x_axis.update(tickmode="array", tickvals=list(range(len(chart.categories))),
                      ticktext=chart.categories)
    if chart.x_log:
        x_axis["type"] = "log"
    layout: dict[str, Any] = {
        "title": {"text": chart.title, "font": {"size": 14}}, "height": 340,
        "margin": {"l": 60, "r": 20, "t": 60, "b": 50}, "xaxis": x_axis,
        "yaxis": _y_axis(chart), "hovermode": "closest" if chart.scatter else "x unified",
        "showlegend": len(traces) > 1, "legend": {"font": {"size": 10}}}
    if not chart.scatter and any(v is not None for xs in x_wall for v in xs):
        layout["updatemenus"] = [{
            "type": "buttons", "direction": "right", "x": 1.0, "xanchor": "right",
            "y": 1.01, "yanchor": "bottom", "pad": {"r": 0, "t": 0}, "font": {"size": 10},
            "buttons": [
                {"label": "vs step", "method": "update",
                 "args": [{"x": x_step}, {"xaxis.title.text": chart.x_label}]},
                {"label": "vs wall time", "method": "update",
                 "args": [{"x": x_wall}, {"xaxis.title.text": "wall time (s)"}]},
            ]}]
    return {"data": traces, "layout": layout}
