"""robustsig: is an image model robust to natural distribution shift? Look inside it.

Implements the study of Crabbé et al., *Robust multimodal models have outlier features and encode more
concepts*: effective robustness, activation kurtosis, privileged directions of the linear head, concept
probing, CKA and Wise-FT, for any pool of models.

>>> import torch, robustsig as rs
>>> h = torch.randn(1000, 64, dtype=torch.float64)
>>> round(rs.activation_kurtosis(h), 1)   # Gaussian activations: ~3
3.0

The public names are loaded lazily, so ``import robustsig`` stays fast for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC: dict[str, str] = {
    # metrics (pure tensor math + streaming twins)
    "activation_kurtosis": "robustsig.metrics.kurtosis",
    "KurtosisAccumulator": "robustsig.metrics.kurtosis",
    "outlier_dimensions": "robustsig.metrics.kurtosis",
    "head_svd": "robustsig.metrics.directions",
    "direction_importance": "robustsig.metrics.directions",
    "ImportanceAccumulator": "robustsig.metrics.directions",
    "privileged_directions": "robustsig.metrics.directions",
    "importance_spearman": "robustsig.metrics.directions",
    "pruning_curve": "robustsig.metrics.pruning",
    "PruningAccumulator": "robustsig.metrics.pruning",
    "PruningCurves": "robustsig.metrics.pruning",
    "pruning_effective_robustness": "robustsig.metrics.pruning",
    "MetricTable": "robustsig.metrics.table",
    "top1_correct": "robustsig.metrics.scoring",
    "effective_robustness": "robustsig.metrics.robustness",
    "fit_baseline": "robustsig.metrics.robustness",
    "mean_shift_accuracy": "robustsig.metrics.robustness",
    "average_precision_matrix": "robustsig.metrics.concepts",
    "concept_summary": "robustsig.metrics.concepts",
    "concept_overlaps": "robustsig.metrics.concepts",
    "concept_threshold_sweep": "robustsig.metrics.concepts",
    "concept_significance": "robustsig.metrics.significance",
    "doc_accuracy": "robustsig.metrics.labelfree",
    "atc_accuracy": "robustsig.metrics.labelfree",
    "cka": "robustsig.metrics.cka",
    "TopOneAccumulator": "robustsig.metrics.scoring",
    "MinibatchCKA": "robustsig.metrics.cka",
    "LinearCKA": "robustsig.metrics.cka",
    "minibatch_cka": "robustsig.metrics.cka",
    "MinibatchCKAMatrix": "robustsig.metrics.cka",
    # models
    "Classifier": "robustsig.models.classifier",
    "LayerTap": "robustsig.models.classifier",
    "load_classifier": "robustsig.models.factory",
    "ModelSpec": "robustsig.models.spec",
    "save_classifier": "robustsig.models.checkpoint",
    "zero_shot_head": "robustsig.models.zeroshot",
    "interpolate": "robustsig.models.wiseft",
    "interpolation_path": "robustsig.models.wiseft",
    "calibrate_linear_maps": "robustsig.extraction.calibrate",
    "low_rank_classifier": "robustsig.models.lowrank",
    "low_rank_curve": "robustsig.extraction.lowrank",
    # training (the model pool: finetuning, from scratch, Wise-FT sweeps)
    "Recipe": "robustsig.train.recipes",
    "load_recipe": "robustsig.train.recipes",
    "train_classifier": "robustsig.train.loop",
    "set_cross_entropy": "robustsig.train.objective",
    "parse_alphas": "robustsig.train.sweep",
    "save_wiseft_sweep": "robustsig.train.sweep",
    # data
    "open_dataset": "robustsig.data.registry",
    "accuracy": "robustsig.data.scoring",
    "parse_dataset_spec": "robustsig.data.registry",
    # extraction
    "extract": "robustsig.extraction.extractor",
    "ActivationStore": "robustsig.extraction.store",
    # study and report
    "StudyConfig": "robustsig.study.config",
    "load_study_config": "robustsig.study.config",
    "run_study": "robustsig.runner",
    "RunSummary": "robustsig.runner",
    "Results": "robustsig.study.results",
    "build_report": "robustsig.report.html",
    "run_demo": "robustsig.demo.run",
    # errors
    "RobustsigError": "robustsig.errors",
    "InputError": "robustsig.errors",
    "DataError": "robustsig.errors",
    "CorruptImageError": "robustsig.errors",
    "UnsafeCheckpointError": "robustsig.errors",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'robustsig' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
