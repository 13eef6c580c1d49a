"""Pruning curves: accuracy of a linear head after removing its least important singular directions.

Pruning ``k`` directions replaces ``W = sum_i s_i u_i v_i^T`` by the sum over the directions kept. With the
directions in pruning order ``p_1, p_2, ...`` (first pruned first), the logits at level ``k`` are::

    z_k = b + sum_{j > k} s_{p_j} (h . v_{p_j}) u_{p_j}

so every level comes from one projection ``P = h V`` and cumulative sums over blocks of directions: the curve
walks from the most pruned level to the least, adding one block ``P[:, block] @ (U s)[:, block]^T`` per level.
All levels together cost one head evaluation, whatever their number; ``W`` is never rebuilt.

Orders: ``"singular"`` prunes the smallest singular values first (the paper's curve), ``"importance"`` the
least important directions first (eq. 4), ``"random"`` a seeded random order (the control).

A fraction ``f`` of a head of rank ``r`` prunes ``floor(f * r)`` directions (``f = 1`` prunes all: the logits are
the bias alone).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import (CHUNK_ROWS, as_labels, as_matrix, as_vector, compute_dtype, iter_rows,
                                       num_rows, to_tensor)
from robustsig.metrics.directions import HeadSVD, as_head_svd, direction_importance
from robustsig.metrics.robustness import PAPER_B0, PAPER_B1, effective_robustness
from robustsig.metrics.scoring import TopOneRule
from robustsig.metrics.table import MetricTable

#: Pruning orders: smallest singular values first, least important first, random (seeded).
ORDERS: tuple[str, ...] = ("singular", "importance", "random")

#: Default levels: 0, 1/64, ..., 1 (65 fractions).
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(i / 64 for i in range(65))

_SCORE_ROWS = 2048
"""Rows scored together: their logits stay in cache while every level updates and scans them. Measured on 50,000
ImageNet-sized rows (1,024-wide head, 3 orders x 20 levels): 2 threads 3.78 s at 512 rows, 3.18 s at 2,048,
3.08 s at 4,096; one thread 5.42 s at 512, 5.69 s at 4,096."""


def pruned_counts(fractions: Sequence[float], rank: int) -> np.ndarray:
    """Number of directions each fraction prunes: ``floor(f * rank)`` (robust to rounding, e.g. 0.8 * 50 = 40)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise InputError(f"fractions must be a non-empty list of numbers, got {fractions!r}")
    inside = (f >= 0) & (f <= 1)
    if not inside.all():
        bad = f[~inside][0]
        raise InputError(f"fractions must lie in [0, 1] (fraction of directions pruned), got {bad:g}")
    return np.floor(f * rank + 1e-9).astype(np.int64)


def pruning_order(svd: HeadSVD, order: str, importance: Any = None, seed: int = 0) -> torch.Tensor:
    """Direction indices (in the order of :func:`~robustsig.metrics.directions.head_svd`) in pruning order,
    first pruned first.

    Args:
        svd: the head's decomposition.
        order: ``"singular"``, ``"importance"`` or ``"random"``.
        importance: importance per direction, required for ``"importance"``.
        seed: seed of the ``"random"`` order.
    """
    r = svd.rank
    if order == "singular":
        return torch.arange(r - 1, -1, -1)
    if order == "importance":
        if importance is None:
            raise InputError('order="importance" needs the importance of every direction '
                             "(rs.direction_importance(W, h) on the in-distribution activations)")
        imp = as_vector(importance, "importance", length=r).cpu()
        return imp.argsort(stable=True)
    if order == "random":
        return torch.randperm(r, generator=torch.Generator().manual_seed(int(seed)))
    raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")


class PruningAccumulator:
    """Streaming pruning curve: feed ``(h, labels)`` batches, get the accuracy at every pruning level.

    Args:
        W: head weight ``classes x features``, or its :class:`~robustsig.metrics.directions.HeadSVD`.
        b: head bias (length ``classes``) or ``None``.
        fractions: fractions of directions to prune (any order; each gives one row).
        order: ``"singular"``, ``"importance"`` or ``"random"``.
        importance: importance of every direction (required for ``order="importance"``).
        seed: seed of the random order.
        class_mask: restrict the argmax to these logits (a boolean mask or logit indices; labels are logit
            indices), as a dataset's ``class_indices``; see :class:`~robustsig.metrics.scoring.TopOneRule`.
        class_map: per class, the logits it stands for (labels are class numbers), as a dataset's ``class_map``
            (ObjectNet).

    Only the scored logits are ever computed (200 for ImageNet-R, 125 for ObjectNet). Logits are computed in
    float32 (float64 when ``h`` is float64) on ``h``'s device; correct counts are exact integers.
    """

    def __init__(self, W: Any, b: Any = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 order: str = "singular", *, importance: Any = None, seed: int = 0, class_mask: Any = None,
                 class_map: Sequence[Sequence[int]] | None = None) -> None:
        self.svd = as_head_svd(W)
        num_classes, r = self.svd.U.shape
        self.fractions = np.asarray(fractions, dtype=np.float64)
        self.counts = pruned_counts(self.fractions, r)
        self.order = order
        self.rule = TopOneRule(num_classes, class_indices=class_mask, class_map=class_map)
        permutation = pruning_order(self.svd, order, importance, seed).to(self.svd.s.device)
        columns = self.rule.columns.to(self.svd.U.device)
        self._permutation = permutation
        self._V = self.svd.V                                                # features x r, the SVD's order
        self._A = (self.svd.U[columns] * self.svd.s)[:, permutation]        # scored classes x r, pruning order
        bias = torch.zeros(num_classes, dtype=torch.float64) if b is None else as_vector(b, "b (head bias)",
                                                                                           length=num_classes)
        self._b = bias.to(self._A.device)[columns]
        self._levels = np.unique(self.counts)[::-1]                         # most pruned first
        self._correct: torch.Tensor | None = None                          # per level, on the data's device
        self._samples = 0
        self._cast: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def _operands(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (dtype, device)
        if key not in self._cast:
            self._cast[key] = (self._V.to(device=device, dtype=dtype), self._A.to(device=device, dtype=dtype),
                               self._b.to(device=device, dtype=dtype), self._permutation.to(device))
        return self._cast[key]

    def _check_batch(self, h: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        h = as_matrix(h, "h (activations, samples x features)", columns=self._V.shape[0])
        labels = as_labels(labels, "labels", length=h.shape[0]).to(h.device)
        self.rule.check_labels(labels)
        return h, labels

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """``h V`` (``N_b x r``, directions in the SVD's order): the one matmul a batch needs, which accumulators of
        other orders on the same head can share (:class:`PruningCurves`)."""
        V = self._operands(compute_dtype(h), h.device)[0]
        return h.to(V.dtype) @ V

    def update(self, h: Any, labels: Any) -> None:
        """Add a batch: activations ``h`` (``N_b x features``) and their integer labels."""
        h, labels = self._check_batch(h, labels)
        self.update_projected(self.project(h), labels)

    def update_projected(self, projections: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch given by its projections (:meth:`project`) and labels already checked (:class:`PruningCurves`
        shares one projection between orders)."""
        _, A, b, permutation = self._operands(projections.dtype, projections.device)
        if self._correct is None:
            self._correct = torch.zeros(len(self._levels), dtype=torch.int64, device=projections.device)
        projections = projections[:, permutation]                           # pruning order
        targets = self.rule.targets(labels)
        # rows in blocks whose logits stay in cache across the levels (each level rewrites and rescans them)
        for start in range(0, projections.shape[0], _SCORE_ROWS):
            rows = slice(start, start + _SCORE_ROWS)
            block, target = projections[rows], targets[rows]
            logits = b.expand(block.shape[0], -1).clone()
            kept_from = A.shape[1]
            for level, k in enumerate(self._levels):
                if k < kept_from:
                    logits.addmm_(block[:, k:kept_from], A[:, k:kept_from].T)
                    kept_from = int(k)
                self._correct[level] += self.rule.hits(logits, target).sum()
        self._samples += projections.shape[0]

    def compute(self) -> MetricTable:
        """The curve: columns ``fraction``, ``n_pruned``, ``n_kept``, ``accuracy`` (one row per fraction given);
        ``meta`` holds ``order``, ``rank`` and ``n_samples``."""
        if self._samples == 0:
            raise InputError("no activations were given: call update(h, labels) before compute()")
        r = self.svd.rank
        per_level = dict(zip(self._levels.tolist(), self._correct.cpu().tolist()))
        correct = np.array([per_level[int(k)] for k in self.counts], dtype=np.int64)
        return MetricTable({"fraction": self.fractions, "n_pruned": self.counts, "n_kept": r - self.counts,
                            "accuracy": correct / self._samples},
                           meta={"order": self.order, "rank": r, "n_samples": self._samples})


class PruningCurves:
    """The pruning curves of several orders of one head, streamed together: each batch is projected on the head's
    directions once (``h V``) and every order's accumulator scores that projection.

    Args:
        W: head weight or its :class:`~robustsig.metrics.directions.HeadSVD`.
        b: head bias or ``None``.
        fractions: fractions of directions to prune.
        orders: pruning orders, see :data:`ORDERS`.
        importance, seed, class_mask, class_map: as :class:`PruningAccumulator`.

    Example:
        >>> import torch
        >>> W, h = torch.randn(5, 16), torch.randn(300, 16)
        >>> curves = PruningCurves(W, None, [0.0, 1.0], ["singular", "random"])
        >>> curves.update(h, (h @ W.T).argmax(1))
        >>> [curve["accuracy"][0] for curve in curves.compute().values()]
        [np.float64(1.0), np.float64(1.0)]
    """

    def __init__(self, W: Any, b: Any = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 orders: Sequence[str] = ("singular",), *, importance: Any = None, seed: int = 0,
                 class_mask: Any = None, class_map: Sequence[Sequence[int]] | None = None) -> None:
        if not orders:
            raise InputError(f"orders must name at least one of {', '.join(ORDERS)}")
        svd = as_head_svd(W)
        self.accumulators = {order: PruningAccumulator(svd, b, fractions, order, importance=importance, seed=seed,
                                                       class_mask=class_mask, class_map=class_map)
                             for order in orders}
        self._first = next(iter(self.accumulators.values()))

    def update(self, h: Any, labels: Any) -> None:
        """Add a batch: activations ``h`` (``N_b x features``) and their integer labels."""
        h, labels = self._first._check_batch(h, labels)
        projections = self._first.project(h)
        for accumulator in self.accumulators.values():
            accumulator.update_projected(projections, labels)

    def compute(self) -> dict[str, MetricTable]:
        """Order -> its curve, as :meth:`PruningAccumulator.compute`."""
        return {order: accumulator.compute() for order, accumulator in self.accumulators.items()}


def pruning_curve(h: Any, labels: Any, W: Any, b: Any = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  order: str = "singular", class_mask: Any = None, *,
                  class_map: Sequence[Sequence[int]] | None = None, importance: Any = None,
                  seed: int = 0, chunk_rows: int = CHUNK_ROWS) -> MetricTable:
    """Accuracy after pruning each fraction of the head's least important singular directions, in one pass.

    Args:
        h: activations ``N x features`` (tensor, numpy array or memory map; streamed ``chunk_rows`` at a time).
        labels: ``N`` integer labels.
        W: head weight ``classes x features``, or its :class:`~robustsig.metrics.directions.HeadSVD`.
        b: head bias or ``None``.
        fractions: fractions of directions to prune (default 65 levels, 0 to 1).
        order: ``"singular"`` (smallest singular values first), ``"importance"`` or ``"random"``.
        class_mask: restrict scoring to these logits (ImageNet-R/A: 200 classes; labels are logit indices): a
            boolean mask or logit indices, e.g. a dataset's ``class_indices``.
        class_map: per class, the logits it stands for (ObjectNet; labels are class numbers), e.g. a dataset's
            ``class_map``. ``**robustsig.data.scoring.pruning_scoring(dataset)`` passes the right one.
        importance: importance per direction for ``order="importance"``; when omitted it is computed from ``h``
            (one more pass). To prune a shift set in the in-distribution order, pass the importance computed on
            the in-distribution activations.
        seed: seed of the random order.
        chunk_rows: rows per batch.

    Returns:
        :class:`~robustsig.metrics.table.MetricTable` with columns ``fraction``, ``n_pruned``, ``n_kept``,
        ``accuracy`` (one row per requested fraction) and ``meta`` ``{"order", "rank", "n_samples"}``.

    Example:
        >>> import torch
        >>> W, h = torch.randn(5, 16), torch.randn(300, 16)
        >>> labels = (h @ W.T).argmax(1)
        >>> curve = pruning_curve(h, labels, W, fractions=[0.0, 0.4, 1.0])
        >>> curve["accuracy"][0], curve["n_pruned"].tolist()
        (np.float64(1.0), [0, 2, 5])
    """
    n = num_rows(h, "h (activations)")
    if not hasattr(labels, "shape"):
        labels = to_tensor(labels, "labels")
    if len(labels.shape) != 1 or labels.shape[0] != n:
        raise InputError(f"labels must be a 1-D array with one label per row of h ({n}), got shape "
                         f"{tuple(labels.shape)}")
    svd = as_head_svd(W)
    if order == "importance" and importance is None:
        importance = direction_importance(svd, h, chunk_rows=chunk_rows)
    acc = PruningAccumulator(svd, b, fractions, order, importance=importance, seed=seed, class_mask=class_mask,
                             class_map=class_map)
    for start, chunk in iter_rows(h, chunk_rows):
        acc.update(chunk, labels[start:start + chunk_rows])
    return acc.compute()


def pruning_effective_robustness(id_curve: MetricTable, shift_curves: Mapping[str, MetricTable],
                                 b1: float = PAPER_B1, b0: float = PAPER_B0) -> MetricTable:
    """Effective robustness at every pruning level, from the in-distribution curve and the shift-set curves.

    Args:
        id_curve: :func:`pruning_curve` on the in-distribution set (ImageNet val).
        shift_curves: dataset name -> :func:`pruning_curve` on it (same head, order and fractions); ACC(S) is
            their mean (the paper averages its five shift sets).
        b1, b0: the baseline line (see :func:`~robustsig.metrics.robustness.effective_robustness`).

    Returns:
        MetricTable with ``fraction``, ``n_pruned``, ``acc_id``, ``acc_<name>`` per shift set, ``acc_shift``, ``er``.
        Levels where the in-distribution accuracy is exactly 0 or 1 (infinite logit) get ``er = NaN`` and a warning.
    """
    if not shift_curves:
        raise InputError("shift_curves is empty: give at least one shift-set curve")
    for name, curve in shift_curves.items():
        if not np.array_equal(curve["n_pruned"], id_curve["n_pruned"]):
            raise InputError(f"the curve of {name!r} was computed at other pruning levels than the in-distribution "
                             "curve: use the same head and fractions")
        if curve.meta.get("order") != id_curve.meta.get("order"):
            raise InputError(f"the curve of {name!r} uses order {curve.meta.get('order')!r}, the in-distribution "
                             f"curve {id_curve.meta.get('order')!r}")
    acc_id = id_curve["accuracy"].astype(np.float64)
    columns: dict[str, Any] = {"fraction": id_curve["fraction"], "n_pruned": id_curve["n_pruned"], "acc_id": acc_id}
    for name, curve in shift_curves.items():
        columns[f"acc_{name}"] = curve["accuracy"]
    acc_shift = np.mean([curve["accuracy"] for curve in shift_curves.values()], axis=0)
    columns["acc_shift"] = acc_shift
    finite = (acc_id > 0) & (acc_id < 1)
    if not finite.all():
        warnings.warn(f"ER is undefined (NaN) at {int((~finite).sum())} level(s) where the in-distribution accuracy "
                      "is exactly 0 or 1", RuntimeWarning, stacklevel=2)
    er = np.full_like(acc_id, math.nan)
    er[finite] = effective_robustness(acc_id[finite], acc_shift[finite], b1, b0)
    columns["er"] = er
    return MetricTable(columns, meta={**id_curve.meta, "b1": b1, "b0": b0, "shift_sets": list(shift_curves)})
