"""``rs.accuracy(logits, dataset)``: top-1 accuracy with the dataset's own scoring rule applied, so that the
accuracies behind effective robustness come out right for all six ImageNet-family sets with no user code.

The math is :func:`robustsig.metrics.scoring.top1_correct`; this module only reads the rule off the dataset.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robustsig.errors import InputError
from robustsig.metrics.scoring import top1_accuracy


def scoring_rule(dataset: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`~robustsig.metrics.scoring.top1_correct` (and of
    :class:`~robustsig.metrics.scoring.TopOneAccumulator`) for ``dataset``: its ``class_map`` when it has one
    (ObjectNet), else its ``class_indices`` (``None``: all logits)."""
    class_map = getattr(dataset, "class_map", None)
    if class_map is not None:
        return {"class_indices": None, "class_map": class_map}
    return {"class_indices": getattr(dataset, "class_indices", None), "class_map": None}


def pruning_scoring(dataset: Any) -> dict[str, Any]:
    """:func:`scoring_rule` under the keyword names of :func:`robustsig.pruning_curve` (``class_mask``,
    ``class_map``), so a pruning curve is scored exactly as :func:`accuracy` scores the dataset."""
    rule = scoring_rule(dataset)
    return {"class_mask": rule["class_indices"], "class_map": rule["class_map"]}


def _dataset_labels(dataset: Any, rows: int) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise InputError(f"the {getattr(dataset, 'kind', 'given')} dataset does not list its labels up front "
                         "(streamed shards): pass labels= (e.g. the labels stored with the logits)")
    if len(targets) != rows:
        raise InputError(f"{rows} rows of logits for a dataset of {len(targets)} images: pass labels= (the labels "
                         "stored with the logits) when some images were skipped or a subset was scored")
    return torch.as_tensor(targets)


def accuracy(logits: Tensor, dataset: Any, labels: Tensor | None = None) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``logits`` on ``dataset`` with its class subset or mapping applied.

    Args:
        logits: ``N x 1000`` ImageNet logits, or ``N x K`` logits over the dataset's own ``K`` classes (a head
            built from ``dataset.classnames`` for ImageNet-R/-A's 200 or ObjectNet's 113 classes).
        dataset: any robustsig dataset (``open_dataset``); ImageNet-R/-A are scored on their 200 classes and
            ObjectNet through its class map, as in the paper.
        labels: one label per row, in the dataset's convention; defaults to ``dataset.targets`` (which must then
            have ``N`` entries).

    >>> import torch
    >>> from robustsig.data.base import ImageDataset
    >>> ds = ImageDataset([("a.png", 3), ("b.png", 1)], class_indices=[1, 3])
    >>> accuracy(torch.tensor([[9.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 1.0]]), ds)   # class 0 is not scored
    1.0
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise InputError("logits must be an N x C tensor")
    labels = _dataset_labels(dataset, logits.shape[0]) if labels is None else torch.as_tensor(labels)
    rule = scoring_rule(dataset)
    width = logits.shape[1]
    if rule["class_map"] is not None and width == len(rule["class_map"]):
        return top1_accuracy(logits, labels)  # logits already over the K classes
    indices = rule["class_indices"]
    if indices is not None and width == len(indices) and width <= max(indices):
        position = {index: k for k, index in enumerate(indices)}  # logits over the subset, in class_indices order
        known = [int(label) for label in labels.tolist() if int(label) in position]
        if len(known) != labels.numel():
            raise InputError(f"labels must be among the dataset's {width} class_indices")
        return top1_accuracy(logits, torch.tensor([position[label] for label in known]))
    return top1_accuracy(logits, labels, **rule)
