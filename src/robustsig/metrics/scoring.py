"""Top-1 correctness with a dataset's class subset or class mapping applied (pure tensor math).

Three scoring rules cover every set of the paper (the datasets carry theirs, see :func:`robustsig.accuracy`):

- plain: the prediction is the argmax over all logits; labels are logit indices (ImageNet val, -V2, -Sketch);
- ``class_indices``: the argmax over those logit columns only; labels are logit indices inside that subset
  (ImageNet-R and -A on their 200 classes);
- ``class_map``: ``K`` lists of logit indices; class ``k`` scores the max of its logits, the prediction is the
  argmax over the ``K`` classes and labels are class numbers ``0..K-1`` (ObjectNet's 113 classes, wise-ft's
  ``project_logits``). Ties go to the first maximum, as ``torch.argmax``/``numpy.argmax`` in the references.

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

import torch
from torch import Tensor

from robustsig.errors import InputError

ClassIndices = Sequence[int] | Tensor
ClassMap = Sequence[Sequence[int]]


def _check_logits_labels(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.ndim != 2:
        raise InputError(f"logits must be N x C, got shape {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device)
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise InputError(f"labels must be a vector of {logits.shape[0]} class numbers (one per logits row), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InputError(f"labels must be integers, got {labels.dtype}")
    return labels.long()


def _subset_index(class_indices: ClassIndices, num_logits: int, device: torch.device) -> Tensor:
    index = torch.as_tensor(class_indices, device=device)
    if index.dtype == torch.bool:
        if index.shape != (num_logits,):
            raise InputError(f"a boolean class mask must have one entry per logit ({num_logits}), "
                             f"got shape {tuple(index.shape)}")
        index = index.nonzero().flatten()
    index = index.long().flatten()
    if index.numel() == 0:
        raise InputError("class_indices is empty: at least one class must be scored")
    if int(index.min()) < 0 or int(index.max()) >= num_logits:
        raise InputError(f"class_indices must be logit indices in 0..{num_logits - 1}, got {int(index.min())}.."
                         f"{int(index.max())}")
    return index


def class_map_index(class_map: ClassMap, num_logits: int, device: torch.device | str = "cpu") -> Tensor:
    """``class_map`` as a ``K x M`` LongTensor (``M``: the longest list), short rows padded with their own first
    index so that a max over a row equals the max over the class's logits."""
    if not class_map or any(len(ids) == 0 for ids in class_map):
        raise InputError("class_map must list at least one logit index for every class")
    width = max(len(ids) for ids in class_map)
    rows = [list(ids) + [ids[0]] * (width - len(ids)) for ids in class_map]
    index = torch.tensor(rows, dtype=torch.long, device=device)
    if int(index.min()) < 0 or int(index.max()) >= num_logits:
        raise InputError(f"class_map indices must be logit indices in 0..{num_logits - 1}")
    return index


def project_logits(logits: Tensor, class_map: ClassMap | Tensor) -> Tensor:
    """``N x K`` class scores: class ``k`` gets the max of its logits (wise-ft's ObjectNet ``project_logits``).

    Args:
        logits: ``N x C``.
        class_map: ``K`` lists of logit indices, or their :func:`class_map_index`.
    """
    index = class_map if isinstance(class_map, Tensor) else class_map_index(class_map, logits.shape[1],
                                                                              logits.device)
    return logits[:, index].amax(dim=2)


def top1_correct(logits: Tensor, labels: Tensor, class_indices: ClassIndices | None = None,
                 class_map: ClassMap | None = None) -> Tensor:
    """Which rows a classifier gets right at top-1 under the dataset's scoring rule (see the module notes).

    Args:
        logits: ``N x C`` scores (any float dtype, any device).
        labels: ``N`` integer labels: logit indices (plain and ``class_indices``) or class numbers (``class_map``).
        class_indices: the scored logit columns, as indices or a boolean mask of length ``C``.
        class_map: per class, the logit columns it stands for.

    Returns:
        A boolean vector of length ``N``.

    Raises:
        InputError: shapes disagree, both rules are given, or a label cannot be right under the rule (a label
            outside ``class_indices`` usually means labels in the subset's own ``0..199`` numbering).
    """
    labels = _check_logits_labels(logits, labels)
    if class_indices is not None and class_map is not None:
        raise InputError("pass class_indices or class_map, not both")
    if class_map is not None:
        scores = project_logits(logits, class_map)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
            raise InputError(f"with a class_map of {scores.shape[1]} classes, labels must be class numbers "
                             f"0..{scores.shape[1] - 1}; got {int(labels.min())}..{int(labels.max())}")
        return scores.argmax(dim=1) == labels
    if class_indices is None:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise InputError(f"labels must be logit indices 0..{logits.shape[1] - 1}; got "
                             f"{int(labels.min())}..{int(labels.max())} (-1 marks an unlabelled image)")
        return logits.argmax(dim=1) == labels
    index = _subset_index(class_indices, logits.shape[1], logits.device)
    outside = ~torch.isin(labels, index)
    if bool(outside.any()):
        raise InputError(f"{int(outside.sum())} labels (e.g. {int(labels[outside][0])}) are not among the "
                         f"{index.numel()} scored class_indices; labels must be logit indices (ImageNet-1k "
                         "indices for ImageNet-R/-A), not positions in the subset")
    return index[logits[:, index].argmax(dim=1)] == labels


def _fraction(correct: int, total: int) -> float:
    if total == 0:
        warnings.warn("accuracy of zero samples is undefined; returning nan", RuntimeWarning, stacklevel=3)
        return float("nan")
    return correct / total


def top1_accuracy(logits: Tensor, labels: Tensor, class_indices: ClassIndices | None = None,
                  class_map: ClassMap | None = None) -> float:
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

    def __init__(self, class_indices: ClassIndices | None = None, class_map: ClassMap | None = None) -> None:
        if class_indices is not None and class_map is not None:
            raise InputError("pass class_indices or class_map, not both")
        self.class_indices = class_indices
        self.class_map = class_map
        self.correct = 0
        self.total = 0

    def update(self, logits: Tensor, labels: Tensor) -> None:
        right = top1_correct(logits, labels, self.class_indices, self.class_map)
        self.correct += int(right.sum())
        self.total += right.numel()

    def compute(self) -> float:
        return _fraction(self.correct, self.total)
