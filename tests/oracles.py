"""Reference implementations of the paper's quantities, written from the paper's equations with numpy, scipy and
scikit-learn only (no robustsig code), for the study-level tests to compare the runner's results against.

Every function takes numpy arrays (or tensors, converted) and computes in float64."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import kurtosis as scipy_kurtosis
from sklearn.metrics import average_precision_score

PAPER_B1, PAPER_B0 = 0.76, -1.49  # eq. 1's line, as printed in the paper


def array(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def top1(logits: Any, labels: Any) -> float:
    """Top-1 accuracy over all logits."""
    return float((array(logits).argmax(axis=1) == array(labels)).mean())


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def effective_robustness(acc_id: float, acc_shift: float, b1: float = PAPER_B1, b0: float = PAPER_B0) -> float:
    """Eq. 1: ACC(S) - sigmoid(b1 logit(ACC(I)) + b0)."""
    return acc_shift - 1 / (1 + np.exp(-(b1 * logit(acc_id) + b0)))


def refit_line(acc_id: Sequence[float], acc_shift: Sequence[float]) -> tuple[float, float]:
    """Least-squares line of logit(ACC(S)) on logit(ACC(I)): (slope, intercept)."""
    slope, intercept = np.polyfit([logit(a) for a in acc_id], [logit(a) for a in acc_shift], 1)
    return float(slope), float(intercept)


def activation_kurtosis(h: Any) -> float:
    """Eq. 2: Pearson kurtosis of each activation vector over its components, averaged over the vectors."""
    return float(scipy_kurtosis(array(h).astype(np.float64), axis=1, fisher=False, bias=True).mean())


def outlier_dimensions(h: Any, factor: float = 5.0) -> list[int]:
    """Dimensions whose mean |h_i| is at least ``factor`` times the mean over dimensions, most extreme first."""
    magnitude = np.abs(array(h).astype(np.float64)).mean(axis=0)
    ratio = magnitude / magnitude.mean()
    flagged = np.flatnonzero(ratio >= factor)
    return flagged[np.argsort(-ratio[flagged], kind="stable")].tolist()


def head_svd(W: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's SVD of the head: (s descending, U, V) with W = U diag(s) V^T (signs as LAPACK gives them)."""
    U, s, Vt = np.linalg.svd(array(W).astype(np.float64), full_matrices=False)
    return s, U, Vt.T


def direction_importance(W: Any, h: Any) -> np.ndarray:
    """Eq. 4: s_i / sum_j s_j x mean_n |cos(v_i, h_n)| (sign-free, so LAPACK's signs do not matter)."""
    s, _, V = head_svd(W)
    h = array(h).astype(np.float64)
    cosine = np.abs(h @ V) / np.linalg.norm(h, axis=1, keepdims=True)
    return s / s.sum() * cosine.mean(axis=0)


def privileged(importance: np.ndarray, ratio: float) -> list[int]:
    """Directions whose importance is at least ``ratio`` times the mean importance."""
    return np.flatnonzero(importance >= ratio * importance.mean()).tolist()


def pruned_accuracy(h: Any, labels: Any, svd: tuple[np.ndarray, np.ndarray, np.ndarray], b: Any,
                    pruned: Sequence[int]) -> float:
    """Accuracy of the head ``svd = head_svd(W)`` rebuilt from the singular directions not in ``pruned`` (all
    logits scored)."""
    s, U, V = svd
    keep = np.setdiff1d(np.arange(len(s)), np.asarray(pruned, dtype=np.int64))
    logits = (array(h).astype(np.float64) @ V[:, keep]) * s[keep] @ U[:, keep].T
    if b is not None:
        logits = logits + array(b).astype(np.float64)
    return top1(logits, labels)


def average_precision(labels: Any, scores: Any, orientation: str) -> np.ndarray:
    """sklearn's AP of every column of ``scores``; ``both``: the larger of AP(s) and AP(-s)."""
    labels, scores = array(labels), array(scores)
    ap = np.array([average_precision_score(labels, scores[:, d]) for d in range(scores.shape[1])])
    if orientation == "both":
        ap = np.maximum(ap, [average_precision_score(labels, -scores[:, d]) for d in range(scores.shape[1])])
    return ap


def concept_counts(ap: np.ndarray, threshold: float) -> dict[str, Any]:
    """Eq. 5 and Section 4: unique concepts, the paper's polysemanticity (mean over all d_H directions), the mean
    over the directions encoding at least one concept, and the encoded concepts' indices."""
    encoded = np.nan_to_num(ap, nan=-1.0) >= threshold
    per_direction = encoded.sum(axis=0)
    active = per_direction[per_direction > 0]
    return {"unique": int(encoded.any(axis=1).sum()), "polysemanticity": float(per_direction.mean()),
            "polysemanticity_active": float(active.mean()) if active.size else float("nan"),
            "concepts": np.flatnonzero(encoded.any(axis=1)).tolist()}


def top_concepts(ap: np.ndarray, names: Sequence[str], direction: int, k: int) -> list[tuple[str, float]]:
    """The ``k`` concepts of highest AP on ``direction`` (ties: the first concept), NaN left out."""
    column = np.nan_to_num(ap[:, direction], nan=-1.0)
    best = np.argsort(-column, kind="stable")[:k]
    return [(names[c], float(ap[c, direction])) for c in best if column[c] >= 0]


def venn_regions(sets: Mapping[str, set]) -> dict[str, int]:
    """Size of every non-empty region 'a & b' of the concept sets (concepts in exactly those sets)."""
    names = list(sets)
    regions = {}
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            inside = set.intersection(*(sets[m] for m in combo))
            region = inside.difference(*(sets[m] for m in names if m not in combo))
            if region:
                regions[" & ".join(combo)] = len(region)
    return regions
