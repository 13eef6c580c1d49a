"""The demo's study: the model pool that runs offline (real ImageNet-1k MobileNetV2 and EfficientNet-Lite0 from
packages, a random-init MobileNetV2 control, a Wise-FT sweep between the control and the real MobileNetV2, CKA
pairs) on the demo data, as a study config that :func:`robustsig.study.config.validate_study_config` accepts.

Extraction settings are the fastest measured on 2 CPU cores: batch 16 (batches of 32 and 64 run 1.5-2x slower
per image there), one loader worker.

>>> config = demo_config(build_demo_data("robustsig-demo/data"), "robustsig-demo")   # doctest: +SKIP
>>> [m["name"] for m in config["models"]]                                         # doctest: +SKIP
['mobilenet_v2', 'mobilenet_v2-random', 'efficientnet_lite0']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustsig.demo.build import CONCEPT_SET, ID_SET, DemoData
from robustsig.study.config import PAPER_BASELINE

MODELS: tuple[dict[str, str], ...] = (
    {"name": "mobilenet_v2", "spec": "bundled:mobilenet_v2", "backbone": "MobileNetV2",
     "pretraining": "imagenet-1k", "kind": "supervised"},
    {"name": "mobilenet_v2-random", "spec": "torchvision:mobilenet_v2", "backbone": "MobileNetV2",
     "pretraining": "random-init", "kind": "supervised"},
    {"name": "efficientnet_lite0", "spec": "bundled:efficientnet_lite0", "backbone": "EfficientNet-Lite0",
     "pretraining": "imagenet-1k", "kind": "supervised"},
)
"""The pool. The random-init control has no trained weights; the study schema has no 'control' kind, so it sits in
the supervised column on its own ``random-init`` row."""

MOBILENET_V2_LAYERS = tuple(f"features{i}" for i in range(19))
EFFICIENTNET_LITE0_LAYERS = tuple(f"block{i}" for i in range(16))
DEPTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Relative depths at which MobileNetV2 and EfficientNet-Lite0 are compared by CKA."""
WISEFT_ALPHAS = (0.0, 0.5, 0.9, 1.0)
PRUNING_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))


def layers_at_depths(layers: Sequence[str], depths: Sequence[float]) -> list[str]:
    """The layer at each relative depth (0: the first, 1: the last), rounding to the nearest layer.

    >>> layers_at_depths(["a", "b", "c", "d", "e"], [0.0, 0.5, 1.0])
    ['a', 'c', 'e']
    """
    return [layers[round(depth * (len(layers) - 1))] for depth in depths]


def demo_config(data: DemoData, out_dir: str | os.PathLike, *, device: str = "cpu") -> dict[str, Any]:
    """The demo's study config (a mapping for :func:`~robustsig.study.config.validate_study_config`).

    Args:
        data: the built demo data (:func:`~robustsig.demo.build.build_demo_data`).
        out_dir: the study's output folder (``results/``, ``report/``; the activation store in ``store/``).
        device: where to extract (the demo is sized for the CPU).

    Returns:
        The config as plain data (absolute paths), ready to validate, run or dump as YAML.
    """
    out = Path(out_dir).expanduser().absolute()
    class_map = {"class_map": str(data.class_map_path)}
    return {
        "version": 1,
        "output_dir": str(out),
        "store_dir": str(out / "store"),
        "device": device,
        "batch_size": 16,
        "workers": 1,
        "autocast": "none",
        "models": [dict(model) for model in MODELS],
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
                         "venn_groups": [[m["name"] for m in MODELS]]},
            "cka": {"kernel": "linear", "pairs": [
                {"model_a": "mobilenet_v2", "model_b": "mobilenet_v2-random", "layers": "all"},
                {"model_a": "mobilenet_v2", "model_b": "efficientnet_lite0",
                 "layers": layers_at_depths(MOBILENET_V2_LAYERS, DEPTHS),
                 "layers_b": layers_at_depths(EFFICIENTNET_LITE0_LAYERS, DEPTHS)},
            ]},
            "wiseft": {"alphas": list(WISEFT_ALPHAS), "pairs": [
                {"name": "mobilenet_v2-random-to-imagenet", "zero_shot": "mobilenet_v2-random",
                 "finetuned": "mobilenet_v2"},
            ]},
        },
    }
