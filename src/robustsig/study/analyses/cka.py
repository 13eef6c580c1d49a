"""CKA per layer between the configured pairs of models, on one dataset (default: the id set): ``cka.csv``.

Layers: ``layers: all`` (or no ``layers``) takes every layer tap of each model. Without ``cross``, layers are
matched one to one: in order when both models have as many, else by relative depth (each layer of the shallower
model with the layer of the deeper one at the nearest relative depth ``index / (count - 1)``). With ``cross: true``
every layer of ``model_a`` is compared with every layer of ``model_b`` (the heatmap of Fig. 6).

Estimators, all streamed from the stores: the linear kernel uses :class:`robustsig.LinearCKA` (the exact streaming
twin of :func:`robustsig.cka`, biased or unbiased HSIC); the RBF kernel uses :class:`robustsig.MinibatchCKA`
(Nguyen et al.'s sum of unbiased minibatch HSICs, over minibatches of :data:`MINIBATCH` images, so ``unbiased`` has
no effect there). Layer activations are pooled per image as the config's ``pooling`` says, at extraction.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from robustsig.errors import DataError, InputError
from robustsig.extraction.store import ActivationStore
from robustsig.metrics.cka import MIN_UNBIASED_ROWS, LinearCKA, MinibatchCKA
from robustsig.study.analyses._streams import BATCH_ROWS
from robustsig.study.config import CkaOptions, CkaPair, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import CkaRow
from robustsig.study.stores import LayerRequest
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows

MINIBATCH = 256
"""Images per minibatch of the RBF estimator."""

LINEAR_PASS_BYTES = 1 << 30
"""Accumulator memory (float64 feature-space sums) of the layer pairs computed in one pass over the stores."""


def dataset_of(config: StudyConfig) -> str:
    return config.analyses.cka.dataset or config.datasets.id.name


def pair_layers(pair: CkaPair) -> tuple[list[str] | None, list[str] | None]:
    """The layers asked for ``model_a`` and ``model_b`` (None: every tap of the model)."""
    layers_b = pair.layers_b if pair.layers_b is not None else pair.layers
    return pair.layers, layers_b


def layer_requests(config: StudyConfig) -> dict[tuple[str, str], LayerRequest]:
    """``(model, dataset) -> layers`` its store must hold for the CKA pairs of ``config`` (all of them)."""
    if not config.analyses.enabled("cka"):
        return {}
    dataset = dataset_of(config)
    requests: dict[tuple[str, str], LayerRequest] = {}
    for pair in config.analyses.cka.pairs:
        for model, layers in zip((pair.model_a, pair.model_b), pair_layers(pair)):
            current = requests.get((model, dataset), ())
            if layers is None or current == "all":
                requests[(model, dataset)] = "all"
            else:
                requests[(model, dataset)] = tuple(dict.fromkeys([*current, *layers]))
    return requests


def match_layers(layers_a: Sequence[str], layers_b: Sequence[str], cross: bool) -> list[tuple[str, str]]:
    """The (layer of a, layer of b) pairs to compare, in layer order (see the module docstring).

    >>> match_layers(["a0", "a1", "a2"], ["b0", "b1", "b2", "b3", "b4"], cross=False)
    [('a0', 'b0'), ('a1', 'b2'), ('a2', 'b4')]
    """
    if cross:
        return [(a, b) for a in layers_a for b in layers_b]
    if len(layers_a) == len(layers_b):
        return list(zip(layers_a, layers_b))
    short, long = (layers_a, layers_b) if len(layers_a) < len(layers_b) else (layers_b, layers_a)
    span = max(len(short) - 1, 1)
    partners = [long[round(i * (len(long) - 1) / span)] for i in range(len(short))]
    return list(zip(short, partners)) if short is layers_a else list(zip(partners, short))


def _bounds(rows: int, size: int) -> list[tuple[int, int]]:
    """Consecutive row ranges of ``size``; a last range shorter than the unbiased estimator's minimum joins the
    one before it."""
    bounds = [(start, min(start + size, rows)) for start in range(0, rows, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_UNBIASED_ROWS:
        (start, _), (_, stop) = bounds[-2], bounds.pop()
        bounds[-1] = (start, stop)
    return bounds


def _width(store: ActivationStore, layer: str) -> int:
    return int(store.manifest["tensors"][layer]["shape"][1])


def _passes(pairs: list[tuple[str, str]], store_a: ActivationStore, store_b: ActivationStore, kernel: str
            ) -> list[list[tuple[str, str]]]:
    """Groups of layer pairs computed in one read of the stores (the linear accumulators of a group fit in
    :data:`LINEAR_PASS_BYTES`; the RBF ones hold scalars)."""
    if kernel != "linear":
        return [pairs]
    groups: list[list[tuple[str, str]]] = []
    used = LINEAR_PASS_BYTES
    for a, b in pairs:
        da, db = _width(store_a, a), _width(store_b, b)
        size = 8 * (da * db + da * da + db * db + da + db)
        if used + size > LINEAR_PASS_BYTES:
            groups.append([])
            used = 0
        groups[-1].append((a, b))
        used += size
    return groups


def layer_cka(store_a: ActivationStore, store_b: ActivationStore, pairs: list[tuple[str, str]], kernel: str,
              unbiased: bool) -> dict[tuple[str, str], float]:
    """CKA of each (layer of a, layer of b) pair over the images both stores hold (NaN, with a warning, where a
    representation is constant)."""
    size = BATCH_ROWS if kernel == "linear" else MINIBATCH
    values: dict[tuple[str, str], float] = {}
    for group in _passes(pairs, store_a, store_b, kernel):
        estimators = {pair: LinearCKA(unbiased) if kernel == "linear" else MinibatchCKA(kernel) for pair in group}
        keys_a = list(dict.fromkeys(a for a, _ in group))
        keys_b = list(dict.fromkeys(b for _, b in group))
        for start, stop in _bounds(store_a.num_rows, size):
            rows = slice(start, stop)
            xa = {key: store_a.read(key, rows) for key in keys_a}
            xb = {key: store_b.read(key, rows) for key in keys_b}
            for (a, b), estimator in estimators.items():
                estimator.update(xa[a], xb[b])
        for pair, estimator in estimators.items():
            try:
                values[pair] = estimator.compute()
            except DataError as error:
                warnings.warn(f"CKA of layers {pair[0]} and {pair[1]} is undefined: {error}", RuntimeWarning,
                              stacklevel=2)
                values[pair] = float("nan")
    return values


class CkaTask(AnalysisTask):
    """CKA per layer of one pair of models."""

    tag = "cka"

    def __init__(self, pair: CkaPair, options: CkaOptions, dataset: str, needs: tuple[str, ...]) -> None:
        super().__init__(f"cka:{pair.model_a}:{pair.model_b}", f"{pair.model_a} vs {pair.model_b} on {dataset}",
                         needs, (pair.model_a, pair.model_b))
        self.pair = pair
        self.options = options
        self.dataset = dataset

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        pair, options = self.pair, self.options
        return {"stores": [ctx.store(model_subject(model), self.dataset).digest
                           for model in (pair.model_a, pair.model_b)],
                "layers": pair_layers(pair), "cross": pair.cross, "kernel": options.kernel,
                "unbiased": options.unbiased, "pooling": options.pooling,
                "minibatch": MINIBATCH if options.kernel != "linear" else None}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, CkaRow, model_a=self.pair.model_a, model_b=self.pair.model_b)

    def compute(self, ctx: RunContext) -> str:
        pair, options = self.pair, self.options
        verified = [ctx.store(model_subject(model), self.dataset) for model in (pair.model_a, pair.model_b)]
        store_a, store_b = (item.store for item in verified)
        layers = []
        for model, store, asked in zip((pair.model_a, pair.model_b), (store_a, store_b), pair_layers(pair)):
            names = list(asked) if asked is not None else store.layers
            absent = [name for name in names if name not in store.layers]
            if not names or absent:
                raise InputError(f"analyses.cka: model {model!r} has no layer {absent or 'taps'} in its store; its "
                                 f"layer taps are {store.layers or 'none'} (use layers: all, or names among them)")
            layers.append(names)
        if not store_a.read("ids").equal(store_b.read("ids")):
            raise DataError(f"the stores of {pair.model_a} and {pair.model_b} on {self.dataset} hold different images "
                            "(different undecodable images were skipped?); re-extract both")
        pairs = match_layers(layers[0], layers[1], pair.cross)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            values = layer_cka(store_a, store_b, pairs, options.kernel, options.unbiased)
        rows = [CkaRow(pair.model_a, pair.model_b, a, b, values[(a, b)]) for a, b in pairs]
        ctx.results.replace(CkaRow, rows, model_a=pair.model_a, model_b=pair.model_b)
        ctx.results.record(CkaRow, [item.record(model, self.dataset)
                                    for item, model in zip(verified, (pair.model_a, pair.model_b))],
                           {"kernel": options.kernel, "unbiased": options.unbiased, "pooling": options.pooling,
                            "estimator": "LinearCKA (exact, streamed)" if options.kernel == "linear"
                            else f"MinibatchCKA over {MINIBATCH}-image minibatches"})
        shown = ", ".join(f"{value:.2f}" for value in list(values.values())[:6])
        note = f"; undefined for {len(caught)} pair(s) (a constant representation)" if caught else ""
        how = "every layer against every layer" if pair.cross else (
            "in order" if len(layers[0]) == len(layers[1]) else "matched by relative depth")
        return (f"{len(rows)} layer pair(s) ({len(layers[0])} x {len(layers[1])} layers, {how}): "
                f"{shown}{' ...' if len(values) > 6 else ''}{note}")


def plan(planner: Planner, config: StudyConfig) -> None:
    options = config.analyses.cka
    dataset = dataset_of(config)
    for pair in options.pairs:
        needs = tuple(planner.store(model_subject(model), dataset) for model in (pair.model_a, pair.model_b))
        planner.add(CkaTask(pair, options, dataset, needs))
