"""What a training run minimises and how it counts a training image right: plain cross-entropy over the head's
outputs, or, for a dataset with a ``class_map`` (your own classes, each a set of a head's ImageNet-1k outputs, as
ObjectNet is scored), the likelihood of the class's set.

Set likelihood: class ``y`` stands for the logit ids ``S_y``, and the model's probability of the class is the
softmax mass on its set, so the loss is

    ``-log sum_{j in S_y} softmax(z)_j = -(logsumexp(z[S_y]) - logsumexp(z))``

over the *full* head (every logit is kept and trained; mass on ids outside ``S_y`` is what the loss pushes down).
When every set is one id it is plain cross-entropy. A training image is counted right with the rule it is scored
with (:class:`robustsig.metrics.scoring.TopOneRule`: class ``k`` scores the max of its logits, the argmax over the
classes must be ``y``).

Label smoothing over a class map is smoothing over the map's ``K`` classes: the target puts ``1 - eps`` on the
image's class and ``eps / K`` on every class (its own included), so the loss is
``(1 - eps) * (-log P(S_y)) + eps * mean_k (-log P(S_k))``. When the sets are single ids that cover the head, it is
exactly ``torch.nn.CrossEntropyLoss(label_smoothing=eps)``; otherwise the ``eps`` mass goes to the dataset's classes,
never to a head output no class stands for.

>>> import torch
>>> logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
>>> loss = set_cross_entropy(logits, torch.tensor([0]), [[0, 1], [2]])
>>> round(float(loss), 4) == round(float(-(logits[0, :2].logsumexp(0) - logits[0].logsumexp(0))), 4)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from robustsig.errors import InputError
from robustsig.metrics.scoring import ClassMap, TopOneRule, class_map_index


class ClassSets:
    """A class map as padded index tensors: ``index`` (``K x M`` logit ids, short rows padded) and ``valid``
    (``K x M``, False on the padding), for gathering each class's logits in one op.

    Args:
        class_map: ``K`` non-empty lists of logit ids.
        num_logits: the head's number of outputs (every id must be below it).

    Raises:
        InputError: an empty class, or an id outside ``0..num_logits - 1``.
    """

    def __init__(self, class_map: ClassMap, num_logits: int) -> None:
        self.index = class_map_index(class_map, num_logits)
        lengths = torch.tensor([len(ids) for ids in class_map])
        self.valid = torch.arange(self.index.shape[1]) < lengths[:, None]
        self.num_classes = self.index.shape[0]
        self.num_logits = int(num_logits)

    def to(self, device: torch.device | str) -> ClassSets:
        """This map with its tensors on ``device`` (in place; returns self)."""
        self.index, self.valid = self.index.to(device), self.valid.to(device)
        return self

    def log_mass(self, logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """``log sum_{j in S_k} exp(z_j)`` per row: for the row's own class (``labels`` given: shape ``N``), or for
        every class (``N x K``)."""
        if labels is None:
            picked = logits[:, self.index]  # N x K x M
            return picked.masked_fill(~self.valid, float("-inf")).logsumexp(dim=-1)
        picked = logits.gather(1, self.index[labels])  # N x M
        return picked.masked_fill(~self.valid[labels], float("-inf")).logsumexp(dim=-1)


def set_cross_entropy(logits: Tensor, labels: Tensor, class_map: ClassMap | ClassSets,
                      label_smoothing: float = 0.0) -> Tensor:
    """Mean negative log-likelihood of each image's class set (see the module notes).

    Args:
        logits: ``N x C`` scores over the head's outputs (computed in float32 at least).
        labels: ``N`` class numbers ``0..K-1`` (positions in ``class_map``).
        class_map: ``K`` lists of logit ids (or their :class:`ClassSets`).
        label_smoothing: ``eps`` in ``[0, 1)``, spread over the ``K`` classes.

    Returns:
        A scalar tensor (differentiable in ``logits``).

    Raises:
        InputError: shapes disagree, a label outside ``0..K-1``, a logit id outside the head, ``eps`` out of range.

    Example:
        >>> logits = torch.randn(5, 4)
        >>> labels = torch.tensor([0, 3, 1, 2, 0])
        >>> torch.allclose(set_cross_entropy(logits, labels, [[0], [1], [2], [3]]), F.cross_entropy(logits, labels))
        True
    """
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise InputError(f"expected N x C logits and N labels; got shapes {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
    sets = class_map if isinstance(class_map, ClassSets) else ClassSets(class_map, logits.shape[1])
    if sets.num_logits != logits.shape[1]:
        raise InputError(f"the class map was built for {sets.num_logits} logits; these logits have "
                         f"{logits.shape[1]}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= sets.num_classes):
        raise InputError(f"with a class map of {sets.num_classes} classes, labels must be class numbers "
                         f"0..{sets.num_classes - 1}; got {int(labels.min())}..{int(labels.max())}")
    sets.to(logits.device)
    labels = labels.to(logits.device)
    total = logits.logsumexp(dim=1)
    loss = total - sets.log_mass(logits, labels)
    if label_smoothing:
        uniform = total - sets.log_mass(logits).mean(dim=1)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform
    return loss.mean()


class TrainingObjective:
    """The loss and the training-accuracy rule of a run: plain cross-entropy and argmax over the head, or the set
    likelihood and the class map's scoring rule.

    Args:
        num_logits: the head's number of outputs.
        class_map: the training set's class map (``None``: labels are logit indices).
        label_smoothing: the recipe's label smoothing (over the head's outputs, or over the map's classes).

    Example:
        >>> objective = TrainingObjective(4, class_map=[[0, 1], [2]])
        >>> logits = torch.tensor([[0.0, 3.0, 1.0, 9.0]])      # logit 3 is no class's: not a prediction
        >>> int(objective.correct(logits, torch.tensor([0])))
        1
    """

    def __init__(self, num_logits: int, class_map: ClassMap | None = None, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)
        self.sets = None if class_map is None else ClassSets(class_map, num_logits)
        self.rule = TopOneRule(num_logits, class_map=class_map)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The mean loss of a batch (float32 logits)."""
        if self.sets is None:
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return set_cross_entropy(logits, labels, self.sets, self.label_smoothing)

    def correct(self, logits: Tensor, labels: Tensor) -> Tensor:
        """How many rows are right at top-1 under the scoring rule (a 0-dim tensor)."""
        columns = self.rule.columns.to(logits.device)
        return self.rule.correct(logits[:, columns], labels).sum()


def training_objective(dataset: Any, num_logits: int, label_smoothing: float = 0.0) -> TrainingObjective:
    """The :class:`TrainingObjective` for ``dataset`` (its ``class_map`` when it has one) on a head of
    ``num_logits`` outputs."""
    class_map: Sequence[Sequence[int]] | None = getattr(dataset, "class_map", None)
    return TrainingObjective(num_logits, class_map=class_map, label_smoothing=label_smoothing)
