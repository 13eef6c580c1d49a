"""The demo's study: the model pool that runs offline on the demo data, as a study config that
:func:`robustsig.study.config.validate_study_config` accepts.

The pool (:class:`DemoPool`; the default, :data:`POOLS`), in the paper's layout (rows: backbone x pretraining;
columns: zero-shot / finetuned / supervised):

- five real ImageNet-1k models whose weights ship in packages, in the *zero-shot* column (they score the demo's
  ImageNet photos without having seen a demo image): MobileNetV2, EfficientNet-Lite0, -Lite1, -Lite2 and
  SqueezeNet 1.1;
- MobileNetV2 and SqueezeNet 1.1 finetuned on the demo's training photos (packaged photos, none of them a test
  photo) by :mod:`robustsig.demo.finetune`, in the *finetuned* column of their row: the paper's zero-shot ->
  finetuned pairs, sharing an initialisation;
- the Wise-FT models between each pair, ``(1 - alpha) theta_zero_shot + alpha theta_finetuned`` at alpha 0.25, 0.5
  and 0.75, written as checkpoints (:mod:`robustsig.demo.interpolations`) and listed as ordinary pool models, each
  on a row of its own (pretraining ``wise-ft 0.25`` ...), so that every analysis treats them like any other model.
  The study's ``wiseft`` analysis still sweeps each pair with its own in-memory interpolation, at alpha 0, 0.5 and
  1 only: its 0 and 1 are the pool models' stores, its 0.5 is extracted again (the price of keeping the analysis
  unchanged), and it must agree with the pool's ``-wiseft-0.5`` checkpoint, which the demo's test checks;
- ``mobilenet_v2-random``: a random-init MobileNetV2, a control with no training at all, on its own
  ``random-init`` row. It is what kurtosis, importance and concepts look like when nothing was learnt.

No model of the demo is trained from scratch on its classes, so the *supervised* column is empty.

Models that share weights are one *group* for ``predict_er`` (``analyses.predict_er.groups``): a pretrained model,
its finetuned copy and the Wise-FT models between them. A predictor fitted to predict a model's ER never sees a
model of its group (leave one group out).

Cheap at demo size, every analysis kept: one extraction per model and set; layer taps stored only on the id set,
where ``layer_kurtosis`` reads them; CKA on the id set only, from those stored layers; the low-rank encoder on
SqueezeNet, the cheapest model, evaluated on the id set only (its ER would need every shift set at every
fraction); 200 label permutations for the concept significance test.

>>> [m["name"] for m in demo_models(POOLS["tiny"], {"squeezenet1_1": "ft.safetensors"},
...                                 {("squeezenet1_1", 0.5): "w.safetensors"})]
['squeezenet1_1', 'squeezenet1_1-ft', 'squeezenet1_1-wiseft-0.5', 'mobilenet_v2', 'mobilenet_v2-random']
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsig.demo.build import CONCEPT_SET, ID_SET, DemoData
from robustsig.study.sections import PAPER_BASELINE


@dataclass(frozen=True)
class Pretrained:
    """A real ImageNet-1k model of the pool."""

    name: str
    spec: str
    backbone: str
    layers: tuple[str, ...]
    """its layer taps, in order (the CKA pairs name them)."""


PRETRAINED: dict[str, Pretrained] = {model.name: model for model in (
    Pretrained("mobilenet_v2", "bundled:mobilenet_v2", "MobileNetV2", tuple(f"features{i}" for i in range(19))),
    Pretrained("efficientnet_lite0", "bundled:efficientnet_lite0", "EfficientNet-Lite0",
               tuple(f"block{i}" for i in range(16))),
    Pretrained("efficientnet_lite1", "bundled:efficientnet_lite1", "EfficientNet-Lite1",
               tuple(f"block{i}" for i in range(21))),
    Pretrained("efficientnet_lite2", "bundled:efficientnet_lite2", "EfficientNet-Lite2",
               tuple(f"block{i}" for i in range(21))),
    Pretrained("squeezenet1_1", "bundled:squeezenet1_1", "SqueezeNet 1.1",
               ("conv1", *(f"fire{i}" for i in range(2, 10)))),
)}
"""The real models, by pool name."""
RANDOM_SPEC = "torchvision:mobilenet_v2"
RANDOM = "mobilenet_v2-random"
"""The random-init control (a spec naming no weights is built with a seed drawn from the model's name)."""


SIGNIFICANCE_PERMUTATIONS = 200
"""Label permutations per concept in the demo (the study default is 24,999, for 1,197 concepts;
:attr:`DemoPool.permutations`): the smallest p-value, 1/201, is still below the Benjamini-Hochberg bound of the first
of the demo's 7 concepts (0.05 / 7), at a small fraction of the default's cost."""


@dataclass(frozen=True)
class DemoPool:
    """Which models the demo runs.

    Attributes:
        pretrained: names in :data:`PRETRAINED`, in pool order.
        finetuned: the pretrained models the demo finetunes (each with its Wise-FT models).
        alphas: the Wise-FT weights strictly between 0 and 1 listed as pool models.
        cka_pair: the pretrained model compared layer by layer (at six depths) with the first finetuned base.
        lowrank: the model whose whole encoder is made low-rank.
        lowrank_fractions: the fractions of each map's rank it removes.
        permutations: label permutations of the concept significance test.
    """

    pretrained: tuple[str, ...]
    finetuned: tuple[str, ...]
    alphas: tuple[float, ...]
    cka_pair: str
    lowrank: str
    lowrank_fractions: tuple[float, ...] = (0.0, 0.1, 0.25)
    permutations: int = SIGNIFICANCE_PERMUTATIONS


POOLS: dict[str, DemoPool] = {
    "default": DemoPool(("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                         "squeezenet1_1"), ("mobilenet_v2", "squeezenet1_1"), (0.25, 0.5, 0.75),
                        "efficientnet_lite0", "squeezenet1_1"),
    "small": DemoPool(("squeezenet1_1", "mobilenet_v2"), ("squeezenet1_1",), (0.5,), "mobilenet_v2",
                      "squeezenet1_1", (0.0, 0.25), 50),
}
POOLS["tiny"] = POOLS["small"]
"""The pool of each demo size: ``default`` (the demo: 14 models, 13 of them with an ER when no accuracy is 0 or 1),
``small`` and ``tiny`` (tests: the same code path on 5 models, SqueezeNet the finetuned one)."""

DEPTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Relative depths at which the cross-architecture CKA pair is compared."""
CKA_ESTIMATOR = "pooled"
"""CKA from the layers the id stores already hold (``layer_kurtosis`` asks for every tap there): no forward pass of
its own. The paper's estimator (``minibatch``, a paired pass of both models) would add two forward passes per image
and pair; ``robustsig study run`` with ``estimator: minibatch`` in study.yaml computes it."""
PRUNING_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
MIN_POSITIVES = 5
"""A concept is probed when at least 5 photos show it (the concept set has one image per photo)."""
LOWRANK_CALIBRATION = 64


def finetuned_name(base: str) -> str:
    return f"{base}-ft"


def wiseft_name(base: str, alpha: float) -> str:
    return f"{base}-wiseft-{alpha:g}"


def layers_at_depths(layers: Sequence[str], depths: Sequence[float]) -> list[str]:
    """The layer at each relative depth (0: the first, 1: the last), rounding to the nearest layer.

    >>> layers_at_depths(["a", "b", "c", "d", "e"], [0.0, 0.5, 1.0])
    ['a', 'c', 'e']
    """
    return [layers[round(depth * (len(layers) - 1))] for depth in depths]


def _absolute(path: str | os.PathLike) -> str:
    return str(Path(path).expanduser().absolute())


def demo_models(pool: DemoPool, finetuned: Mapping[str, str | os.PathLike],
                interpolated: Mapping[tuple[str, float], str | os.PathLike]) -> list[dict[str, str]]:
    """The pool's model entries.

    Args:
        pool: which models.
        finetuned: base name -> its finetuned ``model.safetensors``.
        interpolated: (base name, alpha) -> its Wise-FT checkpoint.
    """
    models = []
    for name in pool.pretrained:
        model = PRETRAINED[name]
        models.append({"name": name, "spec": model.spec, "backbone": model.backbone, "pretraining": "imagenet-1k",
                       "kind": "zero-shot"})
        if name in pool.finetuned:
            models.append({"name": finetuned_name(name), "spec": f"{model.spec}@{_absolute(finetuned[name])}",
                           "backbone": model.backbone, "pretraining": "imagenet-1k", "kind": "finetuned"})
            models += [{"name": wiseft_name(name, alpha),
                        "spec": f"{model.spec}@{_absolute(interpolated[(name, alpha)])}", "backbone": model.backbone,
                        "pretraining": f"wise-ft {alpha:g}", "kind": "finetuned"} for alpha in pool.alphas]
    models.append({"name": RANDOM, "spec": RANDOM_SPEC, "backbone": "MobileNetV2", "pretraining": "random-init",
                   "kind": "zero-shot"})
    return models


def weight_groups(pool: DemoPool) -> list[list[str]]:
    """The models that share weights: each finetuned base with its finetuned copy and Wise-FT models."""
    return [[base, finetuned_name(base), *(wiseft_name(base, alpha) for alpha in pool.alphas)]
            for base in pool.finetuned]


def demo_config(data: DemoData, out_dir: str | os.PathLike, *, pool: DemoPool, finetuned: Mapping[str, Any],
                interpolated: Mapping[tuple[str, float], Any], device: str = "cpu",
                description: str | None = None) -> dict[str, Any]:
    """The demo's study config (a mapping for :func:`~robustsig.study.config.validate_study_config`).

    Args:
        data: the built demo data (:func:`~robustsig.demo.build.build_demo_data`).
        out_dir: the study's output folder (``results/``, ``report/``; the activation store in ``store/``).
        pool: which models (:data:`POOLS`).
        finetuned: base name -> its finetuned ``model.safetensors``.
        interpolated: (base name, alpha) -> its Wise-FT checkpoint.
        device: where to extract (the demo is sized for the CPU).
        description: the note the report shows at its top (what the data is).

    Returns:
        The config as plain data (absolute paths), ready to validate, run or dump as YAML.
    """
    out = Path(out_dir).expanduser().absolute()
    class_map = {"class_map": str(data.class_map_path)}
    first = pool.finetuned[0]
    cross = PRETRAINED[pool.cka_pair]
    config: dict[str, Any] = {
        "version": 1,
        "output_dir": str(out),
        "store_dir": str(out / "store"),
        "device": device,
        "batch_size": 16,
        "workers": 0,
        "autocast": "none",
        "models": demo_models(pool, finetuned, interpolated),
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
            "concepts": {"threshold": 0.9, "min_positives": MIN_POSITIVES, "bases": ["singular", "neuron"],
                         "top_k": 3, "orientation": "positive", "venn_groups": [[first, finetuned_name(first), RANDOM]],
                         "permutations": pool.permutations, "alpha": 0.05},
            "cka": {"estimator": CKA_ESTIMATOR, "dataset": ID_SET, "pairs": [
                {"model_a": first, "model_b": finetuned_name(first), "layers": "all"},
                {"model_a": first, "model_b": cross.name,
                 "layers": layers_at_depths(PRETRAINED[first].layers, DEPTHS),
                 "layers_b": layers_at_depths(cross.layers, DEPTHS)},
            ]},
            "wiseft": {"alphas": [0.0, 0.5, 1.0], "pairs": [
                {"name": f"{base}-wiseft", "zero_shot": base, "finetuned": finetuned_name(base)}
                for base in pool.finetuned]},
            "atlas": {},
            "predict_er": {"label_free": True, "groups": weight_groups(pool)},
            "layer_kurtosis": {"datasets": [ID_SET]},
            "lowrank": {"models": [pool.lowrank], "datasets": [ID_SET], "fractions": list(pool.lowrank_fractions),
                        "orders": ["importance", "singular"], "calibration_images": LOWRANK_CALIBRATION},
        },
    }
    if description is not None:
        config["description"] = description
    return config
