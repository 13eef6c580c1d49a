"""The paper's figures from result rows (matplotlib, no pyplot state: each function returns a new ``Figure``).

- :func:`robustness_figure` (Fig. 1): ACC(I) vs ACC(S) on logit axes (ticks in percent), the baseline line, the pool.
- :func:`importance_figure` (Fig. 2/7): importance of the head's singular directions, ranked, log scale.
- :func:`pruning_figure` (Fig. 3/8/9): accuracy or ER vs the fraction of directions pruned.
- :func:`venn_figure` (Fig. 4): overlaps of concept sets; ``matplotlib_venn`` (equal-area regions) for 2 or 3
  sets, an UpSet-style chart (bars of exclusive intersection sizes over a membership matrix) for 1 or more than
  3 sets, where Venn circles cannot show every intersection.
- :func:`cka_depth_figure`, :func:`cka_heatmap_figure` (Fig. 5/6): CKA per layer.
- :func:`concept_thresholds_figure`: unique concepts and polysemanticity against the AP threshold (footnote 4).
- :func:`wiseft_figure` (Fig. 11-18): accuracy, ER, kurtosis and unique concepts vs the Wise-FT alpha.

:func:`save_figure` writes a figure as PNG and SVG.

Example:
    >>> from robustsig.report.figures import venn_figure
    >>> figure = venn_figure({"zero-shot": {"sky", "dog"}, "finetuned": {"dog"}}, "concepts")
    >>> len(figure.axes)
    1
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

from robustsig.errors import InputError
from robustsig.report.pool import KIND_COLORS, ModelGroup, model_groups
from robustsig.study.results import (CkaRow, ConceptThresholdRow, ImportanceRow, ModelRow, PruningRow, RobustnessRow,
                                     WiseFtRow)

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
_ORDER_STYLES = {"singular": "-", "importance": "--", "random": ":"}
_PERCENT_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98,
                  0.99, 0.995, 0.998, 0.999)
_MAX_TICKS = 12
"""A logit axis keeps a tick only when it is at least 1/12 of the axis (in logit units) past the last one kept."""
_CLIP = 1e-3


def _logit(p: float) -> float:
    p = min(max(p, _CLIP), 1 - _CLIP)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _grid(count: int, panel: tuple[float, float] = (3.6, 2.8), columns: int = 4) -> tuple[Figure, list]:
    columns = max(1, min(count, columns))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def _percent_axis(axis, low: float, high: float) -> None:
    ticks: list[float] = []
    spacing = (_logit(high) - _logit(low)) / _MAX_TICKS
    for tick in (tick for tick in _PERCENT_TICKS if low <= tick <= high):
        if not ticks or _logit(tick) - _logit(ticks[-1]) >= spacing:
            ticks.append(tick)
    ticks = ticks or [low, high]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:g}%"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def robustness_figure(models: Sequence[ModelRow], robustness: Sequence[RobustnessRow]) -> Figure:
    """Fig. 1: shift accuracy against in-distribution accuracy on logit axes, the baseline line, the pool
    (color: kind; marker: backbone)."""
    if not robustness:
        raise InputError("robustness_figure needs at least one row of robustness.csv")
    meta = {model.model: model for model in models}
    backbones = list(dict.fromkeys(meta[row.model].backbone if row.model in meta else "?" for row in robustness))
    figure = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = figure.subplots()
    ax.set_xscale("logit")
    ax.set_yscale("logit")
    values = [min(max(v, _CLIP), 1 - _CLIP) for row in robustness for v in (row.acc_id, row.acc_shift)]
    low = _sigmoid(_logit(min(values)) - 0.4)
    high = _sigmoid(_logit(max(values)) + 0.4)
    b1, b0 = robustness[0].b1, robustness[0].b0
    xs = [_sigmoid(_logit(low) + (_logit(high) - _logit(low)) * i / 100) for i in range(101)]
    ax.plot(xs, [_sigmoid(b1 * _logit(x) + b0) for x in xs], color="black", linewidth=1.2,
            label=f"baseline: logit(y) = {b1:.3g} logit(x) {'+' if b0 >= 0 else '-'} {abs(b0):.3g}")
    ax.plot(xs, xs, color="grey", linewidth=0.8, linestyle=":", label="y = x")
    seen: set[tuple[str, str]] = set()
    for row in robustness:
        model = meta.get(row.model)
        kind = model.kind if model else "?"
        backbone = model.backbone if model else "?"
        label = f"{kind}, {backbone}" if (kind, backbone) not in seen else None
        seen.add((kind, backbone))
        ax.scatter([min(max(row.acc_id, _CLIP), 1 - _CLIP)], [min(max(row.acc_shift, _CLIP), 1 - _CLIP)],
                   color=KIND_COLORS.get(kind, "#7f7f7f"), marker=_MARKERS[backbones.index(backbone) % len(_MARKERS)],
                   s=40, edgecolor="black", linewidth=0.4, zorder=3, label=label)
    ax.set_xlim(low, high)
    ax.set_ylim(min(low, _sigmoid(b1 * _logit(low) + b0)), high)
    _percent_axis(ax.xaxis, *ax.get_xlim())
    _percent_axis(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel("ACC(I): in-distribution accuracy (logit scale)")
    ax.set_ylabel("ACC(S): mean shift accuracy (logit scale)")
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return figure


def _group_panels(groups: Sequence[ModelGroup], title: str) -> tuple[Figure, list]:
    if not groups:
        raise InputError(f"{title}: no models to plot")
    figure, axes = _grid(len(groups))
    figure.suptitle(title)
    return figure, axes


def importance_figure(models: Sequence[ModelRow], importance: Sequence[ImportanceRow]) -> Figure:
    """Fig. 2/7: importance of each singular direction, ranked from the most important, log scale; privileged
    directions marked. One panel per backbone x pretraining, its models colored by kind."""
    by_model: dict[str, list[ImportanceRow]] = {}
    for row in importance:
        by_model.setdefault(row.model, []).append(row)
    groups = [ModelGroup(group.title, tuple(m for m in group.members if m.model in by_model))
              for group in model_groups(models)]
    figure, axes = _group_panels([group for group in groups if group.members], "Importance of singular directions")
    for ax, group in zip(axes, [group for group in groups if group.members]):
        for model in group.members:
            rows = sorted(by_model[model.model], key=lambda row: -row.importance)
            ranks = range(len(rows))
            ax.plot(ranks, [max(row.importance, 1e-12) for row in rows], color=KIND_COLORS.get(model.kind),
                    linewidth=1.2, label=f"{model.kind} ({model.model})")
            marked = [(rank, row.importance) for rank, row in zip(ranks, rows) if row.privileged]
            if marked:
                ax.scatter(*zip(*marked), color=KIND_COLORS.get(model.kind), marker="x", s=25, zorder=3)
        ax.set_yscale("log")
        ax.set_title(group.title, fontsize=9)
        ax.set_xlabel("direction rank (by importance)")
        ax.set_ylabel("importance")
        ax.legend(fontsize=6)
    return figure


def pruning_figure(models: Sequence[ModelRow], pruning: Sequence[PruningRow], dataset: str, metric: str = "accuracy",
                   *, title: str = "Pruning singular directions", xlabel: str = "fraction of directions pruned"
                   ) -> Figure:
    """Fig. 3/8/9: ``metric`` (``"accuracy"`` on ``dataset``, or ``"er"``) vs the fraction of singular directions
    pruned; color: model kind, line style: pruning order. One panel per backbone x pretraining. Any rows with the
    same fields (the low-rank model's :class:`~robustsig.study.results.LowRankRow`) plot alike, with their own
    ``title`` and ``xlabel``."""
    if metric not in ("accuracy", "er"):
        raise InputError(f"metric: expected 'accuracy' or 'er'; got {metric!r}")
    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in pruning:
        value = row.accuracy if metric == "accuracy" else row.er
        if row.dataset == dataset and value is not None:
            curves.setdefault((row.model, row.order), []).append((row.fraction, 100 * value))
    present = {model for model, _ in curves}
    groups = [ModelGroup(group.title, tuple(m for m in group.members if m.model in present))
              for group in model_groups(models)]
    groups = [group for group in groups if group.members]
    name = f"accuracy on {dataset} (%)" if metric == "accuracy" else "effective robustness (%)"
    figure, axes = _group_panels(groups, f"{title}: {name}")
    for ax, group in zip(axes, groups):
        for model in group.members:
            for (curve_model, order), points in curves.items():
                if curve_model == model.model:
                    points.sort()
                    ax.plot(*zip(*points), color=KIND_COLORS.get(model.kind), linestyle=_ORDER_STYLES.get(order, "-."),
                            marker=".", markersize=3, label=f"{model.kind}, {order}")
        ax.set_title(group.title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure


def venn_figure(sets: Mapping[str, set[str]], title: str) -> Figure:
    """Fig. 4: overlaps of concept sets.

    Two or three sets: a Venn diagram (``matplotlib_venn``) whose regions have equal areas, each showing its
    count (every intersection stays visible; area-weighted circles mislead with small counts). One set, or more
    than three: an UpSet-style chart (bars: concepts in exactly one combination of sets; dots below: the sets of
    that combination), since circles cannot show every intersection of four or more sets. All sets empty: the
    UpSet chart says that no concept is encoded."""
    if not sets:
        raise InputError("venn_figure needs at least one set")
    labels = list(sets)
    if len(labels) in (2, 3) and any(sets.values()):
        from matplotlib_venn import layout, venn2, venn3

        figure = Figure(figsize=(5.2, 4.2), layout="constrained")
        ax = figure.subplots()
        if len(labels) == 2:
            draw, regions = venn2, layout.venn2.DefaultLayoutAlgorithm(fixed_subset_sizes=(1,) * 3)
        else:
            draw, regions = venn3, layout.venn3.DefaultLayoutAlgorithm(fixed_subset_sizes=(1,) * 7)
        names = [label.replace(" (", "\n(") for label in labels]  # "model (kind)" on two lines
        diagram = draw([set(sets[label]) for label in labels], set_labels=names, ax=ax, layout_algorithm=regions)
        for text in diagram.set_labels or []:
            if text is not None:
                text.set_fontsize(9)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # room for the set labels outside the circles
        ax.set_xlim(x0 - 0.3 * (x1 - x0), x1 + 0.3 * (x1 - x0))
        ax.set_ylim(y0 - 0.12 * (y1 - y0), y1 + 0.12 * (y1 - y0))
        ax.set_title(textwrap.fill(title, 60), fontsize=10)
        return figure
    return _upset_figure(sets, title)


def _upset_figure(sets: Mapping[str, set[str]], title: str, limit: int = 20) -> Figure:
    labels = list(sets)
    counts: dict[tuple[bool, ...], int] = {}
    for item in set().union(*sets.values()):
        signature = tuple(item in sets[label] for label in labels)
        counts[signature] = counts.get(signature, 0) + 1
    combos = sorted(counts.items(), key=lambda entry: (-entry[1], entry[0]))[:limit]
    figure = Figure(figsize=(max(4.0, 0.45 * len(combos) + 2.5), 2.2 + 0.35 * len(labels)), layout="constrained")
    bars_ax, dots_ax = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, max(1, len(labels))]})
    positions = range(len(combos))
    bars_ax.bar(positions, [count for _, count in combos], color="#4c72b0")
    for position, (_, count) in zip(positions, combos):
        bars_ax.text(position, count, str(count), ha="center", va="bottom", fontsize=7)
    bars_ax.set_ylabel("concepts")
    bars_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    bars_ax.margins(y=0.15)
    bars_ax.set_title(title if combos else f"{title}: no concepts encoded", fontsize=10)
    for position, (signature, _) in zip(positions, combos):
        members = [row for row, inside in enumerate(signature) if inside]
        dots_ax.scatter([position] * len(labels), range(len(labels)), color="#d0d0d0", s=30)
        dots_ax.scatter([position] * len(members), members, color="black", s=30, zorder=3)
        if len(members) > 1:
            dots_ax.plot([position, position], [min(members), max(members)], color="black", linewidth=1.5)
    dots_ax.set_yticks(range(len(labels)), [f"{label} ({len(sets[label])})" for label in labels], fontsize=7)
    dots_ax.set_ylim(len(labels) - 0.5, -0.5)  # the first set on top
    dots_ax.set_xticks([])
    dots_ax.set_xlim(-0.6, max(len(combos), 1) - 0.4)
    for spine in dots_ax.spines.values():
        spine.set_visible(False)
    return figure


def _layer_order(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def cka_heatmap_figure(cka: Sequence[CkaRow], model_a: str, model_b: str, dataset: str | None = None) -> Figure:
    """Fig. 5/6: CKA of every layer of ``model_a`` against every layer of ``model_b`` (missing pairs blank), on
    ``dataset`` (default: the first of the pair's rows)."""
    rows = [row for row in cka if (row.model_a, row.model_b) == (model_a, model_b)]
    if not rows:
        raise InputError(f"no CKA rows for the pair ({model_a!r}, {model_b!r})")
    dataset = rows[0].dataset if dataset is None else dataset
    rows = [row for row in rows if row.dataset == dataset]
    if not rows:
        raise InputError(f"no CKA rows for the pair ({model_a!r}, {model_b!r}) on {dataset!r}")
    layers_a = _layer_order([row.layer_a for row in rows])
    layers_b = _layer_order([row.layer_b for row in rows])
    grid = [[math.nan] * len(layers_b) for _ in layers_a]
    for row in rows:
        grid[layers_a.index(row.layer_a)][layers_b.index(row.layer_b)] = row.cka
    figure = Figure(figsize=(5.6, 4.8), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="magma", origin="lower", aspect="auto")
    figure.colorbar(image, ax=ax, label="CKA")
    step_a = max(1, len(layers_a) // 12)
    step_b = max(1, len(layers_b) // 12)
    ax.set_yticks(range(0, len(layers_a), step_a), layers_a[::step_a], fontsize=6)
    ax.set_xticks(range(0, len(layers_b), step_b), layers_b[::step_b], fontsize=6, rotation=60, ha="right")
    ax.set_ylabel(model_a)
    ax.set_xlabel(model_b)
    ax.set_title(f"CKA: {model_a} vs {model_b} on {dataset} ({rows[0].estimator})", fontsize=10)
    return figure


def _cka_curve(rows: Sequence[CkaRow]) -> list[float] | None:
    """CKA between corresponding layers of one pair on one dataset (the diagonal of a layer x layer grid), or None
    when the layers do not correspond one to one."""
    layers_a = _layer_order([row.layer_a for row in rows])
    layers_b = _layer_order([row.layer_b for row in rows])
    if len(rows) == len(layers_a) * len(layers_b) and len(layers_a) == len(layers_b) > 1:
        values = {(row.layer_a, row.layer_b): row.cka for row in rows}
        return [values[(a, b)] for a, b in zip(layers_a, layers_b)]
    if len(rows) == len(layers_a) == len(layers_b):
        return [row.cka for row in rows]
    return None


def cka_depth_figure(cka: Sequence[CkaRow], id_set: str | None = None) -> Figure:
    """Fig. 5/6: CKA between corresponding layers of each pair (the i-th layer of a with the i-th of b) against
    relative depth, one panel per pair: the id set in orange, the mean over the shift sets (every other dataset)
    in blue with a band of one standard deviation. For a pair computed layer x layer, the diagonal is used.

    Args:
        cka: the rows of ``cka.csv``.
        id_set: the in-distribution set's name (default: the first dataset of the rows).
    """
    if not cka:
        raise InputError("no CKA rows to plot")
    id_set = cka[0].dataset if id_set is None else id_set
    curves: dict[tuple[str, str], dict[str, list[float]]] = {}
    for pair in _layer_order([f"{row.model_a}\x00{row.model_b}" for row in cka]):
        model_a, model_b = pair.split("\x00")
        rows = [row for row in cka if (row.model_a, row.model_b) == (model_a, model_b)]
        per_set = {name: _cka_curve([row for row in rows if row.dataset == name])
                   for name in _layer_order([row.dataset for row in rows])}
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
        shifts = [curve for name, curve in per_set.items() if name != id_set]
        if shifts:
            values = np.array(shifts, dtype=float)
            mean, std = values.mean(axis=0), values.std(axis=0)  # population std over the shift sets
            ax.fill_between(depth, mean - std, mean + std, color="tab:blue", alpha=0.25, linewidth=0)
            ax.plot(depth, mean, color="tab:blue", marker=".", label=f"shift sets: mean ± std ({len(shifts)})")
        if id_set in per_set:
            ax.plot(depth, per_set[id_set], color="tab:orange", marker=".", label=f"{id_set} (id)")
        ax.set_title(f"{model_a} vs {model_b}", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("relative depth", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("CKA")
    estimators = ", ".join(_layer_order([row.estimator for row in cka]))
    figure.suptitle(f"CKA between corresponding layers ({estimators} estimator)", fontsize=10)
    return figure


def wiseft_figure(wiseft: Sequence[WiseFtRow]) -> Figure:
    """Fig. 11-18: accuracy (in-distribution solid, shift dashed), ER, kurtosis and unique concepts against
    alpha, one color per pair; a panel only for the metrics that were computed."""
    if not wiseft:
        raise InputError("wiseft_figure needs at least one row of wiseft.csv")
    panels = [("accuracy (%)", None), ("ER (%)", "er"), ("kurtosis", "kurtosis"),
              ("unique concepts", "unique_concepts")]
    panels = [(name, column) for name, column in panels
              if column is None or any(getattr(row, column) is not None for row in wiseft)]
    figure, axes = _grid(len(panels), columns=len(panels))
    figure.suptitle("Wise-FT: (1 - alpha) zero-shot + alpha finetuned")
    colors = itertools.cycle(f"C{i}" for i in range(10))
    for pair, color in zip(_layer_order([row.pair for row in wiseft]), colors):
        rows = sorted((row for row in wiseft if row.pair == pair), key=lambda row: row.alpha)
        alphas = [row.alpha for row in rows]
        for ax, (name, column) in zip(axes, panels):
            if column is None:
                ax.plot(alphas, [100 * row.acc_id for row in rows], color=color, marker=".", label=f"{pair} (I)")
                shift = [(row.alpha, 100 * row.acc_shift) for row in rows if row.acc_shift is not None]
                if shift:
                    ax.plot(*zip(*shift), color=color, marker=".", linestyle="--", label=f"{pair} (S)")
            else:
                scale = 100 if column == "er" else 1
                points = [(row.alpha, scale * getattr(row, column)) for row in rows if getattr(row, column) is not None]
                if points:
                    ax.plot(*zip(*points), color=color, marker=".", label=pair)
    for ax, (name, column) in zip(axes, panels):
        if column == "unique_concepts":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("alpha")
        ax.set_ylabel(name)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure


def concept_thresholds_figure(models: Sequence[ModelRow], rows: Sequence[ConceptThresholdRow], basis: str) -> Figure:
    """Threshold sensitivity (footnote 4): unique concepts and the paper's polysemanticity against the AP threshold,
    one line per model (dashed: finetuned, dotted: supervised), the paper's 0.9 and its footnote's 0.85 marked."""
    rows = [row for row in rows if row.basis == basis]
    if not rows:
        raise InputError(f"concept_thresholds_figure: no row of concept_thresholds.csv in the {basis} basis")
    kinds = {model.model: model.kind for model in models}
    figure, axes = _grid(2, columns=2)
    figure.suptitle(f"Concept counts against the AP threshold ({basis} basis, orientation {rows[0].orientation})")
    styles = {"finetuned": "--", "supervised": ":"}
    for i, model in enumerate(dict.fromkeys(row.model for row in rows)):
        points = sorted((row for row in rows if row.model == model), key=lambda row: row.threshold)
        for ax, column in zip(axes, ("unique_concepts", "polysemanticity")):
            ax.plot([row.threshold for row in points], [getattr(row, column) for row in points], marker=".",
                    color=f"C{i % 10}", linestyle=styles.get(kinds.get(model, ""), "-"), label=model)
    for ax, name in zip(axes, ("unique concepts (eq. 5)", "polysemanticity (mean over all directions)")):
        for mark, style in ((0.9, "-"), (0.85, ":")):
            ax.axvline(mark, color="0.6", linewidth=0.6, linestyle=style)
        ax.set_xlabel("AP threshold")
        ax.set_ylabel(name)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
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


def signature_scatter_figure(models: Sequence[ModelRow], signatures: Sequence[Any],
                             columns: Mapping[str, str]) -> Figure:
    """Each signature (a panel per column of ``columns`` with values) against ER, one point per model (color:
    kind), for the rows of signatures.csv."""
    rows = [row for row in signatures if row.er is not None]
    panels = [(name, title) for name, title in columns.items() if any(getattr(row, name) is not None for row in rows)]
    if not panels:
        raise InputError("signature_scatter_figure: no model has both an ER and a signature")
    kinds = {model.model: model.kind for model in models}
    figure, axes = _grid(len(panels), panel=(3.2, 2.6))
    figure.suptitle("Signatures (in-distribution only) against effective robustness")
    for ax, (name, title) in zip(axes, panels):
        for row in rows:
            value = getattr(row, name)
            if value is not None:
                kind = kinds.get(row.model, "?")
                ax.scatter([value], [100 * row.er], color=KIND_COLORS.get(kind, "#7f7f7f"), s=30, edgecolor="black",
                           linewidth=0.4, zorder=3)
                ax.annotate(row.model, (value, 100 * row.er), fontsize=5, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(textwrap.fill(title, 36), fontsize=7)
        ax.set_ylabel("ER (%)")
        ax.grid(True, linewidth=0.3)
    return figure


def tracking_figure(wiseft: Sequence[WiseFtRow]) -> Figure:
    """Along each Wise-FT sweep, ER and each measured signature against alpha, each rescaled to [0, 1] over the
    sweep (so that tracking shows as curves that move together)."""
    pairs = _layer_order([row.pair for row in wiseft])
    if not pairs:
        raise InputError("tracking_figure needs at least one row of wiseft.csv")
    figure, axes = _grid(len(pairs), panel=(4.2, 3.0), columns=3)
    for ax, pair in zip(axes, pairs):
        rows = sorted((row for row in wiseft if row.pair == pair), key=lambda row: row.alpha)
        for column, style in (("er", "-"), ("kurtosis", "--"), ("unique_concepts", ":")):
            points = [(row.alpha, getattr(row, column)) for row in rows if getattr(row, column) is not None]
            if len(points) < 2:
                continue
            values = [value for _, value in points]
            low, span = min(values), (max(values) - min(values)) or 1.0
            ax.plot([a for a, _ in points], [(value - low) / span for value in values], linestyle=style, marker=".",
                    label=column.replace("_", " "))
        ax.set_title(pair, fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_ylabel("rescaled to [0, 1] over the sweep")
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure


def layer_kurtosis_figure(models: Sequence[ModelRow], rows: Sequence[Any], dataset: str) -> Figure:
    """Kurtosis (eq. 2, log scale) of every layer tap against its relative depth, on ``dataset``; one panel per
    backbone x pretraining, its models (zero-shot, finetuned, supervised) colored by kind. ``rows``:
    :class:`~robustsig.study.results.LayerKurtosisRow`."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.dataset == dataset and math.isfinite(row.kurtosis):
            curves.setdefault(row.model, []).append((row.depth, row.kurtosis))
    groups = [ModelGroup(group.title, tuple(m for m in group.members if m.model in curves))
              for group in model_groups(models)]
    groups = [group for group in groups if group.members]
    figure, axes = _group_panels(groups, f"Kurtosis through the network on {dataset}")
    for ax, group in zip(axes, groups):
        for i, model in enumerate(group.members):
            points = sorted(curves[model.model])
            ax.plot(*zip(*points), color=KIND_COLORS.get(model.kind), marker=_MARKERS[i % len(_MARKERS)],
                    markersize=3, label=f"{model.model} ({model.kind})")
        ax.axhline(3.0, color="0.5", linewidth=0.6, linestyle=":")
        ax.set_yscale("log")
        ax.set_title(group.title, fontsize=9)
        ax.set_xlabel("relative depth of the layer")
        ax.set_ylabel("kurtosis (Gaussian = 3)")
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure
