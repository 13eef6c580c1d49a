"""The low-rank model's curve (:func:`low_rank_curve`): several budgets and orders of
:func:`robustsig.low_rank_classifier` evaluated on an id set and shift sets in one decoding of each image, with the
study's scoring (:func:`robustsig.extraction.calibrate.accuracies`) and ER line."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robustsig.errors import InputError
from robustsig.extraction.calibrate import accuracies, image_batches
from robustsig.metrics.robustness import PAPER_B0, PAPER_B1, effective_robustness
from robustsig.metrics.table import MetricTable
from robustsig.models.classifier import Classifier
from robustsig.models.linear_maps import Calibration
from robustsig.models.lowrank import flops_per_image, low_rank_classifier, parameter_count


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
    for images, _ in image_batches(classifier, dataset, batch_size=1, limit=1, device=torch.device("cpu")):
        return tuple(images.shape[1:])
    raise InputError("the id set gave no decodable image")
