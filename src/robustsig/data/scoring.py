"""``rs.accuracy(logits, dataset)``: top-1 accuracy with the dataset's own scoring rule applied, so that the
accuracies behind effective robustness come out right for all six ImageNet-family sets with no user code.

The math is :func:`robustsig.metrics.scoring.top1_correct`; this module only reads the rule off the dataset.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from robustsig.errors import InputError
from robustsig.metrics.scoring import scoring_rule, top1_accuracy


def _same_class(name: str, index: int) -> bool:
    """Whether a class called ``name`` is ImageNet-1k class ``index`` (its wnid or its name, any case, ``_`` for
    spaces), or is simply numbered ``index`` (csv files with integer labels)."""
    from robustsig.data.classes import imagenet_classnames, imagenet_wnids

    spoken = name.strip().lower().replace("_", " ")
    return (name.strip() == str(index) or name.strip() == imagenet_wnids()[index]
            or spoken == imagenet_classnames()[index].lower())


def check_head_fit(dataset: Any, num_logits: int) -> None:
    """Warn when ``dataset``'s own classes are about to be scored as ImageNet-1k logits they are not.

    A dataset with neither a class map nor class indices is scored label ``k`` = logit ``k``. On a 1000-class head
    that is right only when class ``k`` is ImageNet class ``k`` (folders named by the head's wnids, in order);
    a folder of ``cat/``, ``dog/`` would score about 0% without a word. The warning names the first class that
    does not match and the fix: a class map (``-O class_map=map.json``, see :mod:`robustsig.data.classmap`).
    """
    from robustsig.data.classes import imagenet_wnids

    classnames = list(getattr(dataset, "classnames", None) or [])
    if (num_logits != len(imagenet_wnids()) or not classnames or len(classnames) == num_logits
            or getattr(dataset, "class_map", None) is not None or getattr(dataset, "class_indices", None) is not None):
        return
    wrong = next((k for k, name in enumerate(classnames) if k >= num_logits or not _same_class(name, k)), None)
    if wrong is None:
        return
    kind = getattr(dataset, "kind", "dataset")
    where = f" {dataset.root}" if getattr(dataset, "root", None) else ""
    warnings.warn(f"the {kind} dataset{where} is scored on a {num_logits}-class (ImageNet-1k) head as label k = "
                  f"logit k, but its class {classnames[wrong]!r} (label {wrong}) is not ImageNet class {wrong}, so "
                  "its accuracy means nothing (about 0%). Map its classes to ImageNet-1k indices with a class map: "
                  "-O class_map=map.json on the command line, options: {class_map: map.json} in a study, "
                  "class_map= in open_dataset (a JSON object {\"class name\": [ImageNet-1k indices]}; see "
                  "robustsig.data.classmap)", UserWarning, stacklevel=3)


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
    check_head_fit(dataset, logits.shape[1])
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
