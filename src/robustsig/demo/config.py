"""The demo's study: the model pool that runs offline on the demo data, as a study config that
:func:`robustsig.study.config.validate_study_config` accepts.

The pool (:func:`demo_models`), in the paper's layout (rows: backbone x pretraining; columns: zero-shot /
finetuned / supervised):

- ``mobilenet_v2``: torchvision's ImageNet-1k MobileNetV2 (a package's real weights), in the *zero-shot* column: it
  scores the demo's classes through the class map without having seen a demo image, as the paper's zero-shot CLIP
  models score ImageNet without training on it;
- ``mobilenet_v2-ft``: the same network finetuned on the demo's training split by :mod:`robustsig.demo.finetune`,
  in the *finetuned* column of the same row: the paper's zero-shot -> finetuned pair, sharing an initialisation,
  which is what the Wise-FT sweep and the all-layer CKA compare;
- ``efficientnet_lite0``: ImageNet-1k EfficientNet-Lite0 (a package's real weights), zero-shot on its own row;
- ``mobilenet_v2-random``: a random-init MobileNetV2, a control with no training at all, on its own
  ``random-init`` row (zero-shot column: it too is applied to the classes untrained). It is what kurtosis,
  importance and concepts look like when nothing was learnt.

No model of the demo is trained from scratch on its classes, so the *supervised* column is empty.

Extraction settings are the fastest measured on 2 CPU cores: batch 16 (batches of 32 and 64 run 1.5-2x slower
per image there), images decoded in the main process (as fast as one loader worker on these 180-390 image sets,
and it saves the worker's start, about 0.6 s for each of the demo's 49 stores).

>>> config = demo_config(build_demo_data("robustsig-demo/data"), "robustsig-demo",
...                      finetuned="robustsig-demo/finetune/model.safetensors")             # doctest: +SKIP
>>> [m["name"] for m in config["models"]]                                                  # doctest: +SKIP
['mobilenet_v2', 'mobilenet_v2-ft', 'mobilenet_v2-random', 'efficientnet_lite0']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustsig.demo.build import CONCEPT_SET, ID_SET, DemoData
from robustsig.study.sections import PAPER_BASELINE

BASE_SPEC = "bundled:mobilenet_v2"
"""The model the demo finetunes (and the Wise-FT sweep starts from)."""
ZERO_SHOT, FINETUNED, RANDOM, EFFICIENTNET = ("mobilenet_v2", "mobilenet_v2-ft", "mobilenet_v2-random",
                                              "efficientnet_lite0")


POOL_NOTE = ("Pool: the zero-shot column holds models applied to the demo's classes through the class map without "
             "training on a demo image: the ImageNet-1k MobileNetV2 and EfficientNet-Lite0 (real weights from "
             "packages) and, on its own random-init row, an untrained MobileNetV2 as a control. The finetuned column "
             "holds that MobileNetV2 finetuned on the demo's training crops by robustsig's training loop; the Wise-FT "
             "sweep and the all-layer CKA compare it with the model it started from. No model is trained from "
             "scratch on the demo's classes, so the supervised column is empty.")
"""The pool's layout in words (the demo's report shows it under the data statement)."""


def demo_models(finetuned: str | os.PathLike) -> list[dict[str, str]]:
    """The pool, with the finetuned MobileNetV2 loaded from ``finetuned`` (a ``model.safetensors``); see the module
    notes for why each model sits in its row and column."""
    return [
        {"name": ZERO_SHOT, "spec": BASE_SPEC, "backbone": "MobileNetV2", "pretraining": "imagenet-1k",
         "kind": "zero-shot"},
        {"name": FINETUNED, "spec": f"{BASE_SPEC}@{Path(finetuned).expanduser().absolute()}",
         "backbone": "MobileNetV2", "pretraining": "imagenet-1k", "kind": "finetuned"},
        {"name": RANDOM, "spec": "torchvision:mobilenet_v2", "backbone": "MobileNetV2", "pretraining": "random-init",
         "kind": "zero-shot"},
        {"name": EFFICIENTNET, "spec": "bundled:efficientnet_lite0", "backbone": "EfficientNet-Lite0",
         "pretraining": "imagenet-1k", "kind": "zero-shot"},
    ]


MOBILENET_V2_LAYERS = tuple(f"features{i}" for i in range(19))
EFFICIENTNET_LITE0_LAYERS = tuple(f"block{i}" for i in range(16))
DEPTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Relative depths at which MobileNetV2 and EfficientNet-Lite0 are compared by CKA."""
CKA_MINIBATCH = 16
"""The paper's CKA (a paired pass of both models, every set) in minibatches of the extraction's batch, the fastest
on 2 CPU cores; the cross-architecture pair runs on the id set only (each CKA pass costs two forward passes)."""
WISEFT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
PRUNING_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))
SIGNIFICANCE_PERMUTATIONS = 200
"""Label permutations per concept in the demo (the study default is 1000): the smallest p-value, 1/201, is still
below the Benjamini-Hochberg bound once a few of the 29 concepts are significant, at a fifth of the time."""
LOWRANK_FRACTIONS = (0.0, 0.1, 0.25)
LOWRANK_CALIBRATION = 64
"""The low-rank encoder of the zero-shot MobileNetV2: fractions of every map's rank pruned, calibration images."""


def layers_at_depths(layers: Sequence[str], depths: Sequence[float]) -> list[str]:
    """The layer at each relative depth (0: the first, 1: the last), rounding to the nearest layer.

    >>> layers_at_depths(["a", "b", "c", "d", "e"], [0.0, 0.5, 1.0])
    ['a', 'c', 'e']
    """
    return [layers[round(depth * (len(layers) - 1))] for depth in depths]


def demo_config(data: DemoData, out_dir: str | os.PathLike, *, finetuned: str | os.PathLike, device: str = "cpu",
                description: str | None = None) -> dict[str, Any]:
    """The demo's study config (a mapping for :func:`~robustsig.study.config.validate_study_config`).

    Args:
        data: the built demo data (:func:`~robustsig.demo.build.build_demo_data`).
        out_dir: the study's output folder (``results/``, ``report/``; the activation store in ``store/``).
        finetuned: the finetuned MobileNetV2 (:func:`~robustsig.demo.finetune.finetune_demo_model`'s
            ``model.safetensors``).
        device: where to extract (the demo is sized for the CPU).
        description: the note the report shows at its top (what the data is).

    Returns:
        The config as plain data (absolute paths), ready to validate, run or dump as YAML.
    """
    out = Path(out_dir).expanduser().absolute()
    class_map = {"class_map": str(data.class_map_path)}
    models = demo_models(finetuned)
    config: dict[str, Any] = {
        "version": 1,
        "output_dir": str(out),
        "store_dir": str(out / "store"),
        "device": device,
        "batch_size": 16,
        "workers": 0,
        "autocast": "none",
        "models": models,
        "datasets": {
            "id": {"name": ID_SET, "kind": "folder", "root": str(data.id_root), "options": class_map},
            "shift": [{"name": name, "kind": "folder", "root": str(root), "options": class_map}
                      for name, root in data.shift_roots.items()],
            "broden": {"name": CONCEPT_SET, "root": str(data.concepts_root)},
        },
        "baseline": {"b1": PAPER_BASELINE[0], "b0": PAPER_BASELINE[1]},
        "analyses": {
            "accuracy": {},
            "kurtosis": {},
            "importance": {},
            "pruning": {"fractions": list(PRUNING_FRACTIONS), "orders": ["singular", "importance", "random"]},
            "concepts": {"threshold": 0.9, "min_positives": 10, "bases": ["singular", "neuron"], "top_k": 3,
                         "venn_groups": [[ZERO_SHOT, FINETUNED, RANDOM]], "permutations": SIGNIFICANCE_PERMUTATIONS},
            "cka": {"minibatch": CKA_MINIBATCH, "pairs": [
                {"model_a": ZERO_SHOT, "model_b": FINETUNED, "layers": "all"},
                {"model_a": ZERO_SHOT, "model_b": EFFICIENTNET,
                 "layers": layers_at_depths(MOBILENET_V2_LAYERS, DEPTHS),
                 "layers_b": layers_at_depths(EFFICIENTNET_LITE0_LAYERS, DEPTHS), "dataset": ID_SET},
            ]},
            "wiseft": {"alphas": list(WISEFT_ALPHAS), "pairs": [
                {"name": "mobilenet_v2-wiseft", "zero_shot": ZERO_SHOT, "finetuned": FINETUNED},
            ]},
            "atlas": {},
            "predict_er": {"label_free": True},
            "layer_kurtosis": {},
            "lowrank": {"models": [ZERO_SHOT], "fractions": list(LOWRANK_FRACTIONS),
                        "orders": ["importance", "singular"], "calibration_images": LOWRANK_CALIBRATION},
        },
    }
    if description is not None:
        config["description"] = description
    return config
