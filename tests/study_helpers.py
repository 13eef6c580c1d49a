"""A tiny study written in a temporary folder, for the ``study run`` tests: real image files in class folders (an id
set and two shift sets, one holding a truncated JPEG), a Broden folder whose images are tinted by the concepts they
show, 5-class checkpoints of a timm test model, and the study config naming them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broden_helpers import write_broden  # noqa: E402
from imagefiles import write_image, write_truncated_jpeg  # noqa: E402

CLASSES = 5
# Broden label number -> (category column, tint of the images showing it)
CONCEPT_TINTS = {1: ("color", (230, 40, 40)), 2: ("object", (40, 90, 230)), 4: ("material", (150, 95, 40)),
                 6: ("texture", (30, 200, 60)), 8: ("scene", (220, 220, 60))}


def write_folder(root: Path, per_class: int, seed: int, corrupt: tuple[int, ...] = ()) -> Path:
    """``per_class`` real images (PNG and JPEG) in each of the class folders ``c0 .. c4``; the images numbered in
    ``corrupt`` are truncated JPEGs."""
    for label in range(CLASSES):
        for i in range(per_class):
            number = label * per_class + i
            if number in corrupt:
                write_truncated_jpeg(root / f"c{label}" / f"{i:03d}.jpg", seed=seed + number)
            else:
                write_image(root / f"c{label}" / f"{i:03d}.{'png' if i % 2 else 'jpg'}", seed=seed + number)
    return root


def write_concept_folder(root: Path, images: int = 40, seed: int = 0) -> Path:
    """A Broden folder of ``images`` images, each showing each concept of :data:`CONCEPT_TINTS` with probability
    0.45 (image-level labels), its pixels the mean tint of its concepts plus noise."""
    rng = np.random.default_rng(seed)
    shown = [[number for number in CONCEPT_TINTS if rng.random() < 0.45] for _ in range(images)]
    rows = []
    for k, numbers in enumerate(shown):
        cells: dict[str, str] = {}
        for number in numbers:
            column = CONCEPT_TINTS[number][0]
            cells[column] = ";".join(filter(None, [cells.get(column, ""), str(number)]))
        rows.append((f"img/{k:03d}.jpg", "train", cells))

    def draw(path: Path, k: int) -> None:
        tints = [CONCEPT_TINTS[number][1] for number in shown[k]] or [(128, 128, 128)]
        noise = np.random.default_rng(1000 + k).integers(-40, 41, size=(32, 40, 3))
        pixels = np.clip(np.mean(tints, axis=0) + noise, 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    return write_broden(root, rows, draw)


def write_checkpoint(path: Path, arch: str, seed: int) -> Path:
    """A robustsig checkpoint of ``timm:ARCH`` with random weights (drawn from ``seed``) and a 5-class head."""
    import robustsig as rs
    from robustsig.train.start import scratch_start

    classes = SimpleNamespace(classnames=[f"c{i}" for i in range(CLASSES)], root=None)
    return rs.save_classifier(scratch_start(f"timm:{arch}", classes, device="cpu", seed=seed), path)


def build_world(root: Path) -> Path:
    """Write the datasets and checkpoints of the study under ``root``; returns ``root``."""
    write_folder(root / "data" / "id", per_class=6, seed=0)
    write_folder(root / "data" / "shift-a", per_class=4, seed=100, corrupt=(3,))
    write_folder(root / "data" / "shift-b", per_class=4, seed=200)
    write_concept_folder(root / "data" / "broden" / "broden1_224")
    write_checkpoint(root / "ckpt" / "zs.safetensors", "test_vit", seed=1)
    write_checkpoint(root / "ckpt" / "ft.safetensors", "test_vit", seed=2)
    return root


def study_data(root: Path, **analyses: Any) -> dict[str, Any]:
    """The config of the tiny study (paths relative to ``root``, where it is written); ``analyses`` replace the
    default analysis sections (every analysis, on small settings)."""
    sections: dict[str, Any] = {
        "accuracy": None, "kurtosis": None, "importance": {"privileged_ratio": 3.0},
        "pruning": {"fractions": [0.0, 0.25, 0.5, 0.75], "orders": ["singular", "importance", "random"]},
        "concepts": {"threshold": 0.8, "min_positives": 4, "permutations": 999},
        "cka": {"pairs": [{"model_a": "zs", "model_b": "ctrl", "layers": "all"},
                          {"model_a": "zs", "model_b": "ft", "cross": True}], "minibatch": 8},
        "wiseft": {"pairs": [{"zero_shot": "zs", "finetuned": "ft"}], "alphas": [0.0, 0.5, 1.0]},
        "layer_kurtosis": {"models": ["zs"], "datasets": ["photos"]},
        "atlas": {"directions": 2, "images": 3},
        "predict_er": {"resamples": 200},
    }
    sections.update(analyses)
    return {
        "output_dir": "out", "store_dir": "store", "device": "cpu", "batch_size": 16, "workers": 0,
        "models": [
            {"name": "zs", "spec": "timm:test_vit@ckpt/zs.safetensors", "backbone": "tiny-vit",
             "pretraining": "synthetic", "kind": "zero-shot"},
            {"name": "ft", "spec": "timm:test_vit@ckpt/ft.safetensors", "backbone": "tiny-vit",
             "pretraining": "synthetic", "kind": "finetuned"},
            {"name": "ctrl", "spec": "timm:test_convnext", "backbone": "tiny-vit", "pretraining": "random-init",
             "kind": "supervised"},
            {"name": "mnv2", "spec": "bundled:mobilenet_v2", "backbone": "MobileNetV2", "pretraining": "imagenet-1k",
             "kind": "supervised"},
        ],
        "datasets": {
            "id": {"name": "photos", "kind": "folder", "root": "data/id"},
            "shift": [{"name": "shift-a", "kind": "folder", "root": "data/shift-a"},
                      {"name": "shift-b", "kind": "folder", "root": "data/shift-b"}],
            "broden": {"root": "data/broden", "options": {"cache_dir": str(root / "broden-cache"), "workers": 0}},
        },
        "analyses": sections,
    }


def write_config(root: Path, data: dict[str, Any], name: str = "study.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextmanager
def counting_forwards() -> Iterator[list[int]]:
    """Count the images every classifier forward pass sees."""
    from robustsig.models.classifier import Classifier

    images: list[int] = []
    original = Classifier.forward_with_layers

    def counted(self, x, *args, **kwargs):
        images.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Classifier, "forward_with_layers", counted)
        yield images
