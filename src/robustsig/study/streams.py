"""Metrics streamed from activation stores, for every analysis (part of the public analysis API): every function
reads a store batch by batch with the metric's streaming twin, so no dataset's activations are ever loaded whole."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from robustsig.errors import DataError
from robustsig.extraction.store import ActivationStore
from robustsig.metrics.directions import HeadSVD, ImportanceAccumulator, head_svd
from robustsig.metrics.kurtosis import KurtosisAccumulator

BATCH_ROWS = 4096
"""Rows read per batch."""


def store_accuracy(store: ActivationStore, dataset: Any) -> float:
    """Top-1 accuracy of the stored logits with the dataset's scoring rule (its class subset or class map)."""
    from robustsig.data.scoring import check_head_fit, scoring_rule
    from robustsig.metrics.scoring import TopOneAccumulator

    check_head_fit(dataset, store.manifest["tensors"].get("logits", {}).get("shape", [0, 0])[1])
    accumulator = TopOneAccumulator(**scoring_rule(dataset))
    for batch in store.batches(["logits", "labels"], BATCH_ROWS):
        accumulator.update(batch["logits"], batch["labels"])
    return accumulator.compute()


def store_kurtosis(store: ActivationStore) -> KurtosisAccumulator:
    """The kurtosis accumulator of the stored ``h`` (kurtosis, per-dimension magnitudes, outlier dimensions)."""
    accumulator = KurtosisAccumulator()
    for batch in store.batches(["h"], BATCH_ROWS):
        accumulator.update(batch["h"])
    return accumulator


_SVD_CACHE: OrderedDict[str, HeadSVD] = OrderedDict()
_SVD_CACHE_SIZE = 4


def store_head_svd(store: ActivationStore) -> HeadSVD:
    """:func:`robustsig.head_svd` of the head stored with the activations. The last few decompositions are kept,
    keyed by the model's weight fingerprint (a model's stores on every dataset share one head, and importance,
    pruning and concepts all read it)."""
    key = json.dumps(store.manifest["key"]["model"], sort_keys=True)
    if key in _SVD_CACHE:
        _SVD_CACHE.move_to_end(key)
        return _SVD_CACHE[key]
    svd = head_svd(store.read("W"))
    _SVD_CACHE[key] = svd
    while len(_SVD_CACHE) > _SVD_CACHE_SIZE:
        _SVD_CACHE.popitem(last=False)
    return svd


def store_bias(store: ActivationStore) -> torch.Tensor | None:
    return store.read("b") if "b" in store.keys else None


def store_importance(store: ActivationStore, svd: HeadSVD | None = None) -> tuple[HeadSVD, torch.Tensor]:
    """The head's decomposition and the importance of each singular direction (eq. 4) on the stored ``h``."""
    accumulator = ImportanceAccumulator(svd if svd is not None else store_head_svd(store))
    for batch in store.batches(["h"], BATCH_ROWS):
        accumulator.update(batch["h"])
    return accumulator.svd, accumulator.compute()


def gather_rows(store: ActivationStore, key: str, rows: np.ndarray) -> torch.Tensor:
    """The stored ``key`` at the given row indices (sorted, unique), reading one block of rows at a time (only the
    rows asked for are kept)."""
    parts = []
    bounds = np.searchsorted(rows, np.arange(0, store.num_rows + BATCH_ROWS, BATCH_ROWS))
    for block, start in enumerate(range(0, store.num_rows, BATCH_ROWS)):
        chosen = rows[bounds[block]:bounds[block + 1]]
        if chosen.size:
            values = store.read(key, slice(start, min(start + BATCH_ROWS, store.num_rows)))
            parts.append(values[torch.from_numpy(chosen - start)])
    if not parts:
        return store.read(key, slice(0, 0))
    return torch.cat(parts)


def concept_members(store: ActivationStore, dataset: Any, *, min_positives: int, seed: int
                    ) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """The balanced per-concept sets (``dataset.balanced_sets(min_positives, seed)``) as ``(concept, store rows,
    labels)``, images that could not be decoded left out, concepts left with one class only dropped.

    Raises:
        DataError: no concept has ``min_positives`` positive (and as many negative) decoded images.
    """
    sets = dataset.balanced_sets(min_positives=min_positives, seed=seed)
    position = np.full(len(dataset), -1, dtype=np.int64)
    position[store.read("ids").numpy()] = np.arange(store.num_rows)
    members = []
    for concept in sets:
        rows = position[concept.indices.numpy()]
        decoded = rows >= 0
        labels = concept.labels.numpy()[decoded]
        if labels.any() and not labels.all():
            members.append((concept, rows[decoded], labels))
    if not members:
        raise DataError(f"no concept of the concept dataset has {min_positives} positive and as many negative decoded "
                        "images; lower analyses.concepts.min_positives or use a larger concept dataset")
    return members
