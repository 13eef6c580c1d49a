"""The permutation test's kernel: one concept's directions sorted once, then the AP of any batch of label vectors
read off that order, with a rigorous bound on its rounding, so every decision it takes equals the exact one.

For a direction's sorted labels ``o`` (descending scores), their inclusive running count ``c`` and ``P``
positives, sklearn's AP is ``1/P sum_i o_i c_i / (i + 1)`` and the AP of the negated scores
``1/P sum_i o_i (P + 1 - c_i) / (N - i)`` (tie-free). Per block of 16 positions both are a small matrix product:
``c_i`` is the count before the block plus the count inside it (``L o``, ``L`` the 16 x 16 lower-triangular ones),
so the sum is ``w^T (o * c)`` per block (and ``(P + 1) w'^T o - w'^T (o * c)`` for the negated scores). The labels of a batch of permutations are
gathered position-major (every direction and permutation of a position in one row), so every step is one large
matrix product or elementwise pass over cache-sized chunks, in float32 where all counts are exact integers.

Exactness. Each block sum has at most 17 rounded float32 operations, every term is non-negative, and blocks are
combined in float64: each block sum is within ``17 u / (1 - 17 u)`` (u = 2**-24) of its exact value, so the
computed ``P * AP`` is within that factor of the sum of the absolute values of its terms (for the negated sum,
a difference of two such sums, that sum is computed alongside). Tied scores form one
threshold in sklearn (every positive of a tie group counts the group's end): the kernel reads each direction in a
fixed order and bounds the difference, at most ``g (g - 1) / (s + 1)`` per group of ``g`` equal scores starting at
position ``s``. A decision ``AP >= level`` that these bounds cannot settle (an AP within about 1e-6 of the level,
or a tie group near the top of a direction) is settled by the exact float64 AP of that direction and label
vector, ties grouped; directions whose ties are dense (a dead unit, heavily quantised scores) always take that
exact path.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch


BLOCK = 16
"""Positions per block: the within-block running counts are one (16 x 16) matrix product."""
CHUNK = 1 << 19
"""Entries (positions x directions x permutations) of one chunk of the fast path: its buffers stay in cache."""
DENSE_SLACK = 0.01
"""A direction whose ties can move its AP by more than this always takes the exact path."""
_SORT_ROWS = 1 << 22
"""Entries of scores sorted at once while the kernel is built."""
_EXACT_ENTRIES = 1 << 22
"""Entries (label vectors x samples) of one batch of the exact path."""
_INDEX_BITS = (1 << 29) - 1
"""The mantissa bits of a float64 that a float32 value leaves zero: room for the index of 536 million samples."""
_ROUNDING = {torch.float32: 17 * 2.0**-24 / (1 - 17 * 2.0**-24) + 1e-12,
             torch.float64: 17 * 2.0**-53 / (1 - 17 * 2.0**-53) + 1e-15}
"""Relative error bound of the fast path's sums (see the module notes), with a margin for the float64 combination."""


def fast_dtype(device: torch.device) -> torch.dtype:
    """float32 unless a CUDA matrix product may round its inputs to TF32 (then the float32 bound would not hold)."""
    if device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32
                                  or torch.get_float32_matmul_precision() != "highest"):
        return torch.float64
    return torch.float32


def _sort_descending(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, tied)`` of each column of ``scores`` (a slice of directions) as rows: the positions of the scores
    in descending order (``D x N`` int64 or int32) and whether each sorted score equals the next (``D x (N - 1)``).

    Hand-written for the CPU: a float32 score is exact in float64 with the lowest 29 mantissa bits zero, so the
    negated score and its index travel as one float64 key (the index in those bits never crosses a neighbouring
    float32 value): one numpy sort of plain floats (~3x faster than an argsort) gives the order and the ties; -0.0
    is +0.0 first (one threshold, as sklearn)."""
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        keys = np.negative(scores.T.numpy(), dtype=np.float64)
        keys += 0.0
        bits = keys.view(np.int64)
        bits |= np.arange(keys.shape[1], dtype=np.int64)
        keys.sort(axis=1)
        index = bits & _INDEX_BITS
        bits ^= index                                                   # the scores' own bits
        return torch.from_numpy(index), torch.from_numpy(bits[:, 1:] == bits[:, :-1])
    if scores.device.type == "cpu":
        rows = scores.T.contiguous().numpy()
        order = np.argsort(-rows, axis=1, kind="stable")
        values = np.take_along_axis(rows, order, axis=1)
        return torch.from_numpy(order), torch.from_numpy(values[:, 1:] == values[:, :-1])
    values, order = torch.sort(scores.T, dim=1, descending=True)
    return order, values[:, 1:] == values[:, :-1]


def _tie_runs(tied: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The groups of equal sorted scores of each row of ``tied`` (``R x (N - 1)``): ``(row, start, end)`` of every
    group of two or more, in row order (read from the few tied positions only)."""
    row, link = (t.numpy() for t in tied.nonzero(as_tuple=True)) if tied.device.type == "cpu" else (
        t.cpu().numpy() for t in tied.nonzero(as_tuple=True))
    if not len(row):
        return row, link, link
    first = np.r_[True, (row[1:] != row[:-1]) | (link[1:] != link[:-1] + 1)]
    last = np.r_[first[1:], True]
    return row[first], link[first], link[last] + 1


class SortedConcept:
    """One concept's ``N x D`` scores, sorted once; ``positives`` is the (fixed) positive count of its labels.

    Attributes:
        n, d, positives: samples, directions, positives.
        both: the statistic is the larger AP of the two orientations.
        tie_slack: ``2 x D`` float64, per orientation and direction, the most the AP with ties grouped can differ
            from the AP in the kernel's fixed order (0 without ties).
        fast, dense: the directions the fast path reads, and those (densely tied) that always take the exact path.
        constant: per direction, all its scores are equal (its AP is ``P / N`` whatever the labels).
    """

    def __init__(self, scores: torch.Tensor, positives: int, orientation: str) -> None:
        n, d = scores.shape
        device = scores.device
        self.n, self.d, self.positives, self.both = n, d, positives, orientation == "both"
        self.device = device
        self.dtype = fast_dtype(device)
        self.block_count = -(-n // BLOCK)
        padded = self.block_count * BLOCK
        order_t = torch.full((padded, d), n, dtype=torch.int32, device=device)  # padding reads the zero row n
        runs: list[tuple[np.ndarray, ...]] = []
        step = max(1, _SORT_ROWS // max(n, 1))
        for d0 in range(0, d, step):
            order, tied = _sort_descending(scores[:, d0:d0 + step])
            order_t[:n, d0:d0 + step] = order.T.to(device, torch.int32)
            row, first, last = _tie_runs(tied)
            runs.append((row + d0, first, last))
        row, first, last = (np.concatenate(parts) for parts in zip(*runs))
        self.constant = torch.zeros(d, dtype=torch.bool)
        self.constant[torch.from_numpy(row[(first == 0) & (last == n - 1)])] = True    # one value: AP is P / N
        size = (last - first + 1).astype(np.float64)
        slack = torch.from_numpy(np.stack([np.bincount(row, size * (size - 1) / (first + 1), minlength=d),
                                           np.bincount(row, size * (size - 1) / (n - last), minlength=d)]))
        # per tied direction, every position of its groups with the group's first and last position
        spread = np.repeat(np.arange(len(row)), (last - first + 1).astype(np.int64))
        position = first[spread] + np.arange(len(spread)) - np.repeat(np.cumsum(np.r_[0, last - first + 1])[:-1],
                                                                      (last - first + 1).astype(np.int64))
        self._tie_pointer = torch.from_numpy(np.searchsorted(row[spread], np.arange(d + 1)))
        self._tie_position, self._tie_first, self._tie_last = (
            torch.from_numpy(a.astype(np.int64)).to(device) for a in (position, first[spread], last[spread]))
        self.tie_slack = slack / positives
        worst = self.tie_slack.amax(0) if self.both else self.tie_slack[0]
        dense = worst > DENSE_SLACK
        self.fast = (~dense).nonzero().flatten()
        self.dense = dense.nonzero().flatten()
        self.column = torch.full((d,), -1, dtype=torch.int64)
        self.column[self.fast] = torch.arange(len(self.fast))
        self.order_t = order_t[:, self.fast.to(device)].contiguous() if len(self.dense) else order_t
        if len(self.dense):
            self._dense_groups(order_t[:n, self.dense.to(device)].T.to(torch.int64), row[spread], position,
                               first[spread])
        self._slack_fast = self.tie_slack[:, self.fast].to(device)
        i = torch.arange(padded, dtype=torch.float64)
        weights = [torch.where(i < n, 1.0 / (i + 1), 0.0)] + ([torch.where(i < n, 1.0 / (n - i), 0.0)]
                                                               if self.both else [])
        self._weights = torch.stack(weights).view(len(weights), self.block_count, BLOCK).transpose(0, 1).to(
            device, self.dtype).contiguous()                                # blocks x orientations x BLOCK
        self._tril = torch.tril(torch.ones(BLOCK, BLOCK, dtype=self.dtype, device=device))
        self._scratch = threading.local()        # per thread: threads may read different label rows at once

    def _buffers(self) -> dict[str, torch.Tensor]:
        """This thread's scratch tensors (reused from block to block)."""
        buffers = getattr(self._scratch, "buffers", None)
        if buffers is None:
            buffers = self._scratch.buffers = {}
        return buffers

    def _buffer(self, name: str, size: int) -> torch.Tensor:
        buffers = self._buffers()
        buffer = buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = buffers[name] = torch.empty(size, dtype=self.dtype, device=self.device)
        return buffer[:size]

    def _strict(self, blocks: int) -> torch.Tensor:
        """``blocks x blocks`` strictly lower-triangular ones: the counts before each block of a segment."""
        buffers = self._buffers()
        strict = buffers.get("strict")
        if strict is None or strict.shape[0] != blocks:
            strict = buffers["strict"] = torch.tril(torch.ones(blocks, blocks, dtype=self.dtype, device=self.device),
                                                    -1)
        return strict

    def _fast_sums(self, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``P * AP`` of the fast directions in their fixed order for the label columns of ``labels``
        (``(N + 1) x b``, the last row zero): ``(positive, negated, negated's absolute terms)``, each ``D_fast x b``
        float64 (the last two ``None`` for one orientation)."""
        df, b = self.order_t.shape[1], labels.shape[1]
        m = df * b
        segment = min(self.block_count, max(1, CHUNK // (BLOCK * m))) * BLOCK
        both = self.both
        positive = torch.zeros(m, dtype=torch.float64, device=self.device)
        negated = torch.zeros_like(positive) if both else None
        absolute = torch.zeros_like(positive) if both else None
        before = torch.zeros(m, dtype=self.dtype, device=self.device)
        strict = self._strict(segment // BLOCK)
        p1 = self.positives + 1
        for n0 in range(0, self.order_t.shape[0], segment):
            n1 = min(self.order_t.shape[0], n0 + segment)
            blocks = (n1 - n0) // BLOCK
            gathered = self._buffer("gathered", (n1 - n0) * m).view((n1 - n0) * df, b)
            torch.index_select(labels, 0, self.order_t[n0:n1].reshape(-1), out=gathered)
            o = gathered.view(blocks, BLOCK, m)
            count = self._buffer("count", (n1 - n0) * m).view(blocks, BLOCK, m)
            torch.bmm(self._tril.expand(blocks, -1, -1), o, out=count)          # running counts inside a block
            totals = count[:, BLOCK - 1]
            above = (strict[:blocks, :blocks] @ totals).add_(before)            # positives before each block
            before += totals.sum(0)
            count += above[:, None]                                             # c_i: positives up to i (exact)
            weights = self._weights[n0 // BLOCK:n1 // BLOCK]
            sums = torch.bmm(weights, count.mul_(o)).double()                   # sum w_i o_i c_i per block
            positive += sums[:, 0].sum(0)
            if both:                      # sum w'_i o_i (P + 1 - c_i) = (P + 1) sum w'_i o_i - sum w'_i o_i c_i
                plain = torch.bmm(weights[:, 1:], o).double()[:, 0].sum(0) * p1
                negated += plain - sums[:, 1].sum(0)
                absolute += plain + sums[:, 1].sum(0)
        shape = (df, b)
        return (positive.view(shape), negated.view(shape) if both else None,
                absolute.view(shape) if both else None)

    def bounds(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)``, ``D_fast x b`` float64: the statistic (AP, or the larger AP of the two orientations)
        of each fast direction for each label column lies in ``[low, high]``."""
        if not len(self.fast):
            empty = torch.empty(0, labels.shape[1], dtype=torch.float64, device=self.device)
            return empty, empty
        positive, negated, absolute = self._fast_sums(labels)
        rounding, p = _ROUNDING[self.dtype], float(self.positives)
        slack = self._slack_fast
        error = positive * rounding + 1e-12
        low = (positive - error) / p - slack[0, :, None]
        high = (positive + error) / p + slack[0, :, None]
        if negated is not None:
            error = absolute * rounding + 1e-12
            low = torch.maximum(low, (negated - error) / p - slack[1, :, None])
            high = torch.maximum(high, (negated + error) / p + slack[1, :, None])
        return low, high

    def _dense_groups(self, order: torch.Tensor, tied_row: np.ndarray, position: np.ndarray,
                      first: np.ndarray) -> None:
        """The dense directions' groups of equal scores, for :meth:`_dense_exact`: each sample's group per direction
        (``K x N``, groups numbered from the top score down), and per group ``1 / (end + 1)`` and ``1 / (N - start)``
        (``K x G``, 0 past a direction's last group); ``order`` is their descending order (``K x N``), the other
        arguments every tied position's direction, position and group start."""
        k, n = order.shape
        dense_row = torch.full((self.d,), -1, dtype=torch.int64)
        dense_row[self.dense] = torch.arange(k)
        new = torch.ones(k, n, dtype=torch.bool)
        rows = dense_row[torch.from_numpy(tied_row.astype(np.int64))]
        inside = (rows >= 0) & torch.from_numpy(position > first)           # a tied position after its group's first
        new[rows[inside], torch.from_numpy(position.astype(np.int64))[inside]] = False
        group_at = new.cumsum(1) - 1                                         # each sorted position's group
        width = int(group_at[:, -1].max()) + 1
        positions = torch.arange(n).expand(k, -1)
        end = torch.full((k, width), -1, dtype=torch.int64).scatter_reduce_(1, group_at, positions, "amax")
        start = torch.full((k, width), n, dtype=torch.int64).scatter_reduce_(1, group_at, positions, "amin")
        used = end >= 0
        self._group_of = torch.empty(k, n, dtype=torch.int64).scatter_(1, order.cpu(), group_at).to(self.device)
        self._inverse_end = torch.where(used, 1.0 / (end + 1).double(), 0.0).to(self.device)
        self._inverse_rest = torch.where(used, 1.0 / (n - start).clamp(min=1).double(), 0.0).to(self.device)

    def _order_rows(self, directions: torch.Tensor) -> torch.Tensor:
        """Each fast direction's descending order (``K x N``)."""
        columns = self.column[directions].to(self.device)
        return self.order_t[:self.n].index_select(1, columns).T.to(torch.int64)

    def _group_bounds(self, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first and last position of each position's group of equal scores, per direction (``K x N``).

        Built once per distinct direction of the batch and gathered per row (the exact path's batches repeat a few
        directions over many label vectors), with the tie groups' positions scattered in one pass."""
        unique, inverse = torch.unique(directions.cpu(), return_inverse=True)
        start = torch.arange(self.n, device=self.device).expand(len(unique), -1).clone()
        end = start.clone()
        a, b = self._tie_pointer[unique], self._tie_pointer[unique + 1]
        lengths = b - a
        total = int(lengths.sum())
        if total:
            row = torch.repeat_interleave(torch.arange(len(unique)), lengths)
            offsets = torch.cumsum(lengths, 0) - lengths
            source = torch.arange(total) - torch.repeat_interleave(offsets - a, lengths)
            row, source = row.to(self.device), source.to(self.device)
            where = self._tie_position[source]
            start[row, where] = self._tie_first[source]
            end[row, where] = self._tie_last[source]
        inverse = inverse.to(self.device)
        return start[inverse], end[inverse]

    def exact(self, labels: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """The exact statistic (float64, ties grouped as sklearn does) of label row ``k`` of ``labels``
        (``K x N``) on direction ``directions[k]``."""
        out = torch.empty(len(directions), dtype=torch.float64, device=self.device)
        step = max(1, _EXACT_ENTRIES // max(self.n, 1))
        p = float(self.positives)
        for k0 in range(0, len(directions), step):
            chosen = directions[k0:k0 + step]
            o = labels[k0:k0 + step].to(torch.float64).gather(1, self._order_rows(chosen))
            count = o.cumsum(1)
            start, end = self._group_bounds(chosen)
            statistic = (o * count.gather(1, end) / (end + 1)).sum(1)
            if self.both:
                before = (count - o).gather(1, start)
                statistic = torch.maximum(statistic, (o * (p - before) / (self.n - start)).sum(1))
            out[k0:k0 + step] = statistic / p
        return out

    def _columns(self, flags: torch.Tensor) -> torch.Tensor:
        """Label rows (``b x N`` booleans) as the fast path's ``(N + 1) x b`` columns (a zero row for padding)."""
        labels = torch.zeros(self.n + 1, flags.shape[0], dtype=self.dtype, device=self.device)
        labels[:self.n] = flags.T
        return labels

    def _dense_exact(self, flags: torch.Tensor) -> torch.Tensor:
        """The exact statistic of every dense direction (rows) for every label row (columns).

        Read from the positives per group of equal scores (sklearn's thresholds): with ``c_g`` positives in group
        ``g`` and ``C_g`` in groups ``0..g``, ``P * AP = sum_g c_g C_g / (end_g + 1)`` and, for the negated scores,
        ``sum_g c_g (P - C_g + c_g) / (N - start_g)``. Counting the ``P`` positives of each label row into its
        groups costs ``P`` per direction instead of the ``N``-long sorted pass of :meth:`exact`, and a dense
        direction has few groups."""
        b, k = flags.shape[0], len(self.dense)
        if not k:
            return torch.empty(0, b, dtype=torch.float64, device=self.device)
        width, p = self._inverse_end.shape[1], float(self.positives)
        out = torch.empty(k, b, dtype=torch.float64, device=self.device)
        step = max(1, _EXACT_ENTRIES // (k * max(width, self.positives, 1)))
        offsets = torch.arange(k, device=self.device) * width
        for r0 in range(0, b, step):
            chosen = flags[r0:r0 + step]
            rows, samples = chosen.nonzero(as_tuple=True)
            index = self._group_of[:, samples].T + (rows * (k * width))[:, None] + offsets
            counts = torch.bincount(index.flatten(), minlength=len(chosen) * k * width).view(
                len(chosen), k, width).to(torch.float64)
            running = counts.cumsum(2)
            statistic = (counts * running * self._inverse_end).sum(2)
            if self.both:
                statistic = torch.maximum(statistic, (counts * (p - running + counts) * self._inverse_rest).sum(2))
            out[:, r0:r0 + len(chosen)] = (statistic / p).T
        return out

    def statistic(self, flags: torch.Tensor) -> float:
        """The exact statistic of one label vector (``N`` booleans): the largest AP over directions."""
        low, high = self.bounds(self._columns(flags[None]))
        dense = self._dense_exact(flags[None])
        best = max(float(low.max()) if low.numel() else -math.inf, float(dense.max()) if dense.numel() else -math.inf)
        candidates = self.fast[(high[:, 0] >= best).cpu()]
        exact = self.exact(flags[None].expand(len(candidates), -1), candidates)
        return max(([float(exact.max())] if exact.numel() else []) + ([float(dense.max())] if dense.numel() else []))

    def reach(self, flags: torch.Tensor, levels: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """For each level and label row of ``flags`` (``b x N`` booleans): does the statistic reach the level?
        Returns ``(len(levels) x b`` booleans, decided exactly; ``b`` upper bounds of the statistic)."""
        b = flags.shape[0]
        low, high = self.bounds(self._columns(flags))
        dense = self._dense_exact(flags)
        reached = torch.zeros(len(levels), b, dtype=torch.bool, device=self.device)
        open_pairs = torch.zeros_like(high, dtype=torch.bool)
        for k, level in enumerate(levels):
            sure = (low >= level).any(0)
            if dense.numel():
                sure |= (dense >= level).any(0)
            reached[k] = sure
            open_pairs |= (high >= level) & ~sure
        pairs = open_pairs.nonzero()
        if len(pairs):
            exact = self.exact(flags[pairs[:, 1]], self.fast[pairs[:, 0].cpu()])
            for k, level in enumerate(levels):
                hit = torch.zeros(b, dtype=torch.bool, device=self.device)
                hit[pairs[exact >= level, 1]] = True
                reached[k] |= hit
        ceiling = torch.cat([high, dense]).amax(0)
        return reached, ceiling
