"""Synthetic paper-scale inputs for ``bench_scale``: dataset folders in their real layouts (empty image files: the
study's keys read file lists, never pixels), Broden's CSVs, and activation stores written in the real store format.

Sizes at ``scale`` 1 (the paper's): ImageNet val 50,000, V2 10,000, R 30,000 (200 classes), Sketch 50,889,
ObjectNet 18,574 (113 classes mapped to ImageNet), A 7,500 (200 classes); Broden 63,305 images x 1,197 concepts.
Every count is multiplied by ``scale`` (rounded, at least one image per class kept where the layout needs it).

Broden concept frequencies are heavy-tailed: concept of rank ``r`` (1..1,197) is present in
``round(scale * 30,000 * r**-1.1)`` images (at least 1), a Zipf law with exponent 1.1: at full size the most
frequent concept is in 30,000 images, the 10th in 2,383, the 100th in 189, the 1,197th in 12; about 2.8 concepts
per image. Concepts are image-level labels in the six Broden category columns.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

PAPER_SIZES = {"imagenet": 50_000, "imagenet-v2": 10_000, "imagenet-r": 30_000, "imagenet-sketch": 50_889,
               "objectnet": 18_574, "imagenet-a": 7_500}
BRODEN_IMAGES, BRODEN_CONCEPTS = 63_305, 1_197
ZIPF_TOP, ZIPF_EXPONENT = 30_000, 1.1
BRODEN_CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
OBJECTNET_CLASSES = 113


def _resource(name: str) -> list[str]:
    import robustsig

    return (Path(robustsig.__file__).parent / "resources" / name).read_text().split()


def _touch_files(folder: Path, count: int, suffix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        os.close(os.open(folder / f"{i:06d}{suffix}", os.O_CREAT | os.O_WRONLY, 0o644))


def _spread(total: int, classes: int) -> list[int]:
    """``total`` images over ``classes`` folders, as evenly as possible, at least one each."""
    total = max(total, classes)
    return [total // classes + (1 if k < total % classes else 0) for k in range(classes)]


def write_image_sets(root: Path, scale: float) -> dict[str, Path]:
    """The six ImageNet-family folders; returns kind -> root (written once per scale, marked done by a file)."""
    roots = {"imagenet": root / "imagenet-val", "imagenet-v2": root / "imagenetv2",
             "imagenet-r": root / "imagenet-r", "imagenet-sketch": root / "imagenet-sketch",
             "objectnet": root / "objectnet-1.0", "imagenet-a": root / "imagenet-a"}
    done = root / ".images-done"
    if done.is_file():
        return roots
    wnids = _resource("imagenet_wnids.txt")
    sized = {kind: round(scale * n) for kind, n in PAPER_SIZES.items()}
    for kind, folders in (("imagenet", wnids), ("imagenet-sketch", wnids),
                          ("imagenet-r", _resource("imagenet_r_wnids.txt")),
                          ("imagenet-a", _resource("imagenet_a_wnids.txt"))):
        for wnid, count in zip(folders, _spread(sized[kind], len(folders))):
            _touch_files(roots[kind] / wnid, count, ".JPEG")
    for index, count in enumerate(_spread(sized["imagenet-v2"], 1000)):
        _touch_files(roots["imagenet-v2"] / str(index), count, ".jpeg")
    _write_objectnet(roots["objectnet"], sized["objectnet"])
    done.touch()
    return roots


def _write_objectnet(root: Path, count: int) -> None:
    """113 mapped folders (class k stands for ImageNet classes 8k, and 8k+1 for every 9th k: 125 ids, as the real
    map has) plus one unmapped folder, with the four mapping files of the download."""
    mappings = root / "mappings"
    mappings.mkdir(parents=True, exist_ok=True)
    names = [f"imagenet class {i}" for i in range(1000)]
    (mappings / "imagenet_to_label_2012_v2").write_text("\n".join(names) + "\n")
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): i for i in range(1000)}))
    folders = {f"folder_{k:03d}": f"Label {k}" for k in range(OBJECTNET_CLASSES)} | {"unmapped": "Unmapped"}
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(folders))
    label_map = {f"Label {k}": "; ".join(names[8 * k + j] for j in range(2 if k % 9 == 0 else 1))
                 for k in range(OBJECTNET_CLASSES)}
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(label_map))
    for k, images in enumerate(_spread(count, OBJECTNET_CLASSES)):
        _touch_files(root / "images" / f"folder_{k:03d}", images, ".png")
    _touch_files(root / "images" / "unmapped", 3, ".png")


def concept_frequencies(scale: float) -> np.ndarray:
    """Images per concept, by rank (see the module notes)."""
    ranks = np.arange(1, BRODEN_CONCEPTS + 1, dtype=np.float64)
    return np.maximum(1, np.round(scale * ZIPF_TOP * ranks ** -ZIPF_EXPONENT)).astype(np.int64)


def write_broden(root: Path, scale: float, seed: int = 0) -> Path:
    """A Broden folder (NetDissect's CSVs) whose concepts are image-level labels with Zipf frequencies."""
    folder = root / "broden1_224"
    if (folder / "index.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    images = max(1, round(scale * BRODEN_IMAGES))
    rng = np.random.default_rng(seed)
    frequency = np.minimum(concept_frequencies(scale), images)
    category = np.arange(BRODEN_CONCEPTS) % len(BRODEN_CATEGORIES)
    cells: list[list[list[str]]] = [[[] for _ in BRODEN_CATEGORIES] for _ in range(images)]
    for concept in range(BRODEN_CONCEPTS):
        for image in rng.choice(images, size=int(frequency[concept]), replace=False):
            cells[image][category[concept]].append(str(concept + 1))
    with open(folder / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "split", "ih", "iw", "sh", "sw", *BRODEN_CATEGORIES])
        for n, row in enumerate(cells):
            writer.writerow([f"img/{n:06d}.jpg", "train" if n % 5 else "val", 224, 224, 112, 112,
                             *(";".join(cell) for cell in row)])
    with open(folder / "label.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for concept in range(BRODEN_CONCEPTS):
            writer.writerow([concept + 1, f"concept-{concept + 1}",
                             f"{BRODEN_CATEGORIES[category[concept]]}({frequency[concept]})", frequency[concept],
                             1.0, ""])
    with open(folder / "category.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "first", "last", "count", "frequency"])
        for c, name in enumerate(BRODEN_CATEGORIES):
            members = np.flatnonzero(category == c) + 1
            writer.writerow([name, members.min(), members.max(), len(members), int(frequency[members - 1].sum())])
    for c, name in enumerate(BRODEN_CATEGORIES):
        with open(folder / f"c_{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, number in enumerate(np.flatnonzero(category == c) + 1, start=1):
                writer.writerow([code, number, f"concept-{number}", frequency[number - 1], 1.0])
    return folder


# --- activations -------------------------------------------------------------------------------------------
def _generator(*parts: Any) -> torch.Generator:
    import hashlib

    seed = int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big") >> 1
    return torch.Generator().manual_seed(seed)


def synthetic_head(model: str, width: int, classes: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, class_means)``: class means in ``width`` dims and the head reading them (unit rows)."""
    g = _generator("head", model)
    means = torch.randn(classes, width, generator=g)
    W = means / means.norm(dim=1, keepdim=True)
    return W, means


def outlier_dims(model: str, width: int, kind: str) -> tuple[torch.Tensor, float]:
    """The planted outlier dimensions and their scale: zero-shot models have 8 dims at 12x the typical scale,
    finetuned 4 at 6x, supervised 2 at 3x (the paper's ordering of kurtosis)."""
    count, factor = {"zero-shot": (8, 12.0), "finetuned": (4, 6.0)}.get(kind, (2, 3.0))
    g = _generator("outliers", model)
    return torch.randperm(width, generator=g)[:count], factor


def activations(model: str, kind: str, dataset: str, ids: torch.Tensor, classes: torch.Tensor, means: torch.Tensor,
                noise: float) -> torch.Tensor:
    """``h`` of the rows ``ids``: the class mean plus Gaussian noise, times heavy-tailed factors on the planted
    outlier dimensions (Student-t with 3 degrees of freedom), reproducible per (model, dataset, rows)."""
    g = _generator("h", model, dataset, int(ids[0]) if len(ids) else 0)
    h = means[classes] + noise * torch.randn(len(ids), means.shape[1], generator=g)
    dims, factor = outlier_dims(model, means.shape[1], kind)
    t = torch.randn(len(ids), len(dims), generator=g) / torch.sqrt(
        torch.distributions.Chi2(torch.tensor(3.0)).sample((len(ids), 1)) / 3)
    h[:, dims] = factor * t
    return h


def layer_activations(pair: str, layer_index: int, layers: int, width: int, model_is_b: bool, ids: torch.Tensor,
                      dataset: str) -> torch.Tensor:
    """A CKA layer of one model of a pair: a shared signal plus, for model b, noise growing with depth (so CKA
    falls from ~1 at the first layer towards the last, as between a zero-shot model and its finetuned copy)."""
    g = _generator("layer", pair, dataset, layer_index, int(ids[0]) if len(ids) else 0)
    shared = torch.randn(len(ids), width, generator=g)
    if not model_is_b:
        return shared
    depth = layer_index / max(1, layers - 1)
    g_b = _generator("layer-b", pair, dataset, layer_index, int(ids[0]) if len(ids) else 0)
    return shared + (0.1 + 1.5 * depth) * torch.randn(len(ids), width, generator=g_b)
