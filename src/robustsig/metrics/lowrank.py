"""Low-rank budgets for the linear maps of a whole encoder: which singular directions of each map to keep.

Every linear map ``W`` (``out x in``: a Linear, a 1x1 convolution, an attention projection) is decomposed as in
eq. 3 (:func:`~robustsig.metrics.directions.head_svd`) and its directions are scored by eq. 4
(:class:`~robustsig.metrics.directions.ImportanceAccumulator`) on *that map's own inputs*. Keeping the directions
``K`` replaces ``W`` by ``W_K = U_K diag(s_K) V_K^T``, stored as two maps ``V_K^T`` (``k x in``) then
``U_K diag(s_K)`` (``out x k``) when that is smaller than ``out x in``, else as the dense ``W_K``.

Two budgets, both given as the fraction ``f`` of something *removed* (``f = 0``: the original model):

- ``"rank"``: every map prunes ``floor(f * rank)`` of its directions (the head pruning's rule,
  :func:`~robustsig.metrics.pruning.pruned_counts`), in the order asked;
- ``"parameters"``: directions of all maps are pruned in one global order (their score relative to their own
  map's total, so maps of different scale compare) until the maps hold at most ``(1 - f)`` of their parameters.

Orders are those of the head pruning (:func:`~robustsig.metrics.pruning.pruning_order`): ``"importance"``
(least important first), ``"singular"`` (smallest singular value first), ``"random"`` (seeded per map).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from robustsig.errors import InputError
from robustsig.metrics.directions import HeadSVD
from robustsig.metrics.pruning import ORDERS, pruned_counts, pruning_order

#: Budgets: a fraction of each map's rank, or a global fraction of the maps' parameters.
BUDGETS: tuple[str, ...] = ("rank", "parameters")


@dataclass(frozen=True)
class MapShape:
    """The shape of one linear map: ``out x in``, with or without a bias."""

    out_features: int
    in_features: int
    bias: bool

    @property
    def rank(self) -> int:
        """Number of singular directions, ``min(out, in)``."""
        return min(self.out_features, self.in_features)

    def factorised(self, kept: int) -> bool:
        """Whether ``kept`` directions are stored smaller as two maps than as one dense map."""
        return kept * (self.in_features + self.out_features) < self.in_features * self.out_features

    def parameters(self, kept: int | None = None) -> int:
        """Parameters of the map with ``kept`` directions (``None``: the original): the smaller of the two forms.

        >>> MapShape(8, 4, True).parameters(), MapShape(8, 4, True).parameters(1)
        (40, 20)
        """
        bias = self.out_features if self.bias else 0
        dense = self.in_features * self.out_features
        if kept is None or kept >= self.rank or not self.factorised(kept):
            return dense + bias
        return kept * (self.in_features + self.out_features) + bias


def map_seed(seed: int, path: str) -> int:
    """The random order's seed of the map at ``path``: distinct per map, reproducible."""
    return zlib.crc32(f"{int(seed)}:{path}".encode())


def kept_directions(svds: Mapping[str, HeadSVD], shapes: Mapping[str, MapShape], fraction: float,
                    order: str = "importance", budget: str = "rank", *,
                    importance: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The directions each map keeps at one budget.

    Args:
        svds: map name -> its decomposition (:func:`~robustsig.metrics.directions.head_svd` of ``W``).
        shapes: map name -> its shape (for the parameter budget).
        fraction: fraction removed, in ``[0, 1]`` (of each rank, or of the maps' parameters).
        order: ``"importance"``, ``"singular"`` or ``"random"``.
        budget: ``"rank"`` or ``"parameters"``.
        importance: map name -> importance of its directions (eq. 4), required for ``order="importance"``.
        seed: seed of the random order.

    Returns:
        map name -> indices of the kept directions (in the order of ``head_svd``, ascending), int64.

    Example:
        >>> import torch
        >>> from robustsig.metrics.directions import head_svd
        >>> svd = head_svd(torch.randn(6, 4, dtype=torch.float64))
        >>> kept_directions({"fc": svd}, {"fc": MapShape(6, 4, False)}, 0.5, "singular")["fc"].tolist()
        [0, 1]
    """
    pruned_counts([fraction], 1)  # validates the fraction
    if order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if budget not in BUDGETS:
        raise InputError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    missing = [name for name in svds if name not in shapes]
    if missing:
        raise InputError(f"no shape given for map(s) {missing}")
    importance = importance or {}
    if order == "importance":
        absent = [name for name in svds if name not in importance]
        if absent:
            raise InputError(f"order='importance' needs the importance of every map; missing for {absent[:3]}")
    orders = {name: pruning_order(svd, order, importance.get(name), map_seed(seed, name))
              for name, svd in svds.items()}
    if budget == "rank":
        pruned = {name: int(pruned_counts([fraction], svd.rank)[0]) for name, svd in svds.items()}
    else:
        pruned = _parameter_budget(svds, shapes, fraction, order, importance, orders)
    return {name: orders[name][pruned[name]:].sort().values for name in svds}


def _parameter_budget(svds: Mapping[str, HeadSVD], shapes: Mapping[str, MapShape], fraction: float, order: str,
                      importance: Mapping[str, torch.Tensor], orders: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Directions pruned per map so that the maps hold at most ``(1 - fraction)`` of their parameters: all maps'
    directions in one global order (score relative to the map's total; random: seeded), pruned greedily."""
    names = list(svds)
    total = sum(shapes[name].parameters() for name in names)
    target = (1.0 - fraction) * total
    entries: list[tuple[float, int, int]] = []  # (score, map, position in the map's pruning order)
    generator = np.random.default_rng(map_seed(0, "|".join(names)))
    for m, name in enumerate(names):
        svd = svds[name]
        if order == "importance":
            values = importance[name].double().cpu()
        elif order == "singular":
            values = svd.s.double().cpu()
        else:
            values = torch.from_numpy(generator.random(svd.rank))
        relative = (values / values.sum().clamp_min(1e-300))[orders[name]].tolist()
        # scores along the map's own pruning order must not decrease, so the global greedy keeps each map's order
        running = 0.0
        for position, score in enumerate(relative):
            running = max(running, score)
            entries.append((running, m, position))
    entries.sort()
    pruned = dict.fromkeys(names, 0)
    current = float(total)
    for _, m, _position in entries:
        if current <= target + 1e-9:
            break
        name = names[m]
        shape = shapes[name]
        before = shape.parameters(shape.rank - pruned[name])
        pruned[name] += 1
        current += shape.parameters(shape.rank - pruned[name]) - before
    return pruned


def low_rank_factors(svd: HeadSVD, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two maps of a rank-``k`` replacement: ``first = V_K^T`` (``k x in``), ``second = U_K diag(s_K)``
    (``out x k``), so ``second @ first = W_K``; float64.

    >>> import torch
    >>> from robustsig.metrics.directions import head_svd
    >>> W = torch.randn(5, 3, dtype=torch.float64)
    >>> first, second = low_rank_factors(head_svd(W), torch.arange(3))
    >>> torch.allclose(second @ first, W)
    True
    """
    kept = kept.to(svd.s.device)
    return svd.V[:, kept].T.contiguous(), (svd.U[:, kept] * svd.s[kept]).contiguous()
