"""Top-1 correctness with a dataset's class subset or class mapping applied (pure tensor math).

Three scoring rules cover every set of the paper; the datasets carry theirs as attributes of the same names
(see :func:`robustsig.accuracy` and :func:`robustsig.metrics.scoring.scoring_rule`):

- plain: the prediction is the argmax over all logits; labels are logit indices (ImageNet val, -V2, -Sketch);
- ``class_indices``: the argmax over those logit columns only (indices, or a boolean mask over the logits);
  labels are logit indices inside that subset (ImageNet-R and -A on their 200 classes);
- ``class_map``: ``K`` lists of logit indices; class ``k`` scores the max of its logits, the prediction is the
  argmax over the ``K`` classes and labels are class numbers ``0..K-1`` (ObjectNet's 113 classes, wise-ft's
  ``project_logits``). Ties go to the first maximum, as ``torch.argmax``/``numpy.argmax`` in the references.

:class:`TopOneRule` holds one rule and scores logits restricted to its :attr:`~TopOneRule.columns`, so that a
caller computing logits itself (the pruning curve) only ever computes the scored ones.

>>> import torch
>>> logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 1.0, 2.0]])
>>> top1_correct(logits, torch.tensor([2, 3]), class_indices=[2, 3]).tolist()
[False, True]
>>> top1_correct(logits, torch.tensor([1, 0]), class_map=[[0], [1, 3]]).tolist()
[True, True]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from robustsig.errors import InputError
from robustsig.metrics._checks import as_labels, as_matrix, to_tensor

ClassIndices = Sequence[int] | Tensor
ClassMap = Sequence[Sequence[int]]


def scoring_rule(dataset: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`top1_correct` (and of :class:`TopOneAccumulator`) for ``dataset`` (any object
    with the attributes a robustsig dataset has): its ``class_map`` when it has one (ObjectNet), else its
    ``class_indices`` (``None``: all logits)."""
    class_map = getattr(dataset, "class_map", None)
    if class_map is not None:
        return {"class_indices": None, "class_map": class_map}
    return {"class_indices": getattr(dataset, "class_indices", None), "class_map": None}


def row_argmax(scores: Tensor) -> Tensor:
    """The index of each row's maximum (the first one on ties; a NaN counts as the maximum), as ``torch.argmax``.

    Hand-written because torch's CPU ``argmax`` over rows is slow: on a 4096 x 1000 float32 block it takes ~8 ms,
    ``amax`` 0.35 ms and numpy's vectorised ``argmax`` 0.8 ms (same semantics: first maximum, NaN wins). Scoring a
    pruning curve takes one argmax per level, so CPU float32/float64 rows go through numpy; other devices and
    dtypes keep torch's.

    >>> row_argmax(torch.tensor([[1.0, 3.0, 3.0], [float("nan"), 5.0, 0.0]])).tolist()
    [1, 0]
    """
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64) and scores.dim() == 2:
        return torch.from_numpy(scores.detach().numpy().argmax(axis=1))
    return scores.argmax(dim=1)


def _check_range(ids: Tensor, num_logits: int, what: str) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_logits):
        raise InputError(f"{what} must be logit indices in 0..{num_logits - 1}, got {int(ids.min())}.."
                         f"{int(ids.max())}")


def subset_columns(class_indices: Any, num_logits: int) -> Tensor:
    """``class_indices`` (logit indices, or a boolean mask over the ``num_logits`` logits) as an index tensor,
    in the order given (ties in the argmax go to the first listed)."""
    index = to_tensor(class_indices, "class_indices").cpu()
    if index.dtype == torch.bool:
        if index.shape != (num_logits,):
            raise InputError(f"a boolean class mask must have one entry per logit ({num_logits}), "
                             f"got shape {tuple(index.shape)}")
        index = index.nonzero().flatten()
    if index.is_floating_point():
        raise InputError("class_indices must be integer logit indices or a boolean mask")
    index = index.long().flatten()
    if index.numel() == 0:
        raise InputError("class_indices is empty: at least one class must be scored")
    _check_range(index, num_logits, "class_indices")
    if index.unique().numel() != index.numel():
        raise InputError("class_indices lists a logit twice; list each scored logit once")
    return index


def class_map_index(class_map: ClassMap, num_logits: int, device: torch.device | str = "cpu") -> Tensor:
    """``class_map`` as a ``K x M`` LongTensor (``M``: the longest list), short rows padded with their own first
    index so that a max over a row equals the max over the class's logits."""
    if not class_map or any(len(ids) == 0 for ids in class_map):
        raise InputError("class_map must list at least one logit index for every class")
    width = max(len(ids) for ids in class_map)
    rows = [[int(i) for i in ids] + [int(ids[0])] * (width - len(ids)) for ids in class_map]
    index = torch.tensor(rows, dtype=torch.long, device=device)
    _check_range(index, num_logits, "class_map entries")
    return index


def project_logits(logits: Tensor, class_map: ClassMap | Tensor) -> Tensor:
    """``N x K`` class scores: class ``k`` gets the max of its logits (wise-ft's ObjectNet ``project_logits``).

    Args:
        logits: ``N x C``.
        class_map: ``K`` lists of logit indices, or their :func:`class_map_index`.
    """
    index = class_map if isinstance(class_map, Tensor) else class_map_index(class_map, logits.shape[1],
                                                                              logits.device)
    return logits[:, index.to(logits.device)].amax(dim=2)


class TopOneRule:
    """One scoring rule: the logit :attr:`columns` it reads, and when an argmax over them is right.

    Args:
        num_logits: number of logits of the classifier.
        class_indices: scored logit subset (labels are logit indices), see the module notes.
        class_map: per class, the logits it stands for (labels are class numbers).

    Example:
        >>> import torch
        >>> rule = TopOneRule(5, class_map=[[0, 1], [3]])   # class 0 -> logits {0, 1}, class 1 -> logit 3
        >>> rule.columns.tolist()
        [0, 1, 3]
        >>> logits = torch.tensor([[0.0, 2.0, 9.0, 1.0, 0.0]])   # logit 2 is not scored
        >>> rule.correct(logits[:, rule.columns], torch.tensor([0])).tolist()
        [True]
    """

    def __init__(self, num_logits: int, *, class_indices: Any = None, class_map: ClassMap | None = None) -> None:
        if class_indices is not None and class_map is not None:
            raise InputError("pass class_indices (a scored logit subset) or class_map (classes made of several "
                             "logits), not both")
        self.num_logits = int(num_logits)
        self._class_positions: Tensor | None = None
        self._label_to_position: Tensor | None = None
        if class_map is not None:
            index = class_map_index(class_map, self.num_logits)
            self.columns = index.unique()
            self._class_positions = torch.searchsorted(self.columns, index)  # K x M positions into columns
            self.num_labels = index.shape[0]
            return
        self.columns = (torch.arange(self.num_logits) if class_indices is None
                        else subset_columns(class_indices, self.num_logits))
        self._label_to_position = torch.full((self.num_logits,), -1, dtype=torch.long)
        self._label_to_position[self.columns] = torch.arange(len(self.columns))
        self.num_labels = self.num_logits

    def check_labels(self, labels: Tensor) -> None:
        """Raise an :class:`InputError` when a label cannot be scored under this rule."""
        if labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if self._class_positions is not None:
            if low < 0 or high >= self.num_labels:
                raise InputError(f"with a class_map of {self.num_labels} classes, labels must be class numbers "
                                 f"0..{self.num_labels - 1}; got {low}..{high}")
            return
        if low < 0 or high >= self.num_logits:
            raise InputError(f"labels must be logit indices 0..{self.num_logits - 1}; got {low}..{high} "
                             "(-1 marks an unlabelled image)")
        outside = self._label_to_position[labels.cpu()] < 0
        if bool(outside.any()):
            raise InputError(f"{int(outside.sum())} labels (e.g. {int(labels.cpu()[outside][0])}) are not among the "
                             f"{len(self.columns)} scored class_indices; labels must be logit indices (ImageNet-1k "
                             "indices for ImageNet-R/-A), not positions in the subset")

    def class_scores(self, scored_logits: Tensor) -> Tensor:
        """One score per class the rule predicts among (``N x K``): the scored logits themselves, or with a class
        map the max of each class's logits (``project_logits``). ``scored_logits`` holds the :attr:`columns` only.
        A softmax over these is the classifier's confidence under the rule (DoC, ATC)."""
        if self._class_positions is not None:
            return scored_logits[:, self._class_positions.to(scored_logits.device)].amax(dim=2)
        return scored_logits

    def targets(self, labels: Tensor) -> Tensor:
        """The position in :meth:`class_scores` each label's row must put first (for scoring many logits of the
        same rows, as the levels of a pruning curve, with :meth:`hits`)."""
        if self._class_positions is not None:
            return labels
        return self._label_to_position.to(labels.device)[labels]

    def hits(self, scored_logits: Tensor, targets: Tensor) -> Tensor:
        """Boolean vector: is the top-1 prediction the row's :meth:`targets` position?"""
        return row_argmax(self.class_scores(scored_logits)).to(targets.device) == targets

    def correct(self, scored_logits: Tensor, labels: Tensor) -> Tensor:
        """Boolean vector: is the top-1 prediction right? ``scored_logits`` holds the :attr:`columns` only."""
        return self.hits(scored_logits, self.targets(labels.to(scored_logits.device)))


def top1_correct(logits: Any, labels: Any, class_indices: Any = None, class_map: ClassMap | None = None) -> Tensor:
    """Which rows a classifier gets right at top-1 under the dataset's scoring rule (see the module notes).

    Args:
        logits: ``N x C`` scores (any float dtype, any device).
        labels: ``N`` integer labels: logit indices (plain and ``class_indices``) or class numbers (``class_map``).
        class_indices: the scored logit columns, as indices or a boolean mask of length ``C``.
        class_map: per class, the logit columns it stands for.

    Returns:
        A boolean vector of length ``N``; its mean is the accuracy.

    Raises:
        InputError: shapes disagree, both rules are given, or a label cannot be right under the rule (a label
            outside ``class_indices`` usually means labels in the subset's own ``0..199`` numbering).
    """
    logits = as_matrix(logits, "logits (samples x classes)", min_rows=0, finite=False)
    labels = as_labels(labels, "labels", length=logits.shape[0]).to(logits.device)
    rule = TopOneRule(logits.shape[1], class_indices=class_indices, class_map=class_map)
    rule.check_labels(labels)
    return rule.correct(logits[:, rule.columns.to(logits.device)], labels)


def _fraction(correct: int, total: int) -> float:
    if total == 0:
        warnings.warn("accuracy of zero samples is undefined; returning nan", RuntimeWarning, stacklevel=3)
        return float("nan")
    return correct / total


def top1_accuracy(logits: Any, labels: Any, class_indices: Any = None, class_map: ClassMap | None = None) -> float:
    """The fraction of rows right at top-1 under the scoring rule (a float in [0, 1]; see :func:`top1_correct`).

    >>> top1_accuracy(torch.eye(3), torch.tensor([0, 1, 0]))
    0.6666666666666666
    """
    correct = top1_correct(logits, labels, class_indices, class_map)
    return _fraction(int(correct.sum()), correct.numel())


class TopOneAccumulator:
    """Streaming twin of :func:`top1_accuracy`: ``update()`` per batch of logits, ``compute()`` at the end.

    >>> acc = TopOneAccumulator(class_map=[[0], [1, 2]])
    >>> acc.update(torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor([1]))
    >>> acc.update(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([1]))
    >>> acc.compute()
    0.5
    """

    def __init__(self, class_indices: Any = None, class_map: ClassMap | None = None) -> None:
        if class_indices is not None and class_map is not None:
            raise InputError("pass class_indices or class_map, not both")
        self.class_indices = class_indices
        self.class_map = class_map
        self.correct = 0
        self.total = 0

    def update(self, logits: Any, labels: Any) -> None:
        right = top1_correct(logits, labels, self.class_indices, self.class_map)
        self.correct += int(right.sum())
        self.total += right.numel()

    def compute(self) -> float:
        return _fraction(self.correct, self.total)
