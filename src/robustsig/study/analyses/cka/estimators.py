"""The two CKA estimators of the analysis: :func:`paired_cka`, the paper's (a paired pass of both models over the
images, torch_cka's minibatch estimator), and :func:`layer_cka`, CKA of the pooled layers in two stores."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset

from robustsig import distributed
from robustsig._progress import progress as progress_bar
from robustsig.errors import DataError
from robustsig.extraction.extractor import _AUTOCAST, _loader_transform
from robustsig.extraction.key import describe_transform
from robustsig.extraction.loader import batch_loader
from robustsig.extraction.store import ActivationStore
from robustsig.metrics.cka import MIN_UNBIASED_ROWS, PAPER_MINIBATCH, LinearCKA, MinibatchCKA, MinibatchCKAMatrix
from robustsig.models.classifier import Classifier, flatten_activation
from robustsig.study.analyses.cka.options import H
from robustsig.study.streams import BATCH_ROWS

MINIBATCH = 256
"""Images per minibatch of the RBF estimator."""

LINEAR_PASS_BYTES = 1 << 30
"""Accumulator memory (float64 feature-space sums) of the layer pairs computed in one pass over the stores."""


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
        layers_a, layers_b: layer tap names of each model; :data:`H` (``"h"``) names the head's input, the ``h``
            that :meth:`Classifier.encode` returns in the same pass.
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
                grams = []
                for side, layers in enumerate((layers_a, layers_b)):
                    h, _, side_grams = classifiers[side].forward_with_layers(
                        inputs[side].to(target), [name for name in layers if name != H], reducer(side))
                    if H in index[side]:  # the head's input, from the same pass
                        side_grams[H] = accumulator.gram("ab"[side], index[side][H], h)
                    grams.append(side_grams)
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
