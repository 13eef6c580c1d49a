"""Passes over images that keep no activations: the calibration pass of the low-rank model (the SVD and the
eq. 4 importance of every linear map against its own inputs, streamed) and accuracy passes of several classifiers
over the same batches (the low-rank model at several budgets, scored with the dataset's rule).

Both decode and preprocess each image once, whatever the number of maps or classifiers.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import AbstractContextManager, nullcontext
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import Dataset, IterableDataset

from robustsig._progress import progress as progress_bar
from robustsig._progress import quiet
from robustsig.distributed import resolve_device
from robustsig.errors import InputError
from robustsig.extraction.loader import batch_loader
from robustsig.metrics.directions import HeadSVD, ImportanceAccumulator
from robustsig.models.classifier import Classifier
from robustsig.models.linear_maps import Calibration, LinearMap, explicit_attention, find_linear_maps


def image_batches(classifier: Classifier, dataset: Dataset, *, batch_size: int = 32, limit: int | None = None,
                  workers: int = 0, device: torch.device | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches of the first ``limit`` images (all: ``None``) of ``dataset``, preprocessed with
    ``classifier.preprocess`` (when the dataset leaves its ``transform`` empty), on ``device``; undecodable images
    are skipped."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise InputError(f"the number of images must be >= 1 (or None: all), got {limit}")
    transform = classifier.preprocess if getattr(dataset, "transform", "own") is None else None
    if isinstance(dataset, IterableDataset):
        loader = batch_loader(dataset, transform, [], (0, limit), 1 << 40, batch_size, workers, False)
    else:
        stop = len(dataset) if limit is None else min(limit, len(dataset))
        loader = batch_loader(dataset, transform, [range(0, stop)], None, max(stop, 1), batch_size, workers, False)
    for batch in loader:
        if batch.images is not None:
            yield batch.images.to(device), batch.labels.to(device)


def calibrate_linear_maps(classifier: Classifier, dataset: Dataset, *, images: int | None = None, batch_size: int = 32,
              workers: int = 0, device: str | torch.device | None = None, progress: bool = True) -> Calibration:
    """One pass over (the first ``images`` of) ``dataset``: every linear map's input vectors stream into an
    :class:`~robustsig.metrics.directions.ImportanceAccumulator` of its weight (forward pre-hooks); nothing else is
    kept.

    Args:
        classifier: the model (left unchanged: the pass runs on a copy of its encoder with explicit attention).
        dataset: in-distribution images.
        images: how many to use (``None``: all).
        batch_size, workers, device: as for extraction.
        progress: show a progress bar.

    Returns:
        the :class:`Calibration`.

    Example:
        >>> cal = calibrate_linear_maps(rs.load_classifier("bundled:mobilenet_v2"), rs.open_dataset("folder", "photos/"),
        ...                 images=64)                                                       # doctest: +SKIP
        >>> sorted(cal.maps)[:2]                                                             # doctest: +SKIP
        ['classifier.1', 'features.1.conv.1']
    """
    target = resolve_device(device)
    encoder = copy.deepcopy(classifier.encoder).to(target).eval()
    explicit_attention(encoder)
    maps = find_linear_maps(encoder)
    if not maps:
        raise InputError(f"{classifier.spec or type(classifier.encoder).__name__} has no linear map (Linear or 1x1 "
                         "convolution) in its encoder to calibrate")
    accumulators = {path: ImportanceAccumulator(m.weight(encoder.get_submodule(path))) for path, m in maps.items()}
    rows = dict.fromkeys(maps, 0)

    def hook_for(path: str, linear_map: LinearMap):
        def hook(_module, inputs):
            x = linear_map.input_rows(inputs[0])
            rows[path] += x.shape[0]
            accumulators[path].update(x)
        return hook

    handles = [encoder.get_submodule(path).register_forward_pre_hook(hook_for(path, m)) for path, m in maps.items()]
    seen = 0
    total = images if images is not None else (len(dataset) if hasattr(dataset, "__len__") else None)
    try:
        with torch.inference_mode(), _bars(progress), progress_bar(total=total, desc="calibration", unit="img") as bar:
            for batch, _labels in image_batches(classifier, dataset, batch_size=batch_size, limit=images,
                                                workers=workers, device=target):
                encoder(batch)
                seen += batch.shape[0]
                bar.update(batch.shape[0])
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise InputError("the calibration set gave no image: pass a dataset with decodable images")
    zero_rows = {path: acc.zero_vectors for path, acc in accumulators.items() if acc.zero_vectors}
    with warnings.catch_warnings():  # one warning for all maps below instead of one per map
        warnings.simplefilter("ignore", RuntimeWarning)
        importance = {path: accumulator.compute().cpu() for path, accumulator in accumulators.items()}
    if zero_rows:
        warnings.warn(f"{len(zero_rows)} linear map(s) got all-zero input vectors (e.g. {next(iter(zero_rows))}: "
                      f"{next(iter(zero_rows.values()))}); they have no direction and are left out of the importance",
                      RuntimeWarning, stacklevel=2)
    svds = {path: HeadSVD(*(t.cpu() for t in acc.svd)) for path, acc in accumulators.items()}
    return Calibration(maps, svds, importance, {path: n / seen for path, n in rows.items()}, seen, zero_rows)


def accuracies(classifiers: Mapping[str, Classifier], dataset: Dataset, *, batch_size: int = 32, workers: int = 0,
               device: str | torch.device | None = None, progress: bool = True, desc: str = "evaluation"
               ) -> dict[str, float]:
    """Top-1 accuracy of each classifier on ``dataset`` with the dataset's scoring rule (its class subset or class
    map, as :func:`robustsig.accuracy`), all from one decoding of each image (preprocessed by the first
    classifier's ``preprocess``; they must share it).

    Returns:
        name -> accuracy, a fraction in [0, 1].
    """
    from robustsig.data.scoring import scoring_rule
    from robustsig.metrics.scoring import TopOneAccumulator

    if not classifiers:
        raise InputError("no classifier to evaluate")
    target = resolve_device(device)
    first = next(iter(classifiers.values()))
    scores = {name: TopOneAccumulator(**scoring_rule(dataset)) for name in classifiers}
    models = {name: clf.to(target).eval() for name, clf in classifiers.items()}
    total = len(dataset) if hasattr(dataset, "__len__") else None
    with torch.inference_mode(), _bars(progress), progress_bar(total=total, desc=desc, unit="img") as bar:
        for images, labels in image_batches(first, dataset, batch_size=batch_size, workers=workers, device=target):
            for name, model in models.items():
                scores[name].update(model(images), labels)
            bar.update(images.shape[0])
    return {name: score.compute() for name, score in scores.items()}


def _bars(show: bool) -> AbstractContextManager:
    return nullcontext() if show else quiet()
