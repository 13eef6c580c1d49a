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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from robustsig.errors import InputError
from robustsig.study.pool import KIND_COLORS, ModelGroup, model_groups
from robustsig.study.results import ModelRow

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
ORDER_STYLES = {"singular": "-", "importance": "--", "random": ":"}
"""Line style per pruning order."""


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


def save_figure(figure: Figure, directory: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``figure`` as ``STEM.png`` (100 dpi) and ``STEM.svg`` (text as paths, no date: reproducible) in
    ``directory``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{stem}.png", directory / f"{stem}.svg"
    figure.savefig(png, format="png", dpi=100)
    figure.savefig(svg, format="svg", metadata={"Date": None})
    return png, svg
