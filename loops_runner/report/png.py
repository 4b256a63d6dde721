"""Chart specs -> PNG files with matplotlib (headless Agg canvas, no browser needed)."""

from __future__ import annotations

from pathlib import Path

from loops_runner.report.charts import Chart
from loops_runner.report.plotly_figures import color

DPI = 100
SIZE_IN = (6.4, 3.6)


def write_png(chart: Chart, path: Path) -> None:
    # The object API on a private Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE_IN, dpi=DPI)
    # Fixed margins: an automatic layout engine would double the time per PNG.
    figure.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.14)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for index, curve in enumerate(chart.curves):
        hue = color(index)
        if chart.scatter:
            axes.scatter(curve.steps, curve.values, color=hue, label=curve.name, s=36)
            continue
        axes.plot(curve.steps, curve.values, color=hue, label=curve.name, linewidth=1.4,
                  marker="o" if len(curve.values) <= 30 else None, markersize=3,
                  alpha=0.35 if curve.smoothed is not None else 1.0)
        if curve.smoothed is not None:
            axes.plot(curve.steps, curve.smoothed, color=hue, linewidth=1.8,
                      label=f"{curve.name} (smoothed)" if len(chart.curves) == 1 else None)
        if curve.band is not None:
            axes.fill_between(curve.steps,
                              [v - b for v, b in zip(curve.values, curve.band, strict=True)],
                              [v + b for v, b in zip(curve.values, curve.band, strict=True)],
                              color=hue, alpha=0.2, linewidth=0)
    if chart.categories is not None:
        axes.set_xticks(range(len(chart.categories)), chart.categories)
    if chart.x_log:
        axes.set_xscale("log")
    axes.set_title(chart.title, fontsize=11)
    axes.set_xlabel(chart.x_label)
    axes.set_ylabel(chart.y_label)
    axes.grid(alpha=0.3)
    if len(chart.curves) > 1 or any(curve.smoothed is not None for curve in chart.curves):
        axes.legend(fontsize=7, loc="best")
    figure.savefig(path, format="png")
