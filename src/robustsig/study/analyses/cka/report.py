"""The CKA section of the report: CKA between corresponding layers against relative depth (the id set and the mean
over the shift sets), and a heatmap for each pair computed layer x layer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from robustsig.errors import InputError
from robustsig.report.figures import in_order
from robustsig.study.analyses.cka.options import H, CkaRow
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page


def _ticks(count: int) -> list[int]:
    """About 12 labelled positions of ``count`` layers, the last one (``h``) always among them."""
    ticks = list(range(0, count, max(1, count // 12)))
    return ticks if not count or ticks[-1] == count - 1 else [*ticks, count - 1]


def cka_heatmap_figure(cka: Sequence[CkaRow], model_a: str, model_b: str, dataset: str | None = None) -> Figure:
    """CKA of every layer of ``model_a`` against every layer of ``model_b`` (missing pairs blank; not in the paper), on
    ``dataset`` (default: the first of the pair's rows); ``h``, the head's input, is the last row and column."""
    rows = [row for row in cka if (row.model_a, row.model_b) == (model_a, model_b)]
    if not rows:
        raise InputError(f"no CKA rows for the pair ({model_a!r}, {model_b!r})")
    dataset = rows[0].dataset if dataset is None else dataset
    rows = [row for row in rows if row.dataset == dataset]
    if not rows:
        raise InputError(f"no CKA rows for the pair ({model_a!r}, {model_b!r}) on {dataset!r}")
    layers_a = in_order([row.layer_a for row in rows])
    layers_b = in_order([row.layer_b for row in rows])
    grid = [[math.nan] * len(layers_b) for _ in layers_a]
    for row in rows:
        grid[layers_a.index(row.layer_a)][layers_b.index(row.layer_b)] = row.cka
    figure = Figure(figsize=(5.6, 4.8), layout="constrained")
    ax = figure.subplots()
    # unbiased HSIC can be negative near independence: the scale starts below 0 when a value does
    image = ax.imshow(grid, vmin=min(0.0, min((row.cka for row in rows), default=0.0)), vmax=1.0, cmap="magma",
                      origin="lower", aspect="auto")
    figure.colorbar(image, ax=ax, label="CKA")
    ticks_a, ticks_b = _ticks(len(layers_a)), _ticks(len(layers_b))
    ax.set_yticks(ticks_a, [layers_a[i] for i in ticks_a], fontsize=6)
    ax.set_xticks(ticks_b, [layers_b[i] for i in ticks_b], fontsize=6, rotation=60, ha="right")
    ax.set_ylabel(model_a)
    ax.set_xlabel(model_b)
    ax.set_title(f"CKA: {model_a} vs {model_b} on {dataset} ({rows[0].estimator})", fontsize=10)
    return figure


def _cka_curve(rows: Sequence[CkaRow]) -> list[float] | None:
    """CKA between corresponding layers of one pair on one dataset (the diagonal of a layer x layer grid), or None
    when the layers do not correspond one to one."""
    layers_a = in_order([row.layer_a for row in rows])
    layers_b = in_order([row.layer_b for row in rows])
    if len(rows) == len(layers_a) * len(layers_b) and len(layers_a) == len(layers_b) > 1:
        values = {(row.layer_a, row.layer_b): row.cka for row in rows}
        return [values[(a, b)] for a, b in zip(layers_a, layers_b)]
    if len(rows) == len(layers_a) == len(layers_b):
        return [row.cka for row in rows]
    return None


def cka_depth_figure(cka: Sequence[CkaRow], id_set: str | None = None) -> Figure:
    """Figs. 5 and 6: CKA between corresponding layers of each pair (the i-th layer of a with the i-th of b) against
    relative depth, one panel per pair: the id set in orange, the mean over the shift sets (every other dataset)
    in blue with a band of one standard deviation. For a pair computed layer x layer, the diagonal is used. The
    head's input ``h``, the last point of a curve that has it, is at relative depth 1 and labelled there.

    Args:
        cka: the rows of ``cka.csv``.
        id_set: the in-distribution set's name (default: the first dataset of the rows).
    """
    if not cka:
        raise InputError("no CKA rows to plot")
    id_set = cka[0].dataset if id_set is None else id_set
    curves: dict[tuple[str, str], dict[str, list[float]]] = {}
    for pair in in_order([f"{row.model_a}\x00{row.model_b}" for row in cka]):
        model_a, model_b = pair.split("\x00")
        rows = [row for row in cka if (row.model_a, row.model_b) == (model_a, model_b)]
        per_set = {name: _cka_curve([row for row in rows if row.dataset == name])
                   for name in in_order([row.dataset for row in rows])}
        per_set = {name: curve for name, curve in per_set.items() if curve is not None}
        if per_set and len({len(curve) for curve in per_set.values()}) == 1:
            curves[(model_a, model_b)] = per_set
    if not curves:
        raise InputError("no CKA pair has corresponding layers (the same number of layers in a and b)")
    columns = min(3, len(curves))
    lines = math.ceil(len(curves) / columns)
    figure = Figure(figsize=(3.4 * columns + 0.6, 2.8 * lines + 0.4), layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False, sharey=True)
    for ax, ((model_a, model_b), per_set) in zip(axes.flat, curves.items()):
        length = len(next(iter(per_set.values())))
        depth = [i / max(length - 1, 1) for i in range(length)]
        last = [(row.layer_a, row.layer_b) for row in cka if (row.model_a, row.model_b) == (model_a, model_b)][-1]
        ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0], ["0", "0.25", "0.5", "0.75", H if last == (H, H) else "1"])
        shifts = [curve for name, curve in per_set.items() if name != id_set]
        if shifts:
            values = np.array(shifts, dtype=float)
            mean, std = values.mean(axis=0), values.std(axis=0)  # population std over the shift sets
            ax.fill_between(depth, mean - std, mean + std, color="tab:blue", alpha=0.25, linewidth=0)
            ax.plot(depth, mean, color="tab:blue", marker=".", label=f"shift sets: mean ± std ({len(shifts)})")
        if id_set in per_set:
            ax.plot(depth, per_set[id_set], color="tab:orange", marker=".", label=f"{id_set} (id)")
        ax.set_title(f"{model_a} vs {model_b}", fontsize=8)
        lowest = min([0.0, *(value for curve in per_set.values() for value in curve)])
        ax.set_ylim(lowest - 0.02 if lowest < 0 else 0.0, 1.02)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("relative depth", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("CKA")
    estimators = ", ".join(in_order([row.estimator for row in cka]))
    figure.suptitle(f"CKA between corresponding layers ({estimators} estimator)", fontsize=10)
    return figure


def cka_section(page: Page, models: Sequence[ModelRow]) -> str | None:
    """The CKA section of the report (None without results)."""
    rows = page.read(CkaRow)
    if not rows:
        return None
    id_set = page.id_dataset(rows)
    estimators = ", ".join(dict.fromkeys(row.estimator for row in rows))
    text = page.note(f"Estimator: {estimators} (minibatch: the paper's, torch_cka's unbiased HSIC summed over "
                     "minibatches of flattened layer outputs; pooled: CKA of pooled activations over all images). "
                     f"Datasets: {', '.join(dict.fromkeys(row.dataset for row in rows))}.")
    try:
        depth = cka_depth_figure(rows, id_set)
    except InputError as error:  # no pair with corresponding layers: say so instead of a figure
        text += page.note(str(error))
    else:
        text += page.figure(lambda: depth, "fig5_cka_depth", f"Figs. 5 and 6: CKA between corresponding layers of "
                            f"each pair, against relative depth: {id_set} (orange) and the mean ± std over the shift "
                            "sets (blue); the last point, h, is the head's input.", ["cka"])
    pairs = list(dict.fromkeys((row.model_a, row.model_b) for row in rows))
    for i, (model_a, model_b) in enumerate(pairs):
        pair_rows = [row for row in rows if (row.model_a, row.model_b) == (model_a, model_b)]
        shown = id_set if any(row.dataset == id_set for row in pair_rows) else pair_rows[0].dataset
        pair_rows = [row for row in pair_rows if row.dataset == shown]
        if len({row.layer_b for row in pair_rows}) > 1 and len(pair_rows) > len({row.layer_a for row in pair_rows}):
            text += page.figure(lambda a=model_a, b=model_b, d=shown: cka_heatmap_figure(rows, a, b, d),
                                f"cka_heatmap_{i}", f"CKA of every layer of {model_a} against every layer of "
                                f"{model_b}, on {shown} (not in the paper).", ["cka"])
    return text
