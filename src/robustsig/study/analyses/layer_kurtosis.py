"""Kurtosis (eq. 2) and outlier dimensions through the network: every layer tap of every model, on the id set and
each shift set: ``layer_kurtosis.csv``.

The analysis asks the extraction steps for every layer tap (:func:`layer_requests`), so the vectors come from the
same stores as everything else, pooled per image as extraction pools them (the CKA ``pooling`` option, default
``auto``): a ViT block's **class-token vector** (``cls``), a feature map's **mean over positions** (``mean``), a
token grid without a class token's mean over tokens. The ``vectors`` column says which, per row. Each store is
streamed once for all its layers (:class:`robustsig.KurtosisAccumulator` per layer); nothing is loaded whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustsig.metrics.kurtosis import OUTLIER_FACTOR, KurtosisAccumulator
from robustsig.models.classifier import LayerTap
from robustsig.study.analyses._streams import BATCH_ROWS
from robustsig.study.config import StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import LayerKurtosisRow
from robustsig.study.stores import LayerRequest
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows

def models_of(config: StudyConfig) -> list[str]:
    options = config.analyses.layer_kurtosis
    return list(options.models) if options and options.models else [entry.name for entry in config.models]


def datasets_of(config: StudyConfig) -> list[str]:
    options = config.analyses.layer_kurtosis
    if options and options.datasets:
        return list(options.datasets)
    return [config.datasets.id.name, *(dataset.name for dataset in config.datasets.shift)]


def layer_requests(config: StudyConfig) -> dict[tuple[str, str], LayerRequest]:
    """``(model, dataset) -> "all"`` for every store the analysis reads (merged with CKA's by the plan)."""
    if not config.analyses.enabled("layer_kurtosis"):
        return {}
    return {(model, dataset): "all" for model in models_of(config) for dataset in datasets_of(config)}


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


def plan(planner: Planner, config: StudyConfig, entry) -> None:
    if entry.name not in models_of(config):
        return
    datasets = datasets_of(config)
    subject = model_subject(entry.name)
    needs = tuple(planner.store(subject, name) for name in datasets)
    pooling = config.analyses.cka.pooling if config.analyses.cka else "auto"
    planner.add(LayerKurtosisTask(entry.name, datasets, pooling, needs))
