"""What the analyses' figures share (matplotlib, no pyplot state: each function returns a new ``Figure``): panel
grids, one panel per backbone x pretraining group of the pool, the curves of a pruned model against the fraction
pruned (the head's pruning and the low-rank encoder draw alike), and :func:`save_figure`. Each analysis draws its
own figures in its module (:mod:`robustsig.study.analyses`).

Example:
    >>> from robustsig.report.figures import grid
    >>> figure, axes = grid(3)
    >>> len(axes)
    3
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from robustsig.errors import InputError
from robustsig.study.pool import KIND_COLORS, ModelGroup, model_groups
from robustsig.study.results import ModelRow

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
ORDER_STYLES = {"singular": "-", "importance": "--", "random": ":"}
"""Line style per pruning order."""
_STYLE_WORDS = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dotted"}


def order_styles(rows: Iterable[Any], names: dict[str, str]) -> str:
    """What the line styles of :func:`curve_figure` mean, for the orders the rows hold only (a caption never names
    a line the figure does not draw): ``"solid: singular value; dashed: importance"``."""
    present = dict.fromkeys(row.order for row in rows)
    return "; ".join(f"{_STYLE_WORDS[ORDER_STYLES.get(order, '-.')]}: {names.get(order, order)}"
                     for order in sorted(present, key=lambda order: list(ORDER_STYLES).index(order)
                                         if order in ORDER_STYLES else len(ORDER_STYLES)))


def in_order(values: Iterable[str]) -> list[str]:
    """The distinct values, in the order they first appear."""
    return list(dict.fromkeys(values))


def grid(count: int, panel: tuple[float, float] = (3.6, 2.8), columns: int = 4) -> tuple[Figure, list]:
    """A figure with ``count`` panels of size ``panel`` (inches), at most ``columns`` per line; the axes."""
    columns = max(1, min(count, columns))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def present_groups(models: Sequence[ModelRow], present: set[str]) -> list[ModelGroup]:
    """The pool's figure groups (:func:`robustsig.study.pool.model_groups`) restricted to the models in
    ``present``; groups left empty are dropped."""
    groups = [ModelGroup(group.title, tuple(m for m in group.members if m.model in present))
              for group in model_groups(models)]
    return [group for group in groups if group.members]


def group_panels(groups: Sequence[ModelGroup], title: str) -> tuple[Figure, list]:
    """One panel per group, under ``title``.

    Raises:
        InputError: no group.
    """
    if not groups:
        raise InputError(f"{title}: no models to plot")
    figure, axes = grid(len(groups))
    figure.suptitle(title)
    return figure, axes


def curve_figure(models: Sequence[ModelRow], rows: Sequence[Any], dataset: str, metric: str = "accuracy", *,
                 title: str = "Pruning singular directions", xlabel: str = "fraction of directions pruned") -> Figure:
    """``metric`` (``"accuracy"`` on ``dataset``, or ``"er"``) against the fraction pruned, for rows with the fields
    ``model, order, fraction, dataset, accuracy, er`` (the head's pruning, the low-rank encoder); color: model kind,
    line style: pruning order. One panel per backbone x pretraining."""
    if metric not in ("accuracy", "er"):
        raise InputError(f"metric: expected 'accuracy' or 'er'; got {metric!r}")
    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        value = row.accuracy if metric == "accuracy" else row.er
        if row.dataset == dataset and value is not None:
            curves.setdefault((row.model, row.order), []).append((row.fraction, 100 * value))
    groups = present_groups(models, {model for model, _ in curves})
    name = f"accuracy on {dataset} (%)" if metric == "accuracy" else "effective robustness (%)"
    figure, axes = group_panels(groups, f"{title}: {name}")
    for ax, group in zip(axes, groups):
        for model in group.members:
            for (curve_model, order), points in curves.items():
                if curve_model == model.model:
                    points.sort()
                    ax.plot(*zip(*points), color=KIND_COLORS.get(model.kind), linestyle=ORDER_STYLES.get(order, "-."),
                            marker=".", markersize=3, label=f"{model.kind}, {order}")
        ax.set_title(group.title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure


def plain_log_axis(axis: Any) -> None:
    """Tick labels of a log-scale axis as plain numbers (``6``, ``0.02``), not ``6 x 10^0``; with at most a decade
    on the axis, minor ticks get labels too (else the axis would show one label or none)."""
    ax = axis.axes
    low, high = sorted(ax.get_ylim() if axis is ax.yaxis else ax.get_xlim())  # applies any pending autoscale
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.set_major_formatter(plain)
    narrow = low > 0 and high / low < 10
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0) if narrow else (), numticks=12))
    axis.set_minor_formatter(plain if narrow else FuncFormatter(lambda value, _: ""))


def _titles(figure: Figure) -> list[Any]:
    texts = [figure._suptitle] if figure._suptitle is not None else []
    for ax in figure.axes:
        if ax.get_visible():
            texts += [ax.title, ax._left_title, ax._right_title]
    return [text for text in texts if text.get_visible() and text.get_text()]


def cut_texts(figure: Figure) -> list[str]:
    """The titles and legends of ``figure`` that reach past its edges (what the saved image would cut), by text."""
    renderer = figure.canvas.get_renderer() if hasattr(figure.canvas, "get_renderer") else None
    figure.draw_without_rendering()
    bounds = figure.bbox
    cut = []
    for text in _titles(figure):
        box = text.get_window_extent(renderer)
        if box.x0 < bounds.x0 - 0.5 or box.x1 > bounds.x1 + 0.5 or box.y1 > bounds.y1 + 0.5:
            cut.append(text.get_text())
    for ax in figure.axes:
        legend = ax.get_legend()
        if legend is not None and ax.get_visible():
            box = legend.get_window_extent(renderer)
            if box.x0 < bounds.x0 - 0.5 or box.x1 > bounds.x1 + 0.5 or box.y0 < bounds.y0 - 0.5 or \
                    box.y1 > bounds.y1 + 0.5:
                cut.append(f"legend of {ax.get_title() or 'a panel'}")
    return cut


def fit_texts(figure: Figure) -> None:
    """Wrap every title wider than the figure onto several lines, and shrink a legend that reaches past the figure's
    edges, so that no saved figure cuts them (a one-panel figure is narrow; a long group name is not)."""
    figure.draw_without_rendering()
    width = figure.bbox.width
    for text in _titles(figure):
        box = text.get_window_extent()
        if box.width > width * 0.98:
            lines = text.get_text().split("\n")
            columns = max(12, int(max(len(line) for line in lines) * width * 0.95 / box.width))
            text.set_text("\n".join(textwrap.fill(line, columns) for line in lines))
    for _ in range(3):
        figure.draw_without_rendering()
        legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
        cut = [legend for legend in legends if not figure.bbox.contains(*legend.get_window_extent().min)
               or not figure.bbox.contains(*legend.get_window_extent().max)]
        if not cut:
            break
        for legend in cut:
            for text in legend.get_texts():
                text.set_fontsize(max(4.0, text.get_fontsize() * 0.8))


def save_figure(figure: Figure, directory: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``figure`` as ``STEM.png`` (100 dpi) and ``STEM.svg`` (text as paths, no date: reproducible) in
    ``directory``, its titles and legends fitted inside it (:func:`fit_texts`); returns both paths."""
    fit_texts(figure)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{stem}.png", directory / f"{stem}.svg"
    figure.savefig(png, format="png", dpi=100)
    figure.savefig(svg, format="svg", metadata={"Date": None})
    return png, svg
