"""Concept probing: average precision of every direction for every concept, and what the AP matrix says.

A direction encodes a concept when ranking images by their projection on it separates the concept's images from
the others: its average precision (AP) is high. ``average_precision_matrix`` returns the AP of every
(concept, direction) pair with exactly the values of ``sklearn.metrics.average_precision_score``, ties included
(tied scores form one threshold). It never loops over pairs; it uses this identity::

    AP = 1/P * sum over positives n of  #{positives with score >= s_n} / #{samples with score >= s_n}

The per-concept form (the paper's balanced sets, the path the study uses) pads concepts of similar size into
batches and sorts every (concept, direction) row of a batch at once; float32 scores travel as float64 sort keys
whose lowest mantissa bit is the label, so the sort alone orders the labels and equal scores stay recognisable.
Cumulative counts then give every AP; only the rows holding ties are redone with their tie groups. The same
sort serves ``orientation="both"`` and ``"sides"`` (the AP of ``-s`` counts from the other end). It runs in torch on
the scores' device (or ``device``: a GPU gives the same values), with numpy's vectorised sort on the CPU. On the CPU,
sets of up to 2,048 float32 scores (nearly all of Broden's) take a compact path in numpy, one batch per thread: the
label replaces the lowest bit of the float32 score itself, so the sort moves 4-byte keys, and the few rows where that
bit could matter (two scores equal or one float32 step apart) are redone exactly. The dense form sorts each direction
once and ranks, per concept, only its positives among themselves (on the CPU, with numpy). Memory stays bounded by
chunking (``max_elements`` entries per temporary array).

A concept without a positive sample has no AP: NaN with a warning (sklearn returns 0.0 with a warning; NaN keeps
such a concept from ever counting as encoded or not encoded). A concept without negatives has AP 1.

Orientation. ``orientation="positive"`` (the default, the paper's: Section 4 follows Suau et al., the projection on
``v_i`` *is* the classifier whose AP is measured) ranks by the scores as given, so a concept whose images score low
on a direction gets about its chance AP there. A singular vector is defined only up to its sign;
:func:`robustsig.head_svd` fixes it (the largest-magnitude entry of each ``v_i`` is positive), so the one-sided AP is
the same on every LAPACK build and device. ``orientation="both"`` (a variant) takes, per (concept, direction), the
larger of AP(s) and AP(-s): does the direction separate the concept on either side. ``orientation="sides"`` returns
the two one-sided matrices, AP(s) and AP(-s), from the same sort: ``both`` is their ``fmax``.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import as_matrix, to_tensor
from robustsig.metrics._ranking import rank_exact_scores, tie_groups

#: Default bound on the entries of one temporary array (~1M entries: ~8 MB per int64 array).
MAX_ELEMENTS = 1 << 20

#: Concepts batched into one sort differ in size by at most this factor (the padding costs sort work).
_BUCKET_RATIO = 1.25

#: Entries of one batch of the per-concept form at most: its temporaries stay in the CPU's cache (2 MB per
#: float64 array; 1M-entry batches took 2x longer, measured).
_CHUNK_ELEMENTS = 1 << 17

#: Concepts of at most this many samples take the compact float32 sort (:func:`_ap_batch_compact`): beyond it,
#: rows holding two scores one float32 step apart (each redone exactly) stop being rare.
_COMPACT_WIDTH = 2048

#: The paper's threshold: a direction encodes a concept when its AP is at least 0.9.
AP_THRESHOLD = 0.9

Orientation = Literal["positive", "both", "sides"]
ORIENTATIONS: tuple[str, ...] = ("positive", "both", "sides")


def _bool_labels(x: Any, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    t = to_tensor(x, name)
    if tuple(t.shape) != shape:
        raise InputError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise InputError(f"{name} must be boolean (or 0/1) concept membership")
        t = t != 0
    return t


def _all_finite(t: torch.Tensor) -> bool:
    # numpy's check on the CPU: with many small per-concept sets torch's overhead shows (~10x, measured)
    return bool(np.isfinite(t.numpy()).all()) if t.device.type == "cpu" else bool(torch.isfinite(t).all())


def _as_scores(x: Any, name: str) -> np.ndarray:
    # scores keep their float dtype: ties are compared in the precision they were stored in, as sklearn does;
    # integers too large for float32 keep their order (rank_exact_scores)
    scores = as_matrix(rank_exact_scores(x), name, finite=False).cpu()
    if not _all_finite(scores):
        raise InputError(f"{name} contains NaN or infinite values")
    return scores.numpy()


def _warn_no_positives(positives: np.ndarray) -> None:
    empty = np.flatnonzero(positives == 0).tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        warnings.warn(f"{len(empty)} concept(s) have no positive sample (concepts {shown}): their AP is NaN",
                      RuntimeWarning, stacklevel=4)


def _counts_at_least(ordered: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """For rows sorted ascending (``R x n``), how many entries of the row are >= the entry at each position
    (ties counted: one threshold per distinct score, as sklearn).

    Returns:
        ``(counts, ties)``: int32 counts, and ``None`` when no row has a tie, else ``(rows, start)`` with the
        rows holding ties and, for those rows, the first position of each entry's tie group.
    """
    n = ordered.shape[1]
    counts = np.broadcast_to(np.arange(n, 0, -1, dtype=np.int32), ordered.shape).copy()
    tied = ordered[:, 1:] == ordered[:, :-1]
    rows = np.flatnonzero(tied.any(axis=1))
    if rows.size == 0:  # the common case: patch only the few rows with ties
        return counts, None
    first = np.where(tied[rows], 0, np.arange(1, n, dtype=np.int32))
    start = np.zeros((rows.size, n), dtype=np.int32)
    np.maximum.accumulate(first, axis=1, out=start[:, 1:])
    counts[rows] = n - start
    return counts, (rows, start)


def _ap_sum(is_positive: np.ndarray, positives_above: np.ndarray, all_above: np.ndarray,
            n_positive: np.ndarray) -> np.ndarray:
    """``1/P * sum_{positives} positives_above / all_above`` over the last axis, in float64."""
    ratio = np.true_divide(positives_above, all_above, dtype=np.float64)
    return (ratio * is_positive).sum(axis=-1) / n_positive  # faster than a masked sum


def _chunks_by_size(sizes: np.ndarray, row_elements: int, max_elements: int) -> list[list[int]]:
    """Group item indices, in increasing ``sizes``, so each group's ``len * max(size) * row_elements`` fits."""
    groups: list[list[int]] = []
    current: list[int] = []
    for i in np.argsort(sizes, kind="stable").tolist():
        if current and (len(current) + 1) * int(sizes[i]) * row_elements > max_elements:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _ap_matrix_dense(scores: np.ndarray, labels: np.ndarray, max_elements: int) -> np.ndarray:
    """AP for ``scores`` (N x D) against ``labels`` (N x C): per direction chunk, every sample's count of samples
    scoring at least as high; then per concept chunk, the positives ranked among themselves."""
    n, d = scores.shape
    positives = labels.sum(axis=0)
    _warn_no_positives(positives)
    ap = np.full((labels.shape[1], d), np.nan)
    concepts = np.flatnonzero(positives > 0)
    if concepts.size == 0:
        return ap
    labels_t = np.ascontiguousarray(labels.T)
    positive_rows = [np.flatnonzero(labels_t[c]) for c in concepts]
    d_chunk = max(1, min(d, max_elements // n))
    groups = _chunks_by_size(positives[concepts], d_chunk, max_elements)
    for d0 in range(0, d, d_chunk):
        columns = np.ascontiguousarray(scores[:, d0:d0 + d_chunk].T)       # Dc x N
        order = np.argsort(columns, axis=-1)
        counts, _ = _counts_at_least(np.sort(columns, axis=-1))            # sorting again beats gathering
        all_above = np.empty(columns.shape, dtype=np.int32)                 # per sample: samples scoring >= it
        np.put_along_axis(all_above, order, counts, axis=-1)
        for group in groups:
            rows = [positive_rows[i] for i in group]
            width = max(len(r) for r in rows)
            index = np.zeros((len(rows), width), dtype=np.int64)
            valid = np.zeros((len(rows), width), dtype=bool)
            for j, r in enumerate(rows):
                index[j, :len(r)] = r
                valid[j, :len(r)] = True
            values = np.where(valid, columns[:, index], -np.inf).reshape(-1, width)  # (Dc*c) x width
            order = np.argsort(values, axis=-1)
            ordered = np.sort(values, axis=-1)                               # padding (-inf) first
            positives_above, _ = _counts_at_least(ordered)
            n_positive = np.tile(positives[concepts[group]], columns.shape[0])
            ap_chunk = _ap_sum(ordered > -np.inf, positives_above,
                               np.take_along_axis(all_above[:, index].reshape(-1, width), order, -1), n_positive)
            ap[concepts[group], d0:d0 + d_chunk] = ap_chunk.reshape(columns.shape[0], len(group)).T
    return ap


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` sorted along its last dimension, in place. Hand-written: on the CPU numpy's vectorised sort is ~7x
    faster than torch's (measured)."""
    if x.device.type == "cpu":
        x.numpy().sort(axis=-1)
        return x
    return x.copy_(torch.sort(x, dim=-1).values)


def _argsort_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of ``x`` sorted along its last dimension."""
    if x.device.type == "cpu":
        order = torch.from_numpy(np.argsort(x.numpy(), axis=-1))
        return x.take_along_dim(order, -1), order
    return torch.sort(x, dim=-1)


def _ap_tied_rows(positive: torch.Tensor, count: torch.Tensor, tied: torch.Tensor, n: torch.Tensor,
                  n_positive: torch.Tensor, orientation: str) -> torch.Tensor:
    """``P * AP`` of rows that hold ties: each positive counts the samples of its whole tie group (see
    :func:`_ap_sorted`); ``positive`` and ``count`` are float64 ``R x W``, ``n`` and ``n_positive`` int64 ``R x 1``."""
    start, end = tie_groups(tied)
    ratio = (n_positive - (count - positive).gather(-1, start)) / (n - start).clamp_min(1)
    ap = (ratio * positive).sum(-1)
    if orientation != "positive":
        low = ((count.gather(-1, end) / (end + 1)) * positive).sum(-1)
        ap = torch.maximum(ap, low) if orientation == "both" else torch.stack((ap, low), -1)
    return ap


class _Buffers:
    """Flat buffers reused by the batches of one call. Hand-written: a fresh multi-MB tensor per step of every
    batch cost more in page faults than the arithmetic itself (~2x the whole kernel, measured)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.flat.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = self.flat[name] = torch.empty(size, dtype=dtype, device=self.device)
        return buffer[:size].view(shape)


def _ap_sorted(positive: torch.Tensor, tied: torch.Tensor, n: torch.Tensor, n_positive: torch.Tensor,
               orientation: str, buffers: _Buffers) -> torch.Tensor:
    """AP of each row of a batch from its labels in increasing score order, ties grouped (sklearn's values).

    Args:
        positive: ``B x D x W`` float64, 1 for a positive; row (b, d) holds its ``n[b]`` samples first, then padding
            (label 0).
        tied: ``B x D x (W-1)`` bool, entry i ties with entry i + 1 (never true in the padding).
        n, n_positive: ``B`` int64, samples and positives of each batch entry (``n_positive`` > 0).
        orientation: ``"positive"`` (AP of the scores), ``"both"`` (the larger of the AP of s and of -s) or
            ``"sides"`` (both APs).
        buffers: where the temporaries live.

    Returns:
        ``B x D`` float64 (``"sides"``: ``B x D x 2``, the AP of s then of -s).

    With ``start``/``end`` the first/last position of an entry's tie group, a positive at position i adds to
    ``P * AP(s)`` the positives over the samples scoring at least as high, ``(P - positives before start) /
    (n - start)``, and to ``P * AP(-s)`` the positives over the samples scoring at most as high,
    ``(positives up to end) / (end + 1)``. Without ties ``start = end = i``, so the k-th positive adds
    ``(P + 1 - k) / (n - i)``: that runs on every row, and only the rows holding a tie are redone with their groups.
    Counts are exact in float64; dividing is a multiplication by the reciprocals of the W possible counts.
    """
    batch, directions, width = positive.shape
    index = torch.arange(width, device=positive.device, dtype=torch.float64)
    rows = tied.sum(-1).flatten().nonzero().flatten()                   # rare for continuous scores
    count = torch.cumsum(positive, -1, out=buffers.get("count", positive.shape, torch.float64))
    above = n[:, None, None] - index                                   # samples at or above i (<= 0: the padding)
    terms = torch.sub(n_positive[:, None, None] + 1.0, count, out=buffers.get("terms", positive.shape, torch.float64))
    terms *= positive
    terms *= torch.where(above > 0, 1.0 / above, 0.0)
    ap = terms.sum(-1)
    if orientation != "positive":
        torch.mul(count, positive, out=terms)
        terms *= 1.0 / (index + 1.0)
        ap = torch.maximum(ap, terms.sum(-1)) if orientation == "both" else torch.stack((ap, terms.sum(-1)), -1)
    if rows.numel():
        flat = (-1, width)
        ap.view(-1, *ap.shape[2:])[rows] = _ap_tied_rows(positive.reshape(flat)[rows], count.reshape(flat)[rows],
                                          tied.reshape(-1, width - 1)[rows], n[rows // directions, None],
                                          n_positive[rows // directions, None], orientation)
    return ap / n_positive.view(-1, *[1] * (ap.dim() - 1))


def _size_buckets(sizes: np.ndarray, directions: int, max_elements: int) -> list[tuple[list[int], int, int]]:
    """Batches ``(concepts, directions per chunk, width)`` of concepts of similar size (padded to ``width``, the
    largest: at most ``_BUCKET_RATIO`` times the smallest), each chunk within ``max_elements`` entries."""
    batches = []
    order = np.argsort(sizes, kind="stable").tolist()
    while order:
        take = int(np.searchsorted(sizes[order], _BUCKET_RATIO * sizes[order[0]], side="right"))
        bucket, order = order[:take], order[take:]
        width = int(sizes[bucket[-1]])
        chunk = max(1, min(directions, max_elements // width))
        per_batch = max(1, max_elements // (width * chunk))
        batches += [(bucket[i:i + per_batch], chunk, width) for i in range(0, len(bucket), per_batch)]
    return batches


def _padding(width: int, device: torch.device) -> torch.Tensor:
    """float64 padding entries: above every float32 value, increasing (no two tie), lowest bit 0 (negatives)."""
    bits = torch.arange(width, device=device, dtype=torch.int64) * 2 + (0x7FF0000000000000 - 2 * width)
    return bits.view(torch.float64)


def _ap_batch(sets: Sequence[torch.Tensor], flags: Sequence[torch.Tensor], group: list[int], d0: int, d1: int,
              width: int, orientation: str, buffers: _Buffers) -> torch.Tensor:
    """AP (``len(group) x (d1 - d0)``) of a batch of concepts padded to ``width`` samples: one batched sort.

    float32 scores are sorted as float64 values (exact) that carry the label in their lowest mantissa bit, so the
    sort alone orders the labels and keeps equal scores recognisable (equal but for that bit); float64 scores have
    no spare bit and are sorted with their indices.
    """
    device = buffers.device
    shape = (len(group), d1 - d0, width)
    sizes = [sets[c].shape[0] for c in group]
    n = torch.tensor(sizes, device=device)
    labels = torch.zeros(len(group), 1, width, dtype=torch.int64, device=device)
    values = buffers.get("values", shape, torch.float64)
    single = sets[group[0]].dtype == torch.float32
    pad = _padding(width, device) if single else torch.full((width,), torch.inf, dtype=torch.float64, device=device)
    for j, c in enumerate(group):                                      # copies only: the math is batched
        values[j, :, :sizes[j]] = sets[c][:, d0:d1].T
        values[j, :, sizes[j]:] = pad[sizes[j]:]
        labels[j, 0, :sizes[j]] = flags[c]
    n_positive = labels.sum((1, 2))
    positive = buffers.get("positive", shape, torch.float64)
    tied = buffers.get("tied", shape[:2] + (width - 1,), torch.bool)
    if single:
        values.add_(0.0)                                               # -0.0 becomes 0.0: one threshold, as sklearn
        bits = values.view(torch.int64).bitwise_or_(labels)
        _sort_rows(values)
        positive.copy_(torch.bitwise_and(bits, 1, out=buffers.get("terms", shape, torch.float64).view(torch.int64)))
        bits.bitwise_or_(1)
        torch.eq(bits[..., 1:], bits[..., :-1], out=tied)
    else:
        values, order = _argsort_rows(values)
        positive.copy_(labels.expand_as(order).take_along_dim(order, -1))
        torch.eq(values[..., 1:], values[..., :-1], out=tied)
        tied &= torch.arange(1, width, device=device) < n[:, None, None]
    return _ap_sorted(positive, tied, n, n_positive, orientation, buffers)


def _ap_batch_compact(arrays: Sequence[np.ndarray], flags: Sequence[np.ndarray], group: list[int], d0: int,
                      d1: int, width: int, orientation: str, buffers: _Buffers, redo: list[tuple[int, int]]
                      ) -> torch.Tensor:
    """:func:`_ap_batch` for float32 scores on the CPU, in numpy (a tenth of torch's overhead per call) with half
    the bytes and a third of the passes; ``arrays`` and ``flags`` are the sets' numpy views.

    The label replaces the lowest bit of each negated float32 score, so the sort (ascending: the scores in
    descending order) moves 4-byte keys; only the order of two scores equal or one float32 step apart is in
    doubt. Such rows (rare among a few thousand continuous scores) are appended to ``redo`` as (concept,
    direction), for :func:`_ap_batch` to redo exactly. Every other row has no ties: the k-th positive from the
    top, at position j, adds ``k / (j + 1)`` to ``P * AP(s)`` (one matrix-vector product for the whole batch:
    the weights do not depend on the concept) and ``(P + 1 - k) / (n - j)`` to ``P * AP(-s)``. Counts and
    products are exact integers in float64, so the values are sklearn's to rounding.
    """
    shape = (len(group), d1 - d0, width)
    sizes = [len(flags[c]) for c in group]
    labels = np.zeros((len(group), 1, width), dtype=np.int32)
    keys = buffers.get("keys", shape, torch.float32).numpy()
    for j, c in enumerate(group):                                      # copies only: the math is batched
        np.subtract(np.float32(0.0), arrays[c][:, d0:d1].T, out=keys[j, :, :sizes[j]])  # descending; -0.0 is 0.0
        keys[j, :, sizes[j]:] = np.inf                                 # padding sorts last, label 0
        labels[j, 0, :sizes[j]] = flags[c]
    bits = keys.view(np.int32)
    np.bitwise_and(bits, -2, out=bits)
    np.bitwise_or(bits, labels, out=bits)
    keys.sort(axis=-1)
    unsigned = bits.view(np.uint32)                                    # keys equal but for the lowest bit
    differ = np.bitwise_xor(unsigned[..., 1:], unsigned[..., :-1],
                            out=buffers.get("near", shape[:2] + (width - 1,), torch.int32).numpy().view(np.uint32))
    for j, size in enumerate(sizes):
        differ[j, :, size - 1:] = 2                                    # the padding is all +inf
    for row in (np.flatnonzero(differ.min(-1) <= 1).tolist() if width > 1 else []):
        redo.append((group[row // shape[1]], d0 + row % shape[1]))
    positive = buffers.get("positive", shape, torch.float64).numpy()
    np.copyto(positive, np.bitwise_and(bits, 1, out=buffers.get("positive32", shape, torch.int32).numpy()))
    terms = buffers.get("count", shape, torch.float64).numpy()
    torch.cumsum(torch.from_numpy(positive), -1, out=torch.from_numpy(terms))   # torch's: ~6x numpy's here
    np.multiply(terms, positive, out=terms)                            # k at the k-th positive, else 0
    index = np.arange(width, dtype=np.float64)
    ap = (terms.reshape(-1, width) @ (1.0 / (index + 1.0))).reshape(shape[:2])
    n_positive = labels.sum((1, 2)).astype(np.float64)
    if orientation != "positive":
        below = np.multiply(positive, (n_positive + 1)[:, None, None], out=positive)
        np.subtract(terms, below, out=below)                           # -(P + 1 - k)
        n = np.array(sizes, dtype=np.float64)[:, None]
        weights = np.divide(1.0, n - index, out=np.zeros((len(group), width)), where=index < n)
        low = np.stack([-(below[j] @ weights[j]) for j in range(len(group))])  # P * AP(-s)
        ap = np.maximum(ap, low) if orientation == "both" else np.stack((ap, low), -1)
    return torch.from_numpy(ap / n_positive.reshape((-1,) + (1,) * (ap.ndim - 1)))


def _per_concept_inputs(scores: Sequence[Any], labels: Sequence[Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Validated score matrices (one float dtype) and boolean label vectors, on their own devices."""
    if len(scores) != len(labels):
        raise InputError(f"scores and labels must list the same concepts, got {len(scores)} score sets and "
                         f"{len(labels)} label vectors")
    if len(scores) == 0:
        raise InputError("scores is an empty list: give one score matrix per concept")
    sets = [as_matrix(rank_exact_scores(s), f"scores[{c}] (samples x directions)", finite=False)
            for c, s in enumerate(scores)]
    for c, s in enumerate(sets):
        if not _all_finite(s):
            raise InputError(f"scores[{c}] (samples x directions) contains NaN or infinite values")
    d = sets[0].shape[1]
    for c, s in enumerate(sets):
        if s.shape[1] != d:
            raise InputError(f"scores[{c}] has {s.shape[1]} directions, scores[0] has {d}: all concepts must be "
                             "scored on the same directions")
    if any(s.dtype == torch.float64 for s in sets):
        sets = [s.double() for s in sets]
    flags = [_bool_labels(y, f"labels[{c}]", (sets[c].shape[0],)) for c, y in enumerate(labels)]
    return sets, flags


def _compact_batches(arrays: Sequence[np.ndarray], flags: Sequence[np.ndarray],
                     jobs: Sequence[tuple[list[int], int, int, int]], orientation: str
                     ) -> list[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """:func:`_ap_batch_compact` of each ``(group, d0, d1, width)`` job: its AP and the rows to redo. Hand-written
    threading: numpy's sort and arithmetic release the GIL, so one batch per thread uses every core (torch's own
    threads would split only the one cumulative sum, and stall at its barrier when other processes hold a core)."""
    local = threading.local()

    def run(job: tuple[list[int], int, int, int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        if not hasattr(local, "buffers"):
            local.buffers = _Buffers(torch.device("cpu"))
        redo: list[tuple[int, int]] = []
        group, d0, d1, width = job
        return _ap_batch_compact(arrays, flags, group, d0, d1, width, orientation, local.buffers, redo), redo

    threads = torch.get_num_threads()
    if threads < 2 or len(jobs) < 2:
        return [run(job) for job in jobs]
    try:
        torch.set_num_threads(1)
        with ThreadPoolExecutor(min(threads, len(jobs))) as pool:
            return list(pool.map(run, jobs))
    finally:
        torch.set_num_threads(threads)


def _ap_matrix_per_concept(scores: Sequence[Any], labels: Sequence[Any], max_elements: int, orientation: str,
                           device: torch.device | None) -> torch.Tensor:
    """AP for per-concept sample sets: ``scores[c]`` (N_c x D) with boolean ``labels[c]`` (N_c)."""
    sets, flags = _per_concept_inputs(scores, labels)
    device = sets[0].device if device is None else device
    d = sets[0].shape[1]
    sizes = np.array([s.shape[0] for s in sets])
    positives = np.array([int(y.sum()) for y in flags])
    _warn_no_positives(positives)
    sides = (2,) if orientation == "sides" else ()
    ap = torch.full((len(sets), d, *sides), torch.nan, dtype=torch.float64, device=device)
    buffers = _Buffers(device)
    present = np.flatnonzero(positives > 0)
    compact = device.type == "cpu" and all(s.device.type == "cpu" and s.dtype == torch.float32 for s in sets)
    arrays = [s.detach().numpy() for s in sets] if compact else None
    flag_arrays = [y.numpy() for y in flags] if compact else None
    jobs = [(present[batch].tolist(), d0, min(d, d0 + chunk), width)
            for batch, chunk, width in _size_buckets(sizes[present], d, min(max_elements, _CHUNK_ELEMENTS))
            for d0 in range(0, d, chunk)]
    narrow = [job for job in jobs if compact and job[3] <= _COMPACT_WIDTH]
    for group, d0, d1, width in jobs:
        if not (compact and width <= _COMPACT_WIDTH):
            ap[group, d0:d1] = _ap_batch(sets, flags, group, d0, d1, width, orientation, buffers)
    redo: list[tuple[int, int]] = []
    for (group, d0, d1, _), (values, found) in zip(narrow, _compact_batches(arrays, flag_arrays, narrow, orientation)):
        ap[group, d0:d1] = values
        redo += found
    if redo:                                                           # ties and near-ties: one exact batch
        columns = [sets[c][:, k:k + 1] for c, k in redo]
        width = max(column.shape[0] for column in columns)
        exact = _ap_batch(columns, [flags[c] for c, _ in redo], list(range(len(redo))), 0, 1, width, orientation,
                          buffers)
        rows, directions = zip(*redo)
        ap[list(rows), list(directions)] = exact[:, 0]
    return ap.cpu()


def average_precision_matrix(scores: Any, labels: Any, *, orientation: Orientation = "positive",
                             max_elements: int = MAX_ELEMENTS, device: str | torch.device | None = None
                             ) -> torch.Tensor:
    """Average precision of every direction for every concept (the values of sklearn's
    ``average_precision_score(labels[:, c], scores[:, d])``, ties grouped by distinct score).

    Two input forms:

    - ``scores`` an ``N x D`` matrix (projections of N images on D directions) and ``labels`` an ``N x C`` boolean
      matrix (which images show which concept).
    - the paper's balanced per-concept sets: ``scores`` a list of C matrices (``N_c x D``, the concept's positive
      and negative images) and ``labels`` a list of C boolean vectors (``N_c``, True for positives).

    Args:
        scores: as above; float32 or float64, finite.
        labels: as above; booleans or 0/1.
        orientation: ``"positive"`` (the paper's): the AP of the scores as given; ``"both"`` (a variant): the larger
            of the AP of the scores and the AP of their negation (each sklearn's value), so a direction that
            separates a concept on its negative side counts as well; ``"sides"``: both one-sided matrices from one
            sort (see the module notes).
        max_elements: bound on the entries of one temporary array; peak memory is about 60 bytes per entry
            (~60 MB at the default; the per-concept form batches at most 2**18 entries, ~15 MB).
        device: where the per-concept form computes (default: the device of ``scores``; ``"cuda"`` runs it on
            the GPU with the same values). The dense form computes on the CPU.

    Returns:
        float64 CPU tensor ``C x D`` (``"sides"``: ``2 x C x D``, the AP of the scores then of their negation); NaN
        (with a warning) for a concept without positives.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[0.1, 0.9], [0.4, 0.8], [0.35, 0.1], [0.8, 0.2]])
        >>> labels = torch.tensor([[False], [False], [True], [True]])
        >>> average_precision_matrix(scores, labels)   # sklearn: 0.8333..., 0.4167...
        tensor([[0.8333, 0.4167]], dtype=torch.float64)
        >>> average_precision_matrix(scores, labels, orientation="both")   # direction 1 separates on its low side
        tensor([[0.8333, 1.0000]], dtype=torch.float64)
        >>> average_precision_matrix(scores, labels, orientation="sides")[1]   # the AP of -scores
        tensor([[0.5000, 1.0000]], dtype=torch.float64)
    """
    if orientation not in ORIENTATIONS:
        raise InputError(f"orientation must be one of {', '.join(map(repr, ORIENTATIONS))}, got {orientation!r}")
    if isinstance(scores, (list, tuple)):
        if not isinstance(labels, (list, tuple)):
            raise InputError("scores is a list of per-concept score matrices, so labels must be a list of "
                             "per-concept boolean vectors")
        ap = _ap_matrix_per_concept(scores, labels, max_elements, orientation,
                                    None if device is None else torch.device(device))
        return ap.movedim(-1, 0).contiguous() if orientation == "sides" else ap
    s = _as_scores(scores, "scores (samples x directions)")
    y = to_tensor(labels, "labels")
    if y.ndim != 2:
        raise InputError(f"labels must be N x C (one column per concept), got shape {tuple(y.shape)}; for a single "
                         "concept use labels[:, None]")
    y = _bool_labels(y, "labels (samples x concepts)", (s.shape[0], y.shape[1])).cpu().numpy()
    ap = _ap_matrix_dense(s, y, max_elements)
    if orientation != "positive":
        with warnings.catch_warnings():   # the no-positive warning was given once already
            warnings.simplefilter("ignore", RuntimeWarning)
            low = _ap_matrix_dense(-s, y, max_elements)
        ap = np.fmax(ap, low) if orientation == "both" else np.stack((ap, low))
    return torch.from_numpy(ap)


@dataclass(frozen=True)
class ConceptSummary:
    """What an AP matrix says at a threshold (see :func:`concept_summary`).

    Attributes:
        ap: the ``C x D`` AP matrix.
        threshold: AP at or above which a direction encodes a concept.
        concepts: concept names (``None``: concepts are named by their index).
    """

    ap: torch.Tensor
    threshold: float
    concepts: tuple[str, ...] | None = None

    @property
    def encoded(self) -> torch.Tensor:
        """Boolean ``C x D``: direction d encodes concept c (NaN APs never do)."""
        return self.ap >= self.threshold

    @property
    def concept_indices(self) -> torch.Tensor:
        """Indices of the concepts encoded by at least one direction."""
        return self.encoded.any(dim=1).nonzero().flatten()

    @property
    def unique_concepts(self) -> int:
        """Eq. 5: the number of concepts encoded by at least one direction."""
        return int(self.encoded.any(dim=1).sum())

    @property
    def concepts_per_direction(self) -> torch.Tensor:
        """Number of concepts each direction encodes (length D)."""
        return self.encoded.sum(dim=0)

    @property
    def polysemanticity(self) -> float:
        """The paper's polysemanticity (Section 4, Table 6): ``d_H^-1 sum_i N_concept(i)``, the mean number of
        concepts per direction over *all* D probed directions (0 when none encodes a concept)."""
        return float(self.concepts_per_direction.double().mean())

    @property
    def polysemanticity_active(self) -> float:
        """A variant, not the paper's: the mean number of concepts per direction over only the directions that
        encode at least one (NaN if none does). ``polysemanticity = polysemanticity_active x (active fraction)``."""
        counts = self.concepts_per_direction
        active = counts[counts > 0]
        return float(active.double().mean()) if active.numel() else float("nan")

    @property
    def polysemantic_directions(self) -> torch.Tensor:
        """Indices of the directions that encode two concepts or more."""
        return (self.concepts_per_direction >= 2).nonzero().flatten()

    def name(self, concept: int) -> str | int:
        """The name of concept ``concept`` (its index when no names were given)."""
        return self.concepts[concept] if self.concepts is not None else int(concept)

    def top_concepts(self, direction: int, k: int = 3) -> list[tuple[str | int, float]]:
        """The ``k`` concepts with the highest AP on ``direction`` (encoded or not), as ``(name, ap)``."""
        if not 0 <= direction < self.ap.shape[1]:
            raise InputError(f"direction must be in [0, {self.ap.shape[1]}), got {direction}")
        column = torch.nan_to_num(self.ap[:, direction], nan=-1.0)
        best = column.argsort(descending=True, stable=True)[:k].tolist()
        return [(self.name(c), float(self.ap[c, direction])) for c in best if column[c] >= 0]

    def concept_set(self) -> set[str | int]:
        """Names (or indices) of the encoded concepts, for overlaps between models."""
        return {self.name(c) for c in self.concept_indices.tolist()}

    def as_dict(self) -> dict[str, Any]:
        """The summary numbers as plain values (for JSON and tables)."""
        return {"threshold": self.threshold, "unique_concepts": self.unique_concepts,
                "polysemanticity": self.polysemanticity, "polysemanticity_active": self.polysemanticity_active,
                "polysemantic_directions": int(self.polysemantic_directions.numel()),
                "concepts_per_direction": self.concepts_per_direction.tolist()}


def concept_summary(ap: Any, threshold: float = AP_THRESHOLD, concepts: Sequence[str] | None = None) -> ConceptSummary:
    """Summarise an AP matrix: unique concepts (eq. 5), concepts per direction, polysemanticity (the paper's mean
    over all directions; ``polysemanticity_active``: over the encoding directions only), top concepts.

    Args:
        ap: ``C x D`` AP matrix from :func:`average_precision_matrix`.
        threshold: a direction encodes a concept when AP >= threshold (paper: 0.9).
        concepts: names of the C concepts.

    Returns:
        :class:`ConceptSummary`.

    Example:
        >>> import torch
        >>> ap = torch.tensor([[0.95, 0.2], [0.91, 0.5], [0.1, 0.3]], dtype=torch.float64)
        >>> summary = concept_summary(ap, concepts=["dog", "grass", "sky"])
        >>> summary.unique_concepts, summary.concepts_per_direction.tolist(), summary.top_concepts(0, k=2)
        (2, [2, 0], [('dog', 0.95), ('grass', 0.91)])
    """
    matrix = as_matrix(ap, "ap (concepts x directions)", dtype=torch.float64, finite=False)
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be an AP in [0, 1], got {threshold}")
    if concepts is not None and len(concepts) != matrix.shape[0]:
        raise InputError(f"{len(concepts)} concept names for an AP matrix with {matrix.shape[0]} concepts")
    return ConceptSummary(matrix, float(threshold), None if concepts is None else tuple(map(str, concepts)))


def concept_threshold_sweep(ap: Any, thresholds: Sequence[float]) -> dict[str, np.ndarray]:
    """Unique concepts and polysemanticity of one AP matrix at each of several thresholds (the sensitivity of the
    counts to the paper's 0.9; its footnote 4 says the conclusions hold at 0.85).

    Args:
        ap: ``C x D`` AP matrix.
        thresholds: AP thresholds in [0, 1].

    Returns:
        ``{"threshold", "unique_concepts", "polysemanticity", "polysemanticity_active"}``, arrays in the order of
        ``thresholds`` (the same numbers as :func:`concept_summary` at each threshold).

    Example:
        >>> import torch
        >>> ap = torch.tensor([[0.95, 0.2], [0.86, 0.5]], dtype=torch.float64)
        >>> sweep = concept_threshold_sweep(ap, [0.85, 0.9])
        >>> sweep["unique_concepts"].tolist(), sweep["polysemanticity"].tolist()
        ([2, 1], [1.0, 0.5])
    """
    summaries = [concept_summary(ap, threshold) for threshold in thresholds]
    return {"threshold": np.array([s.threshold for s in summaries], dtype=np.float64),
            "unique_concepts": np.array([s.unique_concepts for s in summaries], dtype=np.int64),
            "polysemanticity": np.array([s.polysemanticity for s in summaries], dtype=np.float64),
            "polysemanticity_active": np.array([s.polysemanticity_active for s in summaries], dtype=np.float64)}


def concept_overlaps(sets_by_model: Mapping[str, ConceptSummary | Iterable[Any]]) -> dict[tuple[str, ...], set[Any]]:
    """Venn regions of the encoded concepts of several models.

    Args:
        sets_by_model: model name -> its :class:`ConceptSummary` or a set of concept names.

    Returns:
        For every non-empty combination of models, the concepts encoded by exactly those models (keys are tuples
        of model names in the given order; an empty region is left out). ``{("a",): ..., ("a", "b"): ...}``.

    Example:
        >>> concept_overlaps({"a": {"dog", "sky"}, "b": {"sky", "car"}})
        {('a',): {'dog'}, ('b',): {'car'}, ('a', 'b'): {'sky'}}
    """
    sets = {name: (s.concept_set() if isinstance(s, ConceptSummary) else set(s)) for name, s in sets_by_model.items()}
    if not sets:
        raise InputError("sets_by_model is empty: give at least one model")
    names = list(sets)
    regions: dict[tuple[str, ...], set[Any]] = {}
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            inside = set.intersection(*(sets[m] for m in combo))
            region = inside.difference(*(sets[m] for m in names if m not in combo))
            if region:
                regions[combo] = region
    return regions
