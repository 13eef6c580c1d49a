"""Write small Broden-format folders (index.csv, label.csv, category.csv, c_*.csv, real JPEGs and label PNGs) for
the tests that read concept data: the Broden reader's and the study runner's."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from imagefiles import write_image

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
# number, name, category cell of label.csv; 7 is listed in no c_*.csv; 300 needs the green channel (44 + 256)
LABELS = [(1, "red-c", "color(1)"), (2, "sky", "object(1)"), (3, "tree", "object(1);part(1)"),
          (4, "wood", "material(1)"), (5, "leg", "part(1)"), (6, "striped", "texture(2)"), (7, "unused", "scene(0)"),
          (8, "kitchen", "scene(1)"), (300, "kitchen-island", "object(1)")]
COVERAGE = {"color": {1: 0.2}, "object": {2: 0.5, 3: 5.0, 300: 0.1}, "part": {3: 1.0, 5: 0.3},
            "material": {4: 0.4}, "scene": {8: 1.0}, "texture": {6: 1.0}}


def label_png(path: Path, numbers: list[int], size: tuple[int, int] = (6, 4)) -> None:
    """A label PNG whose pixels hold the label ``numbers`` (as R + 256 G), one pixel each."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for k, n in enumerate(numbers):
        pixels[k % size[1], k // size[1]] = (n % 256, n // 256, 0)
    Image.fromarray(pixels).save(path)


def write_broden(root: Path, rows, draw: Callable[[Path, int], object] | None = None) -> Path:
    """A Broden folder in ``root`` with the concepts of :data:`LABELS`.

    Args:
        rows: (image name, split, {category: cell}) with cells like ``"x_part_1.png;x_part_2.png"`` (label PNGs
            written beforehand with :func:`label_png`) or ``"8;6"`` (image-level label numbers).
        draw: writes the k-th image at a path (default: random pixels, 8 x 6).
    """
    draw = draw or (lambda path, k: write_image(path, seed=k, size=(8, 6)))
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "index.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES])
        for k, (name, split, cells) in enumerate(rows):
            draw(root / "images" / name, k)
            writer.writerow([name, split, 6, 8, 4, 6, *(cells.get(c, "") for c in CATEGORIES)])
    with open(root / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        writer.writerow([0, "-", "", 0, 0, ""])
        for number, name, category in LABELS:
            writer.writerow([number, name, category, 1, 0.5, ""])
    with open(root / "category.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "first", "last", "count", "frequency"])
        for c in CATEGORIES:
            writer.writerow([c, 1, 300, len(COVERAGE[c]), 1])
    for c in CATEGORIES:
        with open(root / f"c_{c}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, (number, cov) in enumerate(COVERAGE[c].items(), start=1):
                writer.writerow([code, number, dict((n, m) for n, m, _ in LABELS)[number], 1, cov])
    return root
