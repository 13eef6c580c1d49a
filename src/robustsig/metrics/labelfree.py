"""Label-free prediction of shift accuracy from unlabelled shift images: DoC and ATC, the baselines a robustness
signature has to beat.

- **DoC** (difference of confidences, Guillory et al. 2021): ``ACC(I) - (mean confidence on I - mean confidence on
  the shift set)``, the confidence being the max softmax probability.
- **ATC** (average thresholded confidence, Garg et al. 2022): the threshold ``t`` at which the share of
  in-distribution images scoring above ``t`` equals ``ACC(I)``; the predicted shift accuracy is the share of shift
  images scoring above ``t``. The score is the max softmax probability (``"maxprob"``) or the negative entropy of
  the softmax (``"entropy"``). Among the in-distribution scores (and minus infinity), ``t`` is the one whose share
  above it is closest to ``ACC(I)`` (the lowest such score on a tie): with distinct scores and ``k`` of ``N``
  images right, ``t`` is the ``(N - k)``-th smallest score, and exactly ``k`` images lie above it.

Each set is scored with its own rule (:mod:`robustsig.metrics.scoring`): the softmax runs over the classes the
rule predicts among: every logit, ImageNet-R/-A's 200 ``class_indices``, or ObjectNet's classes through its class
map (each class's score is the max of its logits). A rule is a mapping ``{"class_indices": ..., "class_map": ...}``
(what :func:`robustsig.metrics.scoring.scoring_rule` returns) or a robustsig dataset, whose rule is read off it.

Confidences are per image, so computing them batch by batch (:func:`confidence_scores`) and feeding the
concatenated scores to :func:`doc_from_scores` / :func:`atc_from_scores` gives exactly the answer of the one-shot
functions on a store streamed in batches.

>>> import torch
>>> id_logits = torch.tensor([[4.0, 0.0], [3.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
>>> round(doc_accuracy(id_logits, torch.tensor([0, 0, 0, 0]), torch.tensor([[1.0, 0.0], [0.0, 0.5]])), 4)
0.5401
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from robustsig.errors import InputError
from robustsig.metrics._checks import as_labels, as_matrix, as_vector
from robustsig.metrics.scoring import TopOneRule, scoring_rule, top1_correct

Score = Literal["maxprob", "entropy"]
SCORES: tuple[str, ...] = ("maxprob", "entropy")


def _rule(rule: Any, name: str) -> dict[str, Any]:
    if rule is None:
        return {"class_indices": None, "class_map": None}
    if isinstance(rule, Mapping):
        unknown = sorted(set(rule) - {"class_indices", "class_map"})
        if unknown:
            raise InputError(f"{name}: expected a mapping with class_indices and/or class_map (a dataset's scoring "
                             f"rule); got keys {unknown}")
        return {"class_indices": rule.get("class_indices"), "class_map": rule.get("class_map")}
    return scoring_rule(rule)


def confidence_scores(logits: Any, *, score: Score = "maxprob", rule: Any = None) -> Tensor:
    """Per-image confidence under a dataset's scoring rule: the max softmax probability or the negative entropy
    of the softmax over the classes the rule predicts among (float64, length N).

    Args:
        logits: ``N x C`` logits.
        score: ``"maxprob"`` or ``"entropy"`` (negative entropy: higher is more confident).
        rule: the set's scoring rule (see the module notes); None: every logit is a class.

    >>> confidence_scores(torch.tensor([[0.0, 0.0, 5.0]]), rule={"class_indices": [0, 1]}).tolist()
    [0.5]
    """
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    return confidence_score_table(logits, rule=rule, scores=(score,))[score]


def confidence_score_table(logits: Any, *, rule: Any = None, scores: Sequence[str] = SCORES) -> dict[str, Tensor]:
    """:func:`confidence_scores` of several scores from one softmax: score name -> float64 vector (length N).

    >>> table = confidence_score_table(torch.tensor([[0.0, 0.0]]))
    >>> table["maxprob"].tolist(), round(float(table["entropy"][0]), 4)
    ([0.5], -0.6931)
    """
    unknown = [score for score in scores if score not in SCORES]
    if unknown:
        raise InputError(f"scores must be among {', '.join(SCORES)}; got {unknown[0]!r}")
    logits = as_matrix(logits, "logits (samples x classes)", min_rows=0)
    chosen = TopOneRule(logits.shape[1], **_rule(rule, "rule"))
    classes = chosen.class_scores(logits[:, chosen.columns.to(logits.device)]).to(torch.float64)
    log_p = torch.log_softmax(classes, dim=1)
    table = {}
    if "maxprob" in scores:
        table["maxprob"] = log_p.amax(dim=1).exp().cpu()
    if "entropy" in scores:
        table["entropy"] = (log_p.exp() * log_p).sum(dim=1).cpu()
    return table


def doc_from_scores(acc_id: float, id_scores: Any, shift_scores: Any) -> float:
    """DoC from confidences: ``acc_id - (mean(id_scores) - mean(shift_scores))``, clipped to [0, 1]."""
    id_scores = as_vector(id_scores, "id_scores")
    shift_scores = as_vector(shift_scores, "shift_scores")
    if not id_scores.numel() or not shift_scores.numel():
        raise InputError("DoC needs at least one in-distribution and one shift image")
    return float(min(1.0, max(0.0, acc_id - (float(id_scores.mean()) - float(shift_scores.mean())))))


def atc_threshold(id_scores: Any, acc_id: float) -> float:
    """ATC's threshold: the in-distribution score (or minus infinity) whose share of scores strictly above it is
    closest to ``acc_id`` (the lowest such score on a tie)."""
    scores = as_vector(id_scores, "id_scores")
    if not scores.numel():
        raise InputError("ATC needs at least one in-distribution image")
    if not 0.0 <= acc_id <= 1.0:
        raise InputError(f"acc_id must be an accuracy in [0, 1]; got {acc_id}")
    candidates = torch.cat([torch.tensor([-torch.inf], dtype=torch.float64), scores.unique()])   # ascending
    above = scores.numel() - torch.searchsorted(scores.sort().values, candidates, right=True)
    gap = (above.to(torch.float64) / scores.numel() - acc_id).abs()
    return float(candidates[int(torch.argmin(gap))])   # argmin returns the first (lowest) of equal gaps


def atc_from_scores(id_scores: Any, id_correct: Any, shift_scores: Any) -> float:
    """ATC from confidences: the share of ``shift_scores`` above :func:`atc_threshold` of the in-distribution
    scores at their accuracy (``id_correct``: which in-distribution images the model gets right)."""
    id_scores = as_vector(id_scores, "id_scores")
    correct = as_vector(id_correct, "id_correct", length=id_scores.numel())
    shift_scores = as_vector(shift_scores, "shift_scores")
    if not shift_scores.numel():
        raise InputError("ATC needs at least one shift image")
    threshold = atc_threshold(id_scores, float(correct.mean()))
    return float((shift_scores > threshold).to(torch.float64).mean())


def _inputs(id_logits: Any, id_labels: Any, shift_logits: Any, id_rule: Any) -> tuple[Tensor, Tensor, Tensor, Any]:
    id_logits = as_matrix(id_logits, "id_logits (samples x classes)")
    id_labels = as_labels(id_labels, "id_labels", length=id_logits.shape[0])
    shift_logits = as_matrix(shift_logits, "shift_logits (samples x classes)")
    rule = _rule(id_rule, "id_rule")
    return id_logits, id_labels, shift_logits, top1_correct(id_logits, id_labels, **rule)


def doc_accuracy(id_logits: Any, id_labels: Any, shift_logits: Any, *, id_rule: Any = None,
                 shift_rule: Any = None) -> float:
    """DoC's predicted accuracy on a shift set from its unlabelled logits.

    Args:
        id_logits: ``N x C`` logits on the labelled in-distribution set.
        id_labels: its ``N`` labels (in ``id_rule``'s convention).
        shift_logits: ``M x C`` logits on the unlabelled shift set.
        id_rule, shift_rule: each set's scoring rule: a mapping ``{"class_indices", "class_map"}`` or the
            dataset (ImageNet-R/-A: the softmax over their 200 classes; ObjectNet: over its class-map classes).

    Returns:
        ``ACC(I) - (mean max-softmax on I - mean max-softmax on the shift set)``, clipped to [0, 1].

    Example:
        >>> import torch
        >>> doc_accuracy(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]),
        ...              torch.tensor([[2.0, 0.0]]))   # ACC(I) 0.5, same confidence everywhere
        0.5
    """
    id_logits, _, shift_logits, correct = _inputs(id_logits, id_labels, shift_logits, id_rule)
    return doc_from_scores(float(correct.to(torch.float64).mean()), confidence_scores(id_logits, rule=id_rule),
                           confidence_scores(shift_logits, rule=shift_rule))


def atc_accuracy(id_logits: Any, id_labels: Any, shift_logits: Any, *, score: Score = "maxprob",
                 id_rule: Any = None, shift_rule: Any = None) -> float:
    """ATC's predicted accuracy on a shift set from its unlabelled logits.

    Args:
        id_logits, id_labels, shift_logits, id_rule, shift_rule: see :func:`doc_accuracy`.
        score: ``"maxprob"`` (max softmax probability) or ``"entropy"`` (negative entropy of the softmax).

    Returns:
        The share of shift images whose score is above the threshold at which the share of in-distribution
        images above it equals ``ACC(I)``.

    Example:
        >>> import torch
        >>> id_logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
        >>> atc_accuracy(id_logits, torch.tensor([0, 0, 1, 1]), torch.tensor([[3.0, 0.0], [0.2, 0.0]]))
        0.5
    """
    id_logits, _, shift_logits, correct = _inputs(id_logits, id_labels, shift_logits, id_rule)
    return atc_from_scores(confidence_scores(id_logits, score=score, rule=id_rule), correct.to(torch.float64),
                           confidence_scores(shift_logits, score=score, rule=shift_rule))
