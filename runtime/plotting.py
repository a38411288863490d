"""Learning-curve plots (PNG) for run folders and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402
import numpy as np  # noqa: E402


def plot_learning_curve(
    history: Sequence[Mapping[str, float | str]],
    path: str | Path,
    title: str,
    phase_boundaries: Mapping[str, int] | None = None,
    xlabel: str = "training step",
    metric: str = "normalized_score",
    reference: tuple[str, float] | None = None,
    limits: tuple[float, float] | None = None,
) -> Path:
    """Plot an evaluation metric (mean ± std over episodes) against training step.

    ``history`` holds the evaluation records written to ``eval.json`` (keys ``step``,
    ``phase``, ``<metric>``, ``<metric>_std``); ``phase_boundaries`` maps a label to the
    step where that phase starts (drawn as a dashed line); ``reference`` is a labelled level
    (e.g. the dataset's own score, a dotted line); ``limits`` clips the bands to the metric's
    range (a success rate's band stays in [0, 1]).
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    phases = list(dict.fromkeys(str(r["phase"]) for r in history))
    previous: list = []
    for phase in phases:
        # each phase's line starts where the previous one ended (e.g. online from the offline end)
        records = previous[-1:] + [r for r in history if r["phase"] == phase]
        previous = records
        steps = np.array([r["step"] for r in records], dtype=float)
        mean = np.array([r[metric] for r in records], dtype=float)
        spread = metric.removesuffix("_mean") + "_std"  # normalized_score_std, return_std
        std = np.array([r[spread] for r in records], dtype=float)
        low, high = mean - std, mean + std
        if limits is not None:
            low, high = np.clip(low, *limits), np.clip(high, *limits)
        ax.plot(steps, mean, marker="o", markersize=3, label=phase)
        ax.fill_between(steps, low, high, alpha=0.2)
    if reference is not None and np.isfinite(reference[1]):
        ax.axhline(reference[1], color="black", linestyle=":", linewidth=1, label=reference[0])
    for label, step in (phase_boundaries or {}).items():
        ax.axvline(step, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (step, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                    textcoords="offset points", fontsize=8, color="grey")
    _finish(ax, title, xlabel, metric.replace("_", " "))
    return _save(fig, path)


def plot_seed_curves(
    curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    path: str | Path,
    title: str,
    xlabel: str = "step",
    ylabel: str = "normalised score",
    vlines: Mapping[str, float] | None = None,
    hlines: Mapping[str, float] | None = None,
) -> Path:
    """Plot the mean over seeds with a shaded ± std band for each named method.

    ``curves[name]`` is a list (one per seed) of ``(steps, values)`` arrays on a shared grid;
    ``vlines`` mark steps (e.g. the end of a warm-up), ``hlines`` reference levels (e.g. SFT's).
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, runs in curves.items():
        steps = runs[0][0]
        values = np.stack([v for _, v in runs])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=f"{name} (n={len(runs)})")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    for label, x in (vlines or {}).items():
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="grey")
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="black", linestyle=":", linewidth=1, label=label)
    _finish(ax, title, xlabel, ylabel)
    return _save(fig, path)


BandCurve = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]  # steps, centre, low, high, runs


def plot_band_curves(
    curves: Mapping[str, BandCurve],
    path: str | Path,
    title: str,
    xlabel: str = "step",
    ylabel: str = "normalised score",
    hlines: Mapping[str, float] | None = None,
    vline: str | None = None,
) -> Path:
    """Plot a centre line (e.g. the IQM over seeds) with a shaded interval per named method;
    ``curves[name] = (steps, centre, low, high, runs)``; ``hlines`` mark reference levels and
    ``vline`` labels a dashed line at step 0 (drawn when some curve has steps on both sides)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    _bands(ax, curves, hlines, vline)
    _finish(ax, title, xlabel, ylabel)
    return _save(fig, path)


def plot_band_panels(
    panels: Mapping[str, Mapping[str, BandCurve]],
    path: str | Path,
    title: str,
    xlabel: str = "step",
    ylabel: str = "normalised score",
    hlines: Mapping[str, float] | None = None,
    vline: str | None = None,
    columns: int = 3,
) -> Path:
    """One panel per ``panels[name]``, each drawn as :func:`plot_band_curves` draws its curves
    (a curve keeps its colour across panels), sharing the y-axis and one legend per panel."""
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), sharey=True, squeeze=False)
    colours: dict[str, str] = {}
    for ax, (name, curves) in zip(axes.flat, panels.items()):
        for label in curves:
            colours.setdefault(label, f"C{len(colours) % 10}")
        _bands(ax, curves, hlines, vline, colours)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.supxlabel(xlabel)  # once: the panels share their step axis
    fig.suptitle(title)
    return _save(fig, path)


def _bands(ax: plt.Axes, curves: Mapping[str, BandCurve], hlines: Mapping[str, float] | None, vline: str | None,
           colours: Mapping[str, str] | None = None) -> None:
    """The centre lines with shaded intervals, reference levels and the step-0 line of one axes."""
    for name, (steps, centre, low, high, runs) in curves.items():
        line, = ax.plot(steps, centre, label=f"{name} (n={runs})", color=(colours or {}).get(name))
        ax.fill_between(steps, low, high, alpha=0.2, color=line.get_color(), linewidth=0)
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="black", linestyle=":", linewidth=1, label=label)
    if vline and any(min(steps) < 0 < max(steps) for steps, *_ in curves.values()):
        ax.axvline(0, color="grey", linestyle="--", linewidth=1, label=vline)


def plot_interval_bars(
    rows: Sequence[tuple[str, float, float | None, float | None]],
    path: str | Path,
    title: str,
    xlabel: str,
    limits: tuple[float, float] | None = None,
    marker: float | None = None,
) -> Path:
    """One horizontal bar per ``(label, value, low, high)`` row: the value as a dot, the interval as
    a line (none when ``low`` is ``None``); ``marker`` draws a dashed vertical reference."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2))
    for i, (label, value, low, high) in enumerate(rows):
        if low is not None and high is not None:
            ax.plot([low, high], [i, i], color="tab:blue", linewidth=4, alpha=0.5)
        ax.plot([value], [i], "o", color="tab:blue")
    ax.set_yticks(range(len(rows)), [row[0] for row in rows])
    ax.invert_yaxis()
    if marker is not None:
        ax.axvline(marker, color="grey", linestyle="--", linewidth=1)
    if limits:
        ax.set_xlim(*limits)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _finish(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20k, 1.5M: step counts stay readable
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    # outside the axes, so it never covers a curve
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
