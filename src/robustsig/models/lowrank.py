"""A low-rank model of a whole encoder (the paper's first future-work item): every linear map keeps only its most
important singular directions, measured against its own inputs (eq. 4, :func:`robustsig.calibrate_linear_maps`).

:func:`low_rank_classifier` builds one budget's model (a copy; the original is untouched). Its ``meta["lowrank"]``
records the budget and the rank of every factorised map, so :func:`robustsig.save_classifier` writes a checkpoint
that loads back by spec (``bundled:mobilenet_v2@/path/lowrank.safetensors``): the loader rebuilds the factorised
layout before reading the weights (:func:`robustsig.models.linear_maps.apply_structure`).

:func:`robustsig.extraction.lowrank.low_rank_curve` evaluates several budgets and orders on an id set and shift sets.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from robustsig.errors import InputError
from robustsig.metrics.lowrank import kept_directions, low_rank_factors
from robustsig.models.classifier import Classifier
from robustsig.models.linear_maps import Calibration, explicit_attention, replace_map

#: Version of the ``meta["lowrank"]`` record.
STRUCTURE_VERSION = 1


def low_rank_classifier(classifier: Classifier, calibration: Calibration, fraction: float,
                        order: str = "importance", budget: str = "rank", *, seed: int = 0,
                        dense: bool = True) -> Classifier:
    """A copy of ``classifier`` whose encoder's linear maps keep only the directions a budget allows.

    Args:
        classifier: the model.
        calibration: its :func:`~robustsig.calibrate_linear_maps` result.
        fraction: fraction removed, in ``[0, 1)``: of each map's rank (``budget="rank"``) or of all maps'
            parameters (``budget="parameters"``); 0 gives the original model. A budget that leaves a map no direction
            (fraction 1, or near 1 with the parameter budget) is refused: the encoder would be cut there.
        order: ``"importance"`` (eq. 4 on the map's inputs), ``"singular"`` or ``"random"``.
        budget: ``"rank"`` or ``"parameters"``.
        seed: seed of the random order.
        dense: keep a map as one dense rank-``k`` weight when two factors would be larger (``False``: factorise
            every pruned map, to test the factorised layers).

    Returns:
        the low-rank classifier; ``meta["lowrank"]`` holds ``fraction``, ``order``, ``budget``, ``seed``, ``ranks``
        (kept directions per map), ``factorised`` (rank per replaced module) and the parameter counts.

    Example:
        >>> cal = calibrate_linear_maps(clf, photos, images=64)                                       # doctest: +SKIP
        >>> small = low_rank_classifier(clf, cal, 0.5, "importance")                      # doctest: +SKIP
        >>> small.meta["lowrank"]["parameters"] < small.meta["lowrank"]["parameters_original"]   # doctest: +SKIP
        True
    """
    kept = kept_directions(calibration.svds, {path: m.shape for path, m in calibration.maps.items()}, fraction,
                           order, budget, importance=calibration.importance, seed=seed)
    emptied = [path for path in calibration.maps if kept[path].numel() == 0]
    if emptied:
        raise InputError(f"fraction {fraction:g} ({budget} budget) removes every direction of {len(emptied)} linear "
                         f"map(s), first {emptied[0]!r}: the model would be cut there (its output no longer depends "
                         "on the image). Use a smaller fraction (below 1)")
    model = copy.deepcopy(classifier)
    explicit_attention(model.encoder)
    factorised: dict[str, int] = {}
    for path, linear_map in calibration.maps.items():
        k = int(kept[path].numel())
        if k == linear_map.shape.rank:
            continue  # nothing pruned: the map keeps its original weight
        first, second = low_rank_factors(calibration.svds[path], kept[path])
        if replace_map(model.encoder, linear_map, first, second, dense=dense):
            factorised[path] = k
    model.meta["lowrank"] = {
        "version": STRUCTURE_VERSION, "fraction": float(fraction), "order": order, "budget": budget, "seed": seed,
        "calibration_images": calibration.images,
        "ranks": {path: int(kept[path].numel()) for path in calibration.maps},
        "factorised": factorised,
        "parameters": parameter_count(model), "parameters_original": parameter_count(classifier),
    }
    return model


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def flops_per_image(classifier: Classifier, image_shape: Sequence[int]) -> int:
    """Floating-point operations of one forward pass of one image, counted by ``torch.utils.flop_counter``
    (matrix products, convolutions, attention; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    reference = next(classifier.parameters())
    x = torch.zeros(1, *image_shape[-3:], device=reference.device, dtype=reference.dtype)
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            classifier(x)
    finally:
        classifier.train(was_training)
    return int(counter.get_total_flops())
