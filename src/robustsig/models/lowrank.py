"""A low-rank model of a whole encoder (the paper's first future-work item): every linear map keeps only its most
important singular directions, measured against its own inputs (eq. 4, :func:`robustsig.calibrate_linear_maps`).

:func:`low_rank_classifier` builds one budget's model (a copy; the original is untouched). Its ``meta["lowrank"]``
records the budget and the rank of every factorised map, so :func:`robustsig.save_classifier` writes a checkpoint
that loads back by spec (``bundled:mobilenet_v2@/path/lowrank.safetensors``): the loader rebuilds the factorised
layout before reading the weights (:func:`robustsig.models.linear_maps.apply_structure`).

:func:`low_rank_curve` evaluates several budgets and orders on an id set and shift sets in one decoding of each
image, with the study's scoring (:func:`robustsig.extraction.calibrate.accuracies`) and ER line.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robustsig.errors import InputError
from robustsig.extraction.calibrate import Calibration, accuracies
from robustsig.metrics.lowrank import kept_directions, low_rank_factors
from robustsig.metrics.robustness import PAPER_B0, PAPER_B1, effective_robustness
from robustsig.metrics.table import MetricTable
from robustsig.models.classifier import Classifier
from robustsig.models.linear_maps import explicit_attention, replace_map

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


def low_rank_curve(classifier: Classifier, calibration: Calibration, datasets: Mapping[str, Dataset], *,
                   id_name: str, shift_names: Sequence[str] = (), fractions: Sequence[float] = (0.0, 0.5, 0.8),
                   orders: Sequence[str] = ("importance",), budget: str = "rank", seed: int = 0,
                   b1: float = PAPER_B1, b0: float = PAPER_B0, batch_size: int = 32, workers: int = 0,
                   device: str | torch.device | None = None, progress: bool = True) -> MetricTable:
    """Accuracy, ER, parameters and FLOPs of the low-rank model at every (order, fraction).

    Budgets that give the same ranks (fraction 0 of every order) are built and evaluated once. Each dataset's
    images are decoded once for all budgets.

    Args:
        classifier: the model; calibration: its calibration on the id set.
        datasets: name -> dataset, the id set and the shift sets among them.
        id_name: the in-distribution dataset's name; shift_names: the shift sets (ER needs at least one).
        fractions, orders, budget, seed: the budgets (see :func:`low_rank_classifier`).
        b1, b0: the ER baseline line.
        batch_size, workers, device, progress: as for extraction.

    Returns:
        MetricTable, one row per (order, fraction): ``order``, ``fraction``, ``acc:<dataset>`` per dataset,
        ``accuracy`` (the id set's), ``acc_shift`` (mean over the shift sets), ``er`` (NaN without shift sets or when
        the id accuracy is 0 or 1), ``parameters``, ``parameter_fraction``, ``flops``, ``flop_fraction`` (per
        image, relative to the original) and ``factorised`` (maps replaced by two).
    """
    if id_name not in datasets:
        raise InputError(f"the id set {id_name!r} is not among the datasets {list(datasets)}")
    unknown = [name for name in shift_names if name not in datasets]
    if unknown:
        raise InputError(f"shift set(s) {unknown} are not among the datasets {list(datasets)}")
    if not fractions or not orders:
        raise InputError("give at least one fraction and one order")
    variants: dict[str, Classifier] = {}
    keys: list[tuple[str, float, str]] = []
    original = low_rank_classifier(classifier, calibration, 0.0)  # every map at full rank
    full_ranks = original.meta["lowrank"]["ranks"]
    for order in orders:
        for fraction in fractions:
            # one model per kept set: equal ranks are not enough (two orders keep as many, but different,
            # directions of each map); a budget that prunes nothing is the original model for every order
            model = low_rank_classifier(classifier, calibration, float(fraction), order, budget, seed=seed)
            ident = f"{order}@{float(fraction)!r}" if model.meta["lowrank"]["ranks"] != full_ranks else "original"
            variants.setdefault(ident, model)
            keys.append((order, float(fraction), ident))
    first_image = _image_shape(classifier, datasets[id_name])
    # counted on the original weights with explicit attention: the fused nn.MultiheadAttention path is invisible to
    # the FLOP counter, so the original module would seem cheaper than the same attention made explicit
    original_flops = flops_per_image(original, first_image)
    flops = {ident: flops_per_image(model, first_image) for ident, model in variants.items()}
    scores = {name: accuracies(variants, dataset, batch_size=batch_size, workers=workers, device=device,
                               progress=progress, desc=f"low-rank on {name}")
              for name, dataset in datasets.items()}
    original_parameters = parameter_count(classifier)
    columns: dict[str, list[Any]] = {"order": [], "fraction": [], "accuracy": [], "acc_shift": [], "er": [],
                                     "parameters": [], "parameter_fraction": [], "flops": [], "flop_fraction": [],
                                     "factorised": []}
    for name in datasets:
        columns[f"acc:{name}"] = []
    for order, fraction, ident in keys:
        model = variants[ident]
        acc_id = scores[id_name][ident]
        acc_shift = float(np.mean([scores[name][ident] for name in shift_names])) if shift_names else math.nan
        defined = bool(shift_names) and 0.0 < acc_id < 1.0
        columns["order"].append(order)
        columns["fraction"].append(fraction)
        columns["accuracy"].append(acc_id)
        columns["acc_shift"].append(acc_shift)
        columns["er"].append(float(effective_robustness(acc_id, acc_shift, b1, b0)) if defined else math.nan)
        columns["parameters"].append(model.meta["lowrank"]["parameters"])
        columns["parameter_fraction"].append(model.meta["lowrank"]["parameters"] / original_parameters)
        columns["flops"].append(flops[ident])
        columns["flop_fraction"].append(flops[ident] / original_flops if original_flops else math.nan)
        columns["factorised"].append(len(model.meta["lowrank"]["factorised"]))
        for name in datasets:
            columns[f"acc:{name}"].append(scores[name][ident])
    return MetricTable(columns, meta={"budget": budget, "seed": seed, "id": id_name, "shift": list(shift_names),
                                      "calibration_images": calibration.images, "maps": len(calibration.maps),
                                      "parameters_original": original_parameters, "flops_original": original_flops,
                                      "b1": b1, "b0": b0})


def _image_shape(classifier: Classifier, dataset: Dataset) -> tuple[int, ...]:
    """The shape of one preprocessed image of ``dataset`` (what the FLOPs are counted on)."""
    from robustsig.extraction.calibrate import image_batches

    for images, _ in image_batches(classifier, dataset, batch_size=1, limit=1, device=torch.device("cpu")):
        return tuple(images.shape[1:])
    raise InputError("the id set gave no decodable image")
