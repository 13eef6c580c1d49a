"""What dividing ``h`` by its norm does to the study's measurements, on a real ImageNet model and real photos.

CLIP models in robustsig have ``h = z / ||z||``; torchvision, timm and bundled models have a raw ``h``. This module
measures, on ``bundled:mobilenet_v2`` (torchvision's ImageNet weights) and crops of the photos that ship with
scikit-image, scikit-learn and foolbox, every metric of the study on ``h`` and on ``h / ||h||``:

- kurtosis (eq. 2) and importance (eq. 4): the same (each vector is standardised by its own scale; ``|cos|``);
- concept AP (section 4) on the head's right singular vectors and on the neurons: not the same, because the score
  ``h . v_i = ||h|| cos(v_i, h)`` carries each image's norm into every direction's ranking.

The concept set is built the way Broden's is, at a small scale: each photo is cut into square crops (the whole
photo, a 2 x 2 grid of crops 0.6 of its shorter side, a 3 x 3 grid of crops 0.4 of it; the first two only for
foolbox's ImageNet photos, whose label is for the whole photo); a crop shows an object
concept when it holds half of one of the object's hand-marked boxes (:data:`robustsig.demo.sources.PHOTOS`) or the
box fills a quarter of the crop; every crop of a texture photo shows its texture; every crop of one of foolbox's
ImageNet validation photos shows its class's group (dog, bird, insect, jeep, and animal for all of them and the
cat). Each concept with at least ``MIN_POSITIVES`` positive crops gets a balanced set (its positives and as many
negatives drawn with a fixed seed), as :meth:`robustsig.data.broden.BrodenDataset.balanced_sets` does.

``tests/test_h_scale.py`` asserts the invariances and the differences; ``docs/h.md`` quotes the numbers this module
prints::

    PYTHONPATH=src python tests/h_scale_example.py
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import robustsig as rs
from robustsig.demo.sources import PHOTOS, TEXTURES, load_image

MODEL = "bundled:mobilenet_v2"
GRIDS = ((1.0, 1), (0.6, 2), (0.4, 3))
"""Crop side (a fraction of the photo's shorter side) and crops per axis: 14 crops of each photo and texture."""
IMAGENET_GRIDS = GRIDS[:2]
"""5 crops of each ImageNet photo (its label is for the whole photo; smaller crops could miss the object)."""
MIN_POSITIVES = 6
THRESHOLDS = (0.8, 0.85, 0.9, 0.95)
SEED = 0
IMAGENET_GROUPS = {"dog": (243, 251), "bird": (22, 99, 129), "insect": (305, 317), "jeep": (609,)}
"""Concepts of foolbox's ImageNet validation photos, by their ImageNet-1k class (each photo's name holds it)."""
ANIMALS = ("dog", "bird", "insect")


@dataclass(frozen=True)
class ConceptSet:
    """Crops of real photos and the concepts each shows: ``images`` (PIL), ``labels`` (N x C bool), ``names``."""

    images: list[Image.Image]
    labels: np.ndarray
    names: list[str]


def _grid(width: int, height: int, grids=GRIDS) -> list[tuple[int, int, int, int]]:
    boxes = []
    for fraction, per_axis in grids:
        side = round(fraction * min(width, height))
        for row in range(per_axis):
            for col in range(per_axis):
                left = 0 if per_axis == 1 else round(col * (width - side) / (per_axis - 1))
                top = 0 if per_axis == 1 else round(row * (height - side) / (per_axis - 1))
                boxes.append((left, top, left + side, top + side))
    return boxes


def _area(box: tuple[int, int, int, int]) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _shows(crop: tuple[int, int, int, int], boxes: tuple[tuple[int, int, int, int], ...]) -> bool:
    for box in boxes:
        inside = _area((max(crop[0], box[0]), max(crop[1], box[1]), min(crop[2], box[2]), min(crop[3], box[3])))
        if inside >= 0.5 * _area(box) or inside >= 0.25 * _area(crop):
            return True
    return False


def _imagenet_photos() -> list[tuple[Path, int]]:
    folder = _foolbox_data()
    return sorted((path, int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", path.name).group(1)))
                  for path in folder.glob("imagenet_*_*.jpg"))


def _foolbox_data() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps foolbox==3.3.4"
    return Path(spec.submodule_search_locations[0]) / "data"


def concept_set() -> ConceptSet:
    """The crops and their concepts (see the module notes)."""
    shown: list[set[str]] = []
    images: list[Image.Image] = []

    def add(image: Image.Image, concepts_of, grids=GRIDS) -> None:
        for crop in _grid(*image.size, grids):
            images.append(image.crop(crop))
            shown.append(concepts_of(crop))

    for photo in PHOTOS.values():
        add(load_image(photo), lambda crop, p=photo: {name for name, boxes in p.objects.items() if _shows(crop, boxes)})
    for texture in TEXTURES.values():
        add(load_image(texture), lambda crop, name=texture.name: {name})
    for path, label in _imagenet_photos():
        groups = {group for group, ids in IMAGENET_GROUPS.items() if label in ids}
        groups |= {"animal"} if groups & set(ANIMALS) else set()
        with Image.open(path) as opened:
            add(opened.convert("RGB"), lambda crop, g=frozenset(groups): set(g), IMAGENET_GRIDS)
    for k, concepts in enumerate(shown):  # the cat of chelsea is an animal too
        if "cat" in concepts:
            shown[k] = concepts | {"animal"}
    names = sorted({name for concepts in shown for name in concepts})
    labels = np.array([[name in concepts for name in names] for concepts in shown])
    keep = labels.sum(axis=0) >= MIN_POSITIVES
    return ConceptSet(images, labels[:, keep], [n for n, k in zip(names, keep) if k])


def balanced_sets(labels: np.ndarray, seed: int = SEED) -> list[np.ndarray]:
    """Per concept, the row indices of its positives and as many negatives (all of them if fewer), drawn with
    ``seed``."""
    rng = np.random.default_rng(seed)
    sets = []
    for c in range(labels.shape[1]):
        positives = np.flatnonzero(labels[:, c])
        negatives = np.flatnonzero(~labels[:, c])
        chosen = rng.choice(negatives, size=min(len(positives), len(negatives)), replace=False)
        sets.append(np.sort(np.concatenate([positives, chosen])))
    return sets


def encode(clf: rs.Classifier, images: list[Image.Image], batch_size: int = 8) -> torch.Tensor:
    """``h`` of every image (float32, N x d), in eval mode without gradients (small batches: large ones spend
    more time in page faults than in the convolutions on a CPU)."""
    clf.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.stack([clf.preprocess(image) for image in images[start:start + batch_size]])
            parts.append(clf.encode(x))
    return torch.cat(parts)


def unit_rows(h: torch.Tensor) -> torch.Tensor:
    """``h / ||h||`` row by row, in float64."""
    h = h.double()
    return h / h.pow(2).sum(dim=1, keepdim=True).sqrt()


def random_row_scales(rows: int, seed: int = SEED) -> torch.Tensor:
    """``rows x 1`` float64 factors drawn log-uniformly in [0.01, 100]."""
    generator = torch.Generator().manual_seed(seed)
    exponent = torch.empty(rows, 1, dtype=torch.float64).uniform_(math.log(0.01), math.log(100.0), generator=generator)
    return exponent.exp()


def ap_matrix(scores: torch.Tensor, labels: np.ndarray, sets: list[np.ndarray], orientation: str) -> torch.Tensor:
    """The C x D AP matrix of ``scores`` (N x D) on the balanced per-concept sets."""
    return rs.average_precision_matrix([scores[torch.from_numpy(rows)] for rows in sets],
                                       [torch.from_numpy(labels[rows, c]) for c, rows in enumerate(sets)],
                                       orientation=orientation)


def measure(h: torch.Tensor, W: torch.Tensor, concepts: ConceptSet) -> dict:
    """Every number ``docs/h.md`` quotes, from ``h`` (N x d) of the crops of ``concepts`` and the head ``W``:
    kurtosis, importance, AP and concept counts on ``h`` and on ``h / ||h||`` (all in float64)."""
    h, W = h.double(), W.detach().double()
    hn = unit_rows(h)
    svd = rs.head_svd(W)
    V = svd.V
    sets = balanced_sets(concepts.labels)
    norms = h.pow(2).sum(dim=1).sqrt()
    result = {
        "images": len(h), "concepts": len(concepts.names), "d": h.shape[1], "directions": V.shape[1],
        "positives": dict(zip(concepts.names, concepts.labels.sum(axis=0).tolist())),
        "norm_mean": float(norms.mean()), "norm_cv": float(norms.std() / norms.mean()),
        "kurtosis": {"h": rs.activation_kurtosis(h), "h/||h||": rs.activation_kurtosis(hn),
                     "c*h": rs.activation_kurtosis(random_row_scales(len(h)) * h)},
        "cka_h_vs_unit": float(rs.cka(h, hn)),
    }
    importance, importance_unit = rs.direction_importance(svd, h), rs.direction_importance(svd, hn)
    result["importance"] = {"max_relative_difference": float(((importance - importance_unit).abs()
                                                               / importance).max()),
                            "most_important": (int(importance.argmax()), int(importance_unit.argmax()))}
    norm_ap = ap_matrix(norms[:, None], concepts.labels, sets, "positive")[:, 0]
    result["norm_alone_ap"] = dict(zip(concepts.names, norm_ap.tolist()))
    result["ap"] = {}
    for basis, (raw, unit) in {"singular": (h @ V, hn @ V), "neuron": (h, hn)}.items():
        for orientation in ("positive", "both"):
            a, b = (ap_matrix(scores, concepts.labels, sets, orientation) for scores in (raw, unit))
            entry = {"matrices": (a, b), "mean_abs_difference": float((a - b).abs().mean()),
                     "max_abs_difference": float((a - b).abs().max()),
                     "pairs_moved_over_0.05": int(((a - b).abs() > 0.05).sum()), "pairs": a.numel(),
                     "best_direction_changed": int((a.argmax(dim=1) != b.argmax(dim=1)).sum())}
            for threshold in THRESHOLDS:
                sa, sb = (rs.concept_summary(m, threshold, concepts.names) for m in (a, b))
                entry[threshold] = {
                    "unique": (sa.unique_concepts, sb.unique_concepts),
                    "polysemanticity": (sa.polysemanticity, sb.polysemanticity),
                    "encoded_pairs": (int(sa.encoded.sum()), int(sb.encoded.sum())),
                    "only_h": sorted(sa.concept_set() - sb.concept_set()),
                    "only_unit": sorted(sb.concept_set() - sa.concept_set())}
            result["ap"][f"{basis}/{orientation}"] = entry
    return result


def measure_model(spec: str = MODEL) -> dict:
    """:func:`measure` on the model ``spec`` and :func:`concept_set`."""
    clf = rs.load_classifier(spec, device="cpu")
    concepts = concept_set()
    return {"model": spec, **measure(encode(clf, concepts.images), clf.W, concepts)}


def _print(result: dict) -> None:
    print(f"{result['model']}: {result['images']} crops, {result['concepts']} concepts, d = {result['d']}, "
          f"{result['directions']} singular directions; ||h|| mean {result['norm_mean']:.2f}, "
          f"coefficient of variation {result['norm_cv']:.3f}; linear CKA(h, h/||h||) = {result['cka_h_vs_unit']:.4f}")
    print("positives per concept:", result["positives"])
    kurtosis = result["kurtosis"]
    print("kurtosis:", {k: f"{v:.12f}" for k, v in kurtosis.items()},
          f"largest difference {max(kurtosis.values()) - min(kurtosis.values()):.1e}")
    print(f"importance: max relative difference {result['importance']['max_relative_difference']:.1e}, "
          f"most important direction {result['importance']['most_important']}")
    print("AP of ||h|| alone:", {k: round(v, 3) for k, v in result["norm_alone_ap"].items()})
    print("| basis / orientation | threshold | unique concepts h -> h/||h|| | polysemanticity | encoded pairs | "
          "only with h | only with h/||h|| |")
    print("|---|---|---|---|---|---|---|")
    for key, entry in result["ap"].items():
        for threshold in THRESHOLDS:
            t = entry[threshold]
            print(f"| {key} | {threshold} | {t['unique'][0]} -> {t['unique'][1]} | {t['polysemanticity'][0]:.4f} -> "
                  f"{t['polysemanticity'][1]:.4f} | {t['encoded_pairs'][0]} -> {t['encoded_pairs'][1]} | "
                  f"{', '.join(t['only_h']) or '-'} | {', '.join(t['only_unit']) or '-'} |")
        print(f"|   {key}: mean |dAP| {entry['mean_abs_difference']:.4f}, max {entry['max_abs_difference']:.4f}, "
              f"{entry['pairs_moved_over_0.05']} of {entry['pairs']} pairs moved > 0.05, best direction changed "
              f"for {entry['best_direction_changed']} concepts |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    _print(measure_model())
