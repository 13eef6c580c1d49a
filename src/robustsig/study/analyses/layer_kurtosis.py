"""Kurtosis (eq. 2) and outlier dimensions through the network: every layer tap of every model, on the id set and
each shift set: ``layer_kurtosis.csv``.

The analysis asks the extraction steps for every layer tap (:func:`layer_requests`), so the vectors come from the
same stores as everything else, pooled per image as extraction pools them (the CKA ``pooling`` option, default
``auto``): a ViT block's **class-token vector** (``cls``), a feature map's **mean over positions** (``mean``), a
token grid without a class token's mean over tokens. The ``vectors`` column says which, per row. Each store is
streamed once for all its layers (:class:`robustsig.KurtosisAccumulator` per layer); nothing is loaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from matplotlib.figure import Figure
from pydantic import Field

from robustsig.metrics.kurtosis import OUTLIER_FACTOR, KurtosisAccumulator
from robustsig.models.classifier import LayerTap
from robustsig.report.figures import MARKERS, group_panels, plain_log_axis, present_groups
from robustsig.study.streams import BATCH_ROWS
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, LayerRequest, ModelEntry, Planner,
                                      RunContext, column, has_rows, model_subject, result_table, select_models,
                                      unknown_datasets, unknown_models)
from robustsig.study.pool import KIND_COLORS
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


class LayerKurtosisOptions(AnalysisOptions):
    """Kurtosis (eq. 2) and outlier dimensions of every layer tap, per model and dataset (pooled layer vectors)."""

    models: list[str] | None = Field(default=None, description="model names (default: every model)")
    datasets: list[str] | None = Field(default=None, description="dataset names (default: id and shift sets)")


@result_table
@dataclass(frozen=True)
class LayerKurtosisRow:
    """Activation kurtosis (eq. 2) and outlier dimensions of one layer tap of a model on one dataset."""

    TABLE: ClassVar[str] = "layer_kurtosis"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset", "layer")
    model: str = column("model name")
    dataset: str = column("dataset name")
    layer: str = column("layer tap name")
    depth: float = column("relative depth: the tap's index / (number of taps - 1), 0 = input side")
    kurtosis: float = column("mean over images of the kurtosis of the layer's vector (Gaussian = 3)")
    outliers: int = column("dimensions whose mean |activation| is at least 5 times the mean over dimensions")
    vectors: str = column("the vector per image: cls (a ViT's class token), mean (the mean over tokens or "
                           "positions) or vector (a layer with one vector per image)")
    dim: int = column("width of the layer's vector")




def models_of(config: StudyConfig) -> list[str]:
    options = config.analyses.layer_kurtosis
    return list(options.models) if options and options.models else [entry.name for entry in config.models]


def datasets_of(config: StudyConfig) -> list[str]:
    options = config.analyses.layer_kurtosis
    if options and options.datasets:
        return list(options.datasets)
    return [config.datasets.id.name, *(dataset.name for dataset in config.datasets.shift)]


def vectors_label(tap: LayerTap | None, pooling: str) -> str:
    """What one image's vector of a layer is: ``cls``, ``mean`` or ``vector`` (see the module notes)."""
    if tap is None:
        return pooling
    if tap.layout == "vector":
        return "vector"
    if tap.layout == "tokens" and tap.cls_token and pooling in ("auto", "cls"):
        return "cls"
    return "mean"


class LayerKurtosisTask(AnalysisTask):
    """Kurtosis and outlier dimensions of every stored layer of one model, per dataset."""

    tag = "layer_kurtosis"

    def __init__(self, model: str, datasets: Sequence[str], pooling: str, needs: tuple[str, ...]) -> None:
        super().__init__(f"layer_kurtosis:{model}", model, needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.datasets = list(datasets)
        self.pooling = pooling

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"stores": {name: ctx.store(self.subject, name).digest for name in self.datasets},
                "outlier_factor": OUTLIER_FACTOR, "pooling": self.pooling}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, LayerKurtosisRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        taps = ctx.classifiers.get(self.subject).taps
        rows, records = [], []
        for name in self.datasets:
            verified = ctx.store(self.subject, name)
            store = verified.store
            layers = store.layers
            accumulators = {layer: KurtosisAccumulator() for layer in layers}
            for batch in store.batches(layers, BATCH_ROWS):
                for layer in layers:
                    accumulators[layer].update(batch[layer])
            span = max(len(layers) - 1, 1)
            for index, layer in enumerate(layers):
                accumulator = accumulators[layer]
                rows.append(LayerKurtosisRow(
                    self.model, name, layer, index / span, accumulator.compute(),
                    int(accumulator.outlier_dimensions(OUTLIER_FACTOR).indices.numel()),
                    vectors_label(taps.get(layer), self.pooling), int(accumulator.mean_abs().shape[0])))
            records.append(verified.record(self.model, name))
        ctx.results.replace(LayerKurtosisRow, rows, model=self.model)
        ctx.results.record(LayerKurtosisRow, records, {"outlier_factor": OUTLIER_FACTOR, "pooling": self.pooling,
                                                       "vectors": "one pooled vector per image and layer (see the "
                                                                  "vectors column: cls token, or mean)"})
        first = [row for row in rows if row.dataset == self.datasets[0]]
        peak = max(first, key=lambda row: row.kurtosis) if first else None
        text = f"{len(first)} layer(s) x {len(self.datasets)} dataset(s)"
        if peak is not None:
            text += f"; highest kurtosis on {self.datasets[0]}: {peak.kurtosis:.1f} at {peak.layer}"
        return text


class LayerKurtosis(Analysis):
    """Kurtosis through the network (see the module notes)."""

    name = "layer_kurtosis"
    title = "Kurtosis through the network"
    Options = LayerKurtosisOptions
    tables = (LayerKurtosisRow,)

    def check(self, config: StudyConfig) -> list[str]:
        options = config.analyses.layer_kurtosis
        return (unknown_datasets(config, [(f"analyses.layer_kurtosis.datasets[{i}]", name)
                                          for i, name in enumerate(options.datasets or [])])
                + unknown_models(config, [(f"analyses.layer_kurtosis.models[{i}]", name)
                                          for i, name in enumerate(options.models or [])]))

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        return select_models(section, models)

    def layer_requests(self, config: StudyConfig) -> dict[tuple[str, str], LayerRequest]:
        """``(model, dataset) -> "all"`` for every store the analysis reads (merged with CKA's by the plan)."""
        return {(model, dataset): "all" for model in models_of(config) for dataset in datasets_of(config)}

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        if entry.name not in models_of(config):
            return
        datasets = datasets_of(config)
        subject = model_subject(entry.name)
        needs = tuple(planner.store(subject, name) for name in datasets)
        planner.add(LayerKurtosisTask(entry.name, datasets, planner.pooling, needs))

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        rows = page.read(LayerKurtosisRow)
        if not rows:
            return None
        dataset = page.shown_dataset(rows)
        vectors = ", ".join(sorted({row.vectors for row in rows}))
        return page.figure(lambda: layer_kurtosis_figure(models, rows, dataset), "layer_kurtosis",
                           f"Kurtosis (eq. 2) of every layer tap against relative depth on {dataset}; one vector per "
                           f"image and layer ({vectors}: cls = a ViT block's class token, mean = the mean over "
                           "positions or tokens). Every dataset, with outlier dimensions: results/layer_kurtosis.csv.",
                           ["layer_kurtosis"])


def layer_kurtosis_figure(models: Sequence[ModelRow], rows: Sequence[Any], dataset: str) -> Figure:
    """Kurtosis (eq. 2, log scale) of every layer tap against its relative depth, on ``dataset``; one panel per
    backbone x pretraining, its models (zero-shot, finetuned, supervised) colored by kind. ``rows``:
    :class:`LayerKurtosisRow`."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.dataset == dataset and math.isfinite(row.kurtosis):
            curves.setdefault(row.model, []).append((row.depth, row.kurtosis))
    groups = present_groups(models, set(curves))
    figure, axes = group_panels(groups, f"Kurtosis through the network on {dataset}")
    for ax, group in zip(axes, groups):
        for i, model in enumerate(group.members):
            points = sorted(curves[model.model])
            ax.plot(*zip(*points), color=KIND_COLORS.get(model.kind), marker=MARKERS[i % len(MARKERS)],
                    markersize=3, label=f"{model.model} ({model.kind})")
        ax.axhline(3.0, color="0.5", linewidth=0.6, linestyle=":")
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_title(group.title, fontsize=9)
        ax.set_xlabel("relative depth of the layer")
        ax.set_ylabel("kurtosis (Gaussian = 3)")
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure
