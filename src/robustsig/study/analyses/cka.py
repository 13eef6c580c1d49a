"""CKA per layer between the configured pairs of models, on the id set and every shift set (or on the one
``dataset`` given): ``cka.csv``, one row per layer pair and dataset, saying which estimator made it.

Estimators (``estimator``):

- ``minibatch`` (the default, the paper's, App. B): PyTorch-Model-Compare's (``torch_cka``), which Crabbé et al.
  ran. The same minibatches of ``minibatch`` images go through both models in one *paired pass*; each layer's
  output is flattened (``flatten(1)``: every token or position, not pooled), and only the ``n x n`` Gram matrix
  of the minibatch is kept (:class:`robustsig.MinibatchCKAMatrix`); unbiased HSIC summed over the minibatches. A
  last minibatch of fewer than 4 decodable images is left out (the estimator is undefined on it; torch_cka fails
  there), and the log and provenance say how many images were.
  Why a paired pass rather than Gram matrices stored at extraction: it is torch_cka's procedure exactly (the same
  batches through both models, whatever their preprocessing), it needs no store space (per-batch Grams of every
  layer would add ``N x minibatch`` values per layer to every store, about 2.4 GB per model over the paper's six
  ImageNet sets at 256) and no coupling of the estimator to extraction's batches, shards, resumes and skipped
  images; its cost is one more forward pass of each pair's two models per dataset (what torch_cka costs), paid
  again only when a model, a dataset or an option changes (the step is keyed by all of them).
- ``pooled``: CKA over every image of the layer activations pooled per image at extraction (``pooling``), streamed
  from the stores: the linear kernel with :class:`robustsig.LinearCKA` (the exact streaming twin of
  :func:`robustsig.cka`, biased or unbiased HSIC), the RBF kernel with :class:`robustsig.MinibatchCKA` (Nguyen et
  al.'s sum over minibatches of :data:`MINIBATCH` images, so ``unbiased`` has no effect there).

Layers: ``layers: all`` (or no ``layers``) takes every layer tap of each model. Without ``cross``, layers are
matched one to one: in order when both models have as many, else by relative depth (each layer of the shallower
model with the layer of the deeper one at the nearest relative depth ``index / (count - 1)``). With ``cross: true``
every layer of ``model_a`` is compared with every layer of ``model_b`` (the heatmap of Fig. 6).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset

from robustsig import distributed
from robustsig._progress import progress as progress_bar
from robustsig.errors import DataError, InputError
from robustsig.extraction.extractor import _AUTOCAST, _loader_transform
from robustsig.extraction.key import describe_transform
from robustsig.extraction.loader import batch_loader
from robustsig.extraction.store import ActivationStore
from robustsig.metrics.cka import MIN_UNBIASED_ROWS, PAPER_MINIBATCH, LinearCKA, MinibatchCKA, MinibatchCKAMatrix
from robustsig.models.classifier import Classifier, flatten_activation
from robustsig.study.analyses._streams import BATCH_ROWS
from robustsig.study.config import CkaOptions, CkaPair, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import CkaRow, InputRecord, jsonable
from robustsig.study.stores import LayerRequest
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows

MINIBATCH = 256
"""Images per minibatch of the RBF estimator."""

LINEAR_PASS_BYTES = 1 << 30
"""Accumulator memory (float64 feature-space sums) of the layer pairs computed in one pass over the stores."""


def datasets_of(config: StudyConfig, pair: CkaPair | None = None) -> list[str]:
    """The datasets CKA is computed on (for ``pair``): the pair's ``dataset``, else the analysis's, else the id set
    and every shift set."""
    options = config.analyses.cka
    if pair is not None and pair.dataset:
        return [pair.dataset]
    if options is not None and options.dataset:
        return [options.dataset]
    return [entry.name for entry in config.datasets.evaluation()]


def planned(config: StudyConfig) -> list[tuple[CkaPair, str]]:
    """Every (pair, dataset) of the config's CKA, dataset by dataset (the id set first)."""
    if config.analyses.cka is None:
        return []
    order = {name: i for i, name in enumerate(entry.name for entry in config.datasets.evaluation())}
    items = [(pair, dataset) for pair in config.analyses.cka.pairs for dataset in datasets_of(config, pair)]
    return sorted(items, key=lambda item: order.get(item[1], len(order)))


def pair_layers(pair: CkaPair) -> tuple[list[str] | None, list[str] | None]:
    """The layers asked for ``model_a`` and ``model_b`` (None: every tap of the model)."""
    layers_b = pair.layers_b if pair.layers_b is not None else pair.layers
    return pair.layers, layers_b


def layer_requests(config: StudyConfig) -> dict[tuple[str, str], LayerRequest]:
    """``(model, dataset) -> layers`` its store must hold for the CKA pairs of ``config`` (all of them; none for
    the minibatch estimator)."""
    if not config.analyses.enabled("cka") or config.analyses.cka.estimator != "pooled":
        return {}  # the minibatch estimator runs the models itself (a paired pass): no layers in the stores
    requests: dict[tuple[str, str], LayerRequest] = {}
    for pair, dataset in planned(config):
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


@dataclass(frozen=True)
class PairedCKA:
    """The result of :func:`paired_cka`: ``values[i, j]`` is the CKA of ``layers_a[i]`` with ``layers_b[j]``."""

    values: torch.Tensor
    images: int
    left_out: int


def _loaders(classifiers: Sequence[Classifier], dataset: Any, minibatch: int, workers: int, pin_memory: bool
             ) -> list[Any]:
    """One loader of consecutive minibatches per distinct preprocessing of ``classifiers`` (one when they share it,
    the common case of a zero-shot model and its finetuned copy)."""
    transforms = [_loader_transform(classifier, dataset) for classifier in classifiers]
    distinct = list(dict.fromkeys(describe_transform(t) for t in transforms))
    if isinstance(dataset, IterableDataset):
        ranges, stream, span = [], (0, None), 1 << 62
    else:
        n = len(dataset)
        ranges, stream, span = ([range(0, n)] if n else []), None, max(n, 1)
    chosen = [transforms[[describe_transform(t) for t in transforms].index(text)] for text in distinct]
    return [batch_loader(dataset, transform, ranges, stream, span, minibatch, workers, pin_memory)
            for transform in chosen]


def paired_cka(classifier_a: Classifier, classifier_b: Classifier, dataset: Any, layers_a: Sequence[str],
               layers_b: Sequence[str], *, minibatch: int = PAPER_MINIBATCH, device: str | None = None,
               autocast: str | None = None, workers: int = 0, progress: bool = False) -> PairedCKA:
    """The paper's CKA (torch_cka's) of every layer in ``layers_a`` with every layer in ``layers_b``, from one
    paired pass over ``dataset``: each minibatch goes through both models, and only its Gram matrices are kept.

    Args:
        classifier_a, classifier_b: the two models (each applies its own preprocessing to the same images).
        dataset: a map-style dataset or a stream, as for :func:`robustsig.extract`.
        layers_a, layers_b: layer tap names of each model.
        minibatch: images per minibatch (consecutive positions; undecodable images are left out of theirs).
        device, autocast, workers, progress: as for :func:`robustsig.extract`.

    Returns:
        :class:`PairedCKA`: the ``len(layers_a) x len(layers_b)`` CKA values (NaN where a layer is constant), the
        images used, and the images left out (a last minibatch of fewer than 4).
    """
    target = distributed.resolve_device(device)
    classifiers = (classifier_a, classifier_b)
    was_training = [classifier.training for classifier in classifiers]
    accumulator = MinibatchCKAMatrix()
    index = ({name: i for i, name in enumerate(layers_a)}, {name: j for j, name in enumerate(layers_b)})

    def reducer(side: int):
        def gram(name: str, output: Any, tap: Any) -> torch.Tensor:  # only the minibatch's Gram matrix is kept
            return accumulator.gram("ab"[side], index[side][name], flatten_activation(output, tap))
        return gram

    loaders = _loaders(classifiers, dataset, minibatch, workers, target.type == "cuda")
    left_out = 0
    bar = progress_bar(total=len(dataset) if not isinstance(dataset, IterableDataset) else None, desc="cka",
                       unit="img") if progress else None
    precision = torch.autocast(target.type, dtype=_AUTOCAST[autocast]) if autocast else nullcontext()
    try:
        for classifier in classifiers:
            classifier.eval().to(target)
        with torch.inference_mode(), precision:
            for batches in zip(*loaders):
                batch = batches[0]
                if any(not other.ids.equal(batch.ids) for other in batches[1:]):
                    raise DataError("the two preprocessings decoded different images of one minibatch; "
                                    "is the dataset deterministic?")
                if bar is not None:
                    bar.update(batch.covered)
                if batch.images is None or len(batch.ids) < MIN_UNBIASED_ROWS:
                    left_out += len(batch.ids)
                    continue
                inputs = (batch.images, batches[-1].images)  # one loader when both models preprocess alike
                grams = [classifiers[side].forward_with_layers(inputs[side].to(target), layers, reducer(side))[2]
                         for side, layers in enumerate((layers_a, layers_b))]
                accumulator.update_grams([grams[0][name] for name in layers_a], [grams[1][name] for name in layers_b])
    finally:
        if bar is not None:
            bar.close()
        for classifier, training in zip(classifiers, was_training):
            classifier.train(training)
    if not accumulator.batches:
        raise DataError(f"no minibatch of at least {MIN_UNBIASED_ROWS} decodable images in the dataset: CKA needs one")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the caller reports undefined (NaN) pairs
        values = accumulator.compute()
    return PairedCKA(values, accumulator.samples, left_out)


def _layer_names(pair: CkaPair, model: str, asked: list[str] | None, available: list[str]) -> list[str]:
    names = list(asked) if asked is not None else list(available)
    absent = [name for name in names if name not in available]
    if not names or absent:
        raise InputError(f"analyses.cka: model {model!r} has no layer {absent or 'taps'}; its layer taps are "
                         f"{available or 'none'} (use layers: all, or names among them)")
    return names


class CkaTask(AnalysisTask):
    """CKA per layer of one pair of models on one dataset."""

    tag = "cka"

    def __init__(self, pair: CkaPair, options: CkaOptions, dataset: str, needs: tuple[str, ...]) -> None:
        super().__init__(f"cka:{pair.model_a}:{pair.model_b}:{dataset}",
                         f"{pair.model_a} vs {pair.model_b} on {dataset}", needs, (pair.model_a, pair.model_b))
        self.pair = pair
        self.options = options
        self.dataset = dataset

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, CkaRow, model_a=self.pair.model_a, model_b=self.pair.model_b,
                        dataset=self.dataset)

    def _write(self, ctx: RunContext, rows: list[CkaRow], inputs: list[Any], parameters: dict[str, Any]) -> None:
        pair = self.pair
        ctx.results.replace(CkaRow, rows, model_a=pair.model_a, model_b=pair.model_b, dataset=self.dataset)
        ctx.results.record(CkaRow, inputs, parameters)

    def _summary(self, values: dict[tuple[str, str], float], layers: list[list[str]], note: str) -> str:
        shown = ", ".join(f"{value:.2f}" for value in list(values.values())[:6])
        undefined = sum(value != value for value in values.values())
        if undefined:
            note += f"; undefined for {undefined} pair(s) (a constant representation)"
        how = "every layer against every layer" if self.pair.cross else (
            "in order" if len(layers[0]) == len(layers[1]) else "matched by relative depth")
        return (f"{len(values)} layer pair(s) ({len(layers[0])} x {len(layers[1])} layers, {how}): "
                f"{shown}{' ...' if len(values) > 6 else ''}{note}")


class MinibatchCkaTask(CkaTask):
    """The paper's estimator: a paired pass of both models over the dataset (see the module notes)."""

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        pair, options = self.pair, self.options
        return jsonable({"models": [ctx.classifiers.identity(model_subject(model))
                                    for model in (pair.model_a, pair.model_b)],
                         "dataset": ctx.description(self.dataset), "layers": pair_layers(pair),
                         "cross": pair.cross, "estimator": "minibatch", "minibatch": options.minibatch,
                         "autocast": ctx.autocast})

    def compute(self, ctx: RunContext) -> str:
        pair, options = self.pair, self.options
        classifiers = [ctx.classifiers.get(model_subject(model)) for model in (pair.model_a, pair.model_b)]
        layers = [_layer_names(pair, model, asked, classifier.layers)
                  for model, classifier, asked in zip((pair.model_a, pair.model_b), classifiers, pair_layers(pair))]
        pairs = match_layers(layers[0], layers[1], pair.cross)
        used = [list(dict.fromkeys(a for a, _ in pairs)), list(dict.fromkeys(b for _, b in pairs))]
        result = paired_cka(*classifiers, ctx.dataset(self.dataset), *used, minibatch=options.minibatch,
                            device=ctx.device, autocast=ctx.autocast, workers=ctx.config.workers,
                            progress=ctx.progress and sys.stderr.isatty())
        values = {(a, b): float(result.values[used[0].index(a), used[1].index(b)]) for a, b in pairs}
        rows = [CkaRow(pair.model_a, pair.model_b, a, b, values[(a, b)], self.dataset, "minibatch") for a, b in pairs]
        inputs = [InputRecord(model, self.dataset, "", result.images) for model in (pair.model_a, pair.model_b)]
        self._write(ctx, rows, inputs, {"estimator": "minibatch (the paper's: torch_cka, flattened layer outputs, "
                                        "unbiased HSIC summed over minibatches)", "minibatch": options.minibatch})
        note = (f"; {result.left_out} image(s) of a last minibatch under {MIN_UNBIASED_ROWS} left out"
                if result.left_out else "")
        return self._summary(values, used, f" (minibatch, {result.images} images{note})")


class PooledCkaTask(CkaTask):
    """The ``pooled`` estimator: CKA of the pooled layer activations in the stores."""

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        pair, options = self.pair, self.options
        return {"stores": [ctx.store(model_subject(model), self.dataset).digest
                           for model in (pair.model_a, pair.model_b)],
                "layers": pair_layers(pair), "cross": pair.cross, "kernel": options.kernel,
                "unbiased": options.unbiased, "pooling": options.pooling, "estimator": "pooled",
                "minibatch": MINIBATCH if options.kernel != "linear" else None}

    def compute(self, ctx: RunContext) -> str:
        pair, options = self.pair, self.options
        verified = [ctx.store(model_subject(model), self.dataset) for model in (pair.model_a, pair.model_b)]
        store_a, store_b = (item.store for item in verified)
        layers = [_layer_names(pair, model, asked, store.layers)
                  for model, store, asked in zip((pair.model_a, pair.model_b), (store_a, store_b), pair_layers(pair))]
        if not store_a.read("ids").equal(store_b.read("ids")):
            raise DataError(f"the stores of {pair.model_a} and {pair.model_b} on {self.dataset} hold different images "
                            "(different undecodable images were skipped?); re-extract both")
        pairs = match_layers(layers[0], layers[1], pair.cross)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined pairs are NaN, counted in the summary
            values = layer_cka(store_a, store_b, pairs, options.kernel, options.unbiased)
        rows = [CkaRow(pair.model_a, pair.model_b, a, b, values[(a, b)], self.dataset, "pooled") for a, b in pairs]
        self._write(ctx, rows, [item.record(model, self.dataset)
                                for item, model in zip(verified, (pair.model_a, pair.model_b))],
                    {"estimator": "pooled", "kernel": options.kernel, "unbiased": options.unbiased,
                     "pooling": options.pooling,
                     "method": "LinearCKA (exact, streamed)" if options.kernel == "linear"
                     else f"MinibatchCKA over {MINIBATCH}-image minibatches"})
        return self._summary(values, layers, f" (pooled, {options.kernel})")


def plan(planner: Planner, config: StudyConfig) -> None:
    options = config.analyses.cka
    for pair, dataset in planned(config):
        if options.estimator == "minibatch":
            planner.add(MinibatchCkaTask(pair, options, dataset, ()))
        else:
            needs = tuple(planner.store(model_subject(model), dataset) for model in (pair.model_a, pair.model_b))
            planner.add(PooledCkaTask(pair, options, dataset, needs))
