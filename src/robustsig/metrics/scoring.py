"""Top-1 correctness with a dataset's class subset or class mapping applied (the rule behind ``rs.accuracy``).

Three ways a dataset is scored from a classifier's logits:

- all logits: the prediction is the argmax over every logit; labels are logit indices (ImageNet, ImageNet-V2,
  ImageNet-Sketch).
- ``class_mask``: the argmax runs over a subset of the logits only (a boolean mask over the logits or a list
  of logit indices); labels are logit indices (ImageNet-R/A images labelled with their ImageNet class id).
- ``class_indices``: the dataset's own convention (:attr:`robustsig.data.base.ImageDataset.class_indices`):
  label ``y`` means logit ``class_indices[y]`` (a list of ints: ImageNet-R/A with 200 labels), or any logit
  of ``class_indices[y]`` (a list of lists: ObjectNet's 113 classes mapped to 125 ImageNet ids). The argmax
  runs over every listed logit, and the prediction is right when it falls in the true class's ids.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import as_labels, as_matrix, to_tensor


class TopOneRule:
    """The logits a dataset is scored on (:attr:`columns`) and when an argmax over them is right.

    Args:
        num_classes: number of logits of the classifier.
        class_mask: boolean mask over the logits, or logit indices; labels are logit indices.
        class_indices: per dataset label, its logit index (ints) or its set of logit indices (lists).

    Example:
        >>> import torch
        >>> rule = TopOneRule(5, class_indices=[[0, 1], [3]])   # label 0 -> logits {0, 1}, label 1 -> logit 3
        >>> rule.columns.tolist()
        [0, 1, 3]
        >>> logits = torch.tensor([[0.0, 2.0, 9.0, 1.0, 0.0]])   # logit 2 is not scored
        >>> rule.correct(logits[:, rule.columns], torch.tensor([0])).tolist()
        [True]
    """

    def __init__(self, num_classes: int, *, class_mask: Any = None,
                 class_indices: Sequence[int] | Sequence[Sequence[int]] | None = None) -> None:
        if class_mask is not None and class_indices is not None:
            raise InputError("give class_mask (labels are logit indices) or class_indices (labels index the "
                             "dataset's classes), not both")
        self.num_classes = int(num_classes)
        self._member: torch.Tensor | None = None
        if class_indices is not None:
            self._init_class_indices(class_indices)
        elif class_mask is not None:
            self.columns = self._mask_columns(class_mask)
            self._label_to_position = torch.full((self.num_classes,), -1, dtype=torch.int64)
            self._label_to_position[self.columns] = torch.arange(len(self.columns))
        else:
            self.columns = torch.arange(self.num_classes)
            self._label_to_position = torch.arange(self.num_classes)

    def _check_ids(self, ids: torch.Tensor, what: str) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_classes):
            raise InputError(f"{what} must be logit indices in [0, {self.num_classes}), got values from "
                             f"{int(ids.min())} to {int(ids.max())}")

    def _mask_columns(self, class_mask: Any) -> torch.Tensor:
        mask = to_tensor(class_mask, "class_mask").cpu()
        if mask.dtype == torch.bool:
            if mask.shape != (self.num_classes,):
                raise InputError(f"a boolean class_mask must have one entry per logit ({self.num_classes}), "
                                 f"got shape {tuple(mask.shape)}")
            columns = mask.nonzero().flatten()
        else:
            columns = as_labels(mask.flatten(), "class_mask (logit indices)", length=mask.numel()).unique()
            self._check_ids(columns, "class_mask entries")
        if columns.numel() == 0:
            raise InputError("class_mask selects no class")
        return columns

    def _init_class_indices(self, class_indices: Sequence[int] | Sequence[Sequence[int]]) -> None:
        if len(class_indices) == 0:
            raise InputError("class_indices is empty: it needs one entry per dataset class")
        if all(isinstance(entry, numbers.Integral) or getattr(entry, "ndim", None) == 0 for entry in class_indices):
            ids = torch.as_tensor([int(i) for i in class_indices], dtype=torch.int64)
            self._check_ids(ids, "class_indices entries")
            if ids.unique().numel() != ids.numel():
                raise InputError("class_indices lists a logit twice; map each dataset class to its own logit")
            self.columns = ids
            self._label_to_position = torch.arange(len(ids))
            return
        sets = [torch.as_tensor([int(i) for i in entry], dtype=torch.int64) for entry in class_indices]
        for label, ids in enumerate(sets):
            if ids.numel() == 0:
                raise InputError(f"class_indices[{label}] is empty: every dataset class needs at least one logit")
            self._check_ids(ids, f"class_indices[{label}]")
        self.columns = torch.cat(sets).unique()
        self._member = torch.zeros(len(self.columns), len(sets), dtype=torch.bool)
        for label, ids in enumerate(sets):
            self._member[torch.searchsorted(self.columns, ids), label] = True
        self._label_to_position = None

    @property
    def num_labels(self) -> int:
        """Number of distinct label values the rule accepts (``0 .. num_labels - 1``)."""
        return self._member.shape[1] if self._member is not None else len(self._label_to_position)

    def check_labels(self, labels: torch.Tensor) -> None:
        """Raise an :class:`InputError` when a label cannot be scored under this rule."""
        if labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_labels:
            raise InputError(f"labels must be in [0, {self.num_labels}) for this scoring rule, got values from "
                             f"{low} to {high} (unknown labels such as -1 cannot be scored)")
        if self._label_to_position is not None:
            outside = self._label_to_position[labels.cpu()] < 0
            if bool(outside.any()):
                raise InputError(f"label {int(labels.cpu()[outside][0])} is not among the classes of class_mask: "
                                 "such a sample can never be scored right")

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: is the argmax of ``logits`` (the :attr:`columns` only, ``N x len(columns)``) right?"""
        position = logits.argmax(dim=1)
        if self._member is not None:
            member = self._member.to(logits.device)
            return member[position, labels.to(logits.device)]
        target = self._label_to_position.to(logits.device)[labels.to(logits.device)]
        return position == target


def top1_correct(logits: Any, labels: Any, *, class_mask: Any = None,
                 class_indices: Sequence[int] | Sequence[Sequence[int]] | None = None) -> torch.Tensor:
    """Whether each top-1 prediction is right, with a class subset or mapping applied (see :class:`TopOneRule`).

    Args:
        logits: ``N x C`` logits over all of the classifier's classes.
        labels: ``N`` integer labels.
        class_mask: restrict the argmax to these logits (labels are logit indices).
        class_indices: the dataset's label -> logit index, or label -> set of logit indices.

    Returns:
        Boolean tensor of length ``N``; its mean is the accuracy.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 2.0]])
        >>> top1_correct(logits, [1, 2]).tolist()
        [True, False]
        >>> top1_correct(logits, [1, 2], class_mask=[1, 2]).tolist()
        [True, True]
    """
    logits = as_matrix(logits, "logits (samples x classes)")
    labels = as_labels(labels, "labels", length=logits.shape[0])
    rule = TopOneRule(logits.shape[1], class_mask=class_mask, class_indices=class_indices)
    rule.check_labels(labels)
    return rule.correct(logits[:, rule.columns.to(logits.device)], labels)
