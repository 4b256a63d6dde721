"""Which plots a report has: renderer-neutral chart specs built from run data.

One spec feeds both renderers (plotly for the page, matplotlib for the PNGs), so
the two always show the same curves. Metrics are grouped by the prefix of their
name (``train/``, ``eval/``, ``rollout/``, ``dpo/``, ``kl/``...), whatever keys a
recipe logs; a ``<name>_mean`` with a ``<name>_std`` becomes one curve with a
band.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from loops_runner.report.sources import RunData, Series, SweepData, is_number

# Sections in this order first; any other prefix follows alphabetically.
SECTION_ORDER = ("train", "eval", "rollout", "dpo", "distill", "kl", "optim", "time")
_LOSS_NAMES = ("loss", "nll")
_BAND_MEAN, _BAND_STD = "_mean", "_std"
# Per-step curves this long also get a smoothed trend (bias-corrected EMA, as TensorBoard).
SMOOTH_FROM_POINTS, SMOOTH_WEIGHT = 50, 0.9


@dataclass
class Curve:
    name: str
    steps: list[float]  # x against step (or a swept parameter's value for scatter charts)
    elapsed_s: list[float | None]  # x against wall time since the run's first line
    values: list[float]
    band: list[float] | None = None  # +/- this around values (a standard deviation)
    smoothed: list[float] | None = None  # a trend line over noisy per-step values


@dataclass
class Chart:
    slug: str  # unique, file-name safe: the PNG's name and the page element's id
    title: str
    y_label: str
    curves: list[Curve]
    x_label: str = "step"
    scatter: bool = False  # points (objective vs a parameter), no wall-time view
    categories: list[str] | None = None  # x tick labels when the parameter is not numeric
    x_log: bool = False


@dataclass
class Section:
    title: str
    charts: list[Chart] = field(default_factory=list)


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "chart"


def prefix_of(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else "other"


def _section_rank(prefix: str) -> tuple[int, str]:
    return (SECTION_ORDER.index(prefix) if prefix in SECTION_ORDER else len(SECTION_ORDER), prefix)


def _is_loss(key: str) -> bool:
    return prefix_of(key) in ("train", "eval") and key.rsplit("/", 1)[-1] in _LOSS_NAMES


def smooth(values: list[float], weight: float = SMOOTH_WEIGHT) -> list[float]:
    """Exponential moving average, bias-corrected so the start is not pulled to zero."""
    smoothed, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**count))
    return smoothed


def _curve(name: str, series: Series, band: Series | None = None, *,
           trend: bool = False) -> Curve:
    band_values = None
    if band is not None:
        by_step = dict(zip(band.steps, band.values, strict=True))
        band_values = [by_step.get(step, 0.0) for step in series.steps]
    smoothed = smooth(series.values) if trend and len(series.values) >= SMOOTH_FROM_POINTS \
        and band is None else None
    return Curve(name, [float(s) for s in series.steps], series.elapsed_s, series.values,
                 band_values, smoothed)


def _band_pairs(keys: list[str]) -> dict[str, str]:
    """``<name>_mean`` -> ``<name>_std`` for every metric logged with its spread."""
    present = set(keys)
    return {key: key[: -len(_BAND_MEAN)] + _BAND_STD for key in keys
            if key.endswith(_BAND_MEAN) and key[: -len(_BAND_MEAN)] + _BAND_STD in present}


def _group(keys: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(prefix_of(key), []).append(key)
    return {prefix: grouped[prefix] for prefix in sorted(grouped, key=_section_rank)}


def run_sections(run: RunData) -> list[Section]:
    """A run's plots: the losses together first, then one chart per metric by prefix."""
    keys = run.metric_keys()
    bands = _band_pairs(keys)
    hidden = set(bands.values())  # drawn as bands
    sections = []
    # train before eval: the sparse eval curve is drawn over the dense train one.
    losses = sorted((key for key in keys if _is_loss(key)),
                    key=lambda key: (_section_rank(prefix_of(key)), key))
    if losses:
        chart = Chart("loss", "Loss: " + ", ".join(losses), "loss",
                      [_curve(key, run.series(key), trend=True) for key in losses])
        sections.append(Section("Loss", [chart]))
        hidden.update(losses)
    breakdowns = _breakdowns([k for k in keys if k not in hidden])
    hidden.update(child for children in breakdowns.values() for child in children)
    for prefix, group in _group([k for k in keys if k not in hidden]).items():
        section = Section(prefix)
        for key in group:
            band = run.series(bands[key]) if key in bands else None
            label = f"{key} ± {bands[key].rsplit('/', 1)[-1]}" if key in bands else key
            curves = [_curve(key, run.series(key), band, trend=True)]
            if key in breakdowns:
                label = f"{key} and its parts"
                curves += [_curve(child, run.series(child)) for child in breakdowns[key]]
            section.charts.append(Chart(slugify(key), label, key.rsplit("/", 1)[-1], curves))
        sections.append(section)
    return sections


def _breakdowns(keys: list[str]) -> dict[str, list[str]]:
    """``metric`` -> its parts ``metric/<part>`` (e.g. accuracy per task family): drawn
    on the metric's own chart, one curve each, rather than a chart per part."""
    present = set(keys)
    parts: dict[str, list[str]] = {}
    for key in keys:
        parent = key.rsplit("/", 1)[0]
        if "/" in parent and parent in present:
            parts.setdefault(parent, []).append(key)
    return parts


def sweep_sections(sweep: SweepData) -> list[Section]:
    """Every job's curves overlaid per metric, then the objective against each parameter."""
    sections = []
    parameter_section = objective_section(sweep)
    if parameter_section.charts:
        sections.append(parameter_section)
    keys = sorted({key for job in sweep.jobs for key in job.run.metric_keys()})
    labels = job_labels(sweep)
    for prefix, group in _group(keys).items():
        section = Section(prefix)
        for key in group:
            curves = [_curve(label, job.run.series(key), trend=True)
                      for job, label in zip(sweep.jobs, labels, strict=True)]
            curves = [curve for curve in curves if curve.values]
            section.charts.append(Chart(slugify(key), key, key.rsplit("/", 1)[-1], curves))
        sections.append(section)
    return sections


def swept_parameters(sweep: SweepData) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order."""
    values: dict[str, set[str]] = {}
    for job in sweep.jobs:
        for key, value in job.parameters().items():
            values.setdefault(key, set()).add(value)
    return [key for key, seen in values.items()
            if len(seen) > 1 or any(key not in job.parameters() for job in sweep.jobs)]


def job_labels(sweep: SweepData) -> list[str]:
    """Short legend names: the swept values (``learning_rate=0.001 rank=4``), else the dir."""
    parameters = swept_parameters(sweep)
    labels = []
    for job in sweep.jobs:
        values = job.parameters()
        shown = [f"{p.rsplit('.', 1)[-1]}={values.get(p, '(default)')}" for p in parameters]
        labels.append(" ".join(shown) or job.run.label)
    if len(set(labels)) < len(labels):  # same values twice (e.g. compared runs): use dirs
        labels = [job.run.label for job in sweep.jobs]
    return labels


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def objective_section(sweep: SweepData) -> Section:
    section = Section(f"Objective ({sweep.objective or 'none'}) against each swept parameter")
    objective = sweep.objective
    if objective is None:
        return section
    for parameter in swept_parameters(sweep):
        points = [(job.parameters().get(parameter, "(default)"), job.final_metrics.get(objective),
                   label) for job, label in zip(sweep.jobs, job_labels(sweep), strict=True)]
        points = [(x, y, label) for x, y, label in points if is_number(y)]
        if not points:
            continue
        numbers = [_as_float(x) for x, _, _ in points]
        categories = None
        if all(n is not None for n in numbers):
            xs = [float(n) for n in numbers if n is not None]
        else:
            categories = sorted({x for x, _, _ in points})
            xs = [float(categories.index(x)) for x, _, _ in points]
        positive = [x for x in xs if x > 0]
        x_log = categories is None and len(positive) == len(xs) and max(xs) / min(xs) >= 10
        curves = [Curve(label, [x], [None], [float(y)]) for x, (_, y, label) in
                  zip(xs, points, strict=True)]
        section.charts.append(Chart(slugify(f"objective-vs-{parameter}"),
                                    f"{objective} vs {parameter}", objective, curves,
                                    x_label=parameter, scatter=True, categories=categories,
                                    x_log=x_log))
    return section
