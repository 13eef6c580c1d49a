"""The demo's concept set in the Broden on-disk format (NetDissect's ``broden1_224``, read by
:func:`robustsig.data.broden.open_broden`), and the colour naming behind its pixel-level colour concepts.

- ``color`` concepts are pixel-level, like Broden's: every pixel of the label map (half the image's size, as
  broden1_224's 112 px maps for 224 px images) is named one of Broden's 11 colours by :func:`name_colors`; a colour
  covering less than :data:`MIN_COLOR_FRACTION` of the map is left unlabelled (0) in that image, so a few stray
  pixels never make an image a positive. The PNG stores label numbers as ``R + 256 * G``.
- ``object`` and ``texture`` concepts are image-level (label numbers in the ``index.csv`` cell).

>>> import numpy as np
>>> [COLOR_NAMES[i] for i in name_colors(np.array([[[255, 0, 0], [0, 0, 255], [250, 250, 250]]], np.uint8))[0]]
['red', 'blue', 'white']
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

COLOR_NAMES: tuple[str, ...] = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red",
                                "white", "yellow")
"""Broden's colour concepts, in its order."""
CATEGORIES: tuple[str, ...] = ("color", "object", "texture")
MIN_COLOR_FRACTION = 0.02
"""A colour must name at least this fraction of an image's pixels to be labelled in it."""
JPEG_QUALITY = 92


def name_colors(rgb: np.ndarray) -> np.ndarray:
    """Name every pixel one of :data:`COLOR_NAMES` (returns indices into it, the shape of ``rgb`` without its last
    axis).

    Rules on value ``V = max(R, G, B) / 255``, saturation ``S = (max - min) / max`` and hue ``H`` (degrees):
    ``V < 0.2``: black; ``S < 0.2``: white if ``V >= 0.8``, else grey; otherwise by hue: red below 20 or from 330
    (pink when ``V > 0.8`` and ``S < 0.5``; brown when ``V < 0.45``), orange 20-45 (brown when ``V < 0.7``, or
    ``S < 0.5`` and ``V < 0.8``: tan),
    yellow 45-70 (brown when ``V < 0.45``), green 70-170, blue 170-260, purple 260-290, pink 290-330 (purple when
    ``V < 0.5``).

    Args:
        rgb: ``... x 3`` uint8 values.
    """
    values = np.asarray(rgb, np.float64) / 255.0
    top, bottom = values.max(axis=-1), values.min(axis=-1)
    chroma = top - bottom
    saturation = np.where(top > 0, chroma / np.maximum(top, 1e-12), 0.0)
    r, g, b = values[..., 0], values[..., 1], values[..., 2]
    safe = np.maximum(chroma, 1e-12)
    hue = np.select([top == r, top == g], [((g - b) / safe) % 6.0, (b - r) / safe + 2.0], (r - g) / safe + 4.0) * 60.0
    code = {name: k for k, name in enumerate(COLOR_NAMES)}
    red_hue = (hue < 20) | (hue >= 330)
    conditions = [
        top < 0.2,
        (saturation < 0.2) & (top >= 0.8),
        saturation < 0.2,
        red_hue & (top > 0.8) & (saturation < 0.5),
        red_hue & (top < 0.45),
        red_hue,
        (hue < 45) & ((top < 0.7) | ((saturation < 0.5) & (top < 0.8))),
        hue < 45,
        (hue < 70) & (top < 0.45),
        hue < 70,
        hue < 170,
        hue < 260,
        hue < 290,
        top < 0.5,
    ]
    choices = ["black", "white", "grey", "pink", "brown", "red", "brown", "orange", "brown", "yellow", "green",
               "blue", "purple", "purple"]
    return np.select(conditions, [code[c] for c in choices], code["pink"]).astype(np.int64)


def color_label_map(image: Image.Image, numbers: Sequence[int]) -> np.ndarray:
    """The colour label map of an image: half its size, each pixel the Broden label number of its colour
    (``numbers[k]`` for ``COLOR_NAMES[k]``), 0 where its colour covers less than :data:`MIN_COLOR_FRACTION`."""
    small = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BOX)
    names = name_colors(np.asarray(small))
    counts = np.bincount(names.ravel(), minlength=len(COLOR_NAMES))
    kept = np.asarray(numbers, np.int64) * (counts >= MIN_COLOR_FRACTION * names.size)
    return kept[names]


def encode_labels(labels: np.ndarray) -> Image.Image:
    """Label numbers as Broden's RGB PNG: ``R = n % 256``, ``G = n // 256``, ``B = 0``."""
    pixels = np.zeros((*labels.shape, 3), np.uint8)
    pixels[..., 0] = labels % 256
    pixels[..., 1] = labels // 256
    return Image.fromarray(pixels)


@dataclass
class _Row:
    image: str
    size: tuple[int, int]
    label_size: tuple[int, int]
    cells: dict[str, str]


@dataclass
class BrodenWriter:
    """Write images and their concepts as a Broden folder (``index.csv``, ``label.csv``, ``category.csv``,
    ``c_<category>.csv``, ``images/``).

    Args:
        root: the folder to write (created).
        concepts: category -> its concept names; label numbers are given in that order from 1 (colours first).

    Example:
        >>> import tempfile
        >>> writer = BrodenWriter(Path(tempfile.mkdtemp()) / "broden", {"color": COLOR_NAMES, "object": ["cat"]})
        >>> writer.add("photos/cat_000", Image.new("RGB", (8, 8), (200, 30, 30)), objects=["cat"])
        >>> positives = writer.finish()
        >>> positives["red"], positives["cat"], positives["blue"]
        (1, 1, 0)
    """

    root: Path
    concepts: Mapping[str, Sequence[str]]
    rows: list[_Row] = field(default_factory=list)
    frequency: dict[int, int] = field(default_factory=dict)
    coverage: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers: dict[tuple[str, str], int] = {}
        for category in CATEGORIES:
            for name in self.concepts.get(category, ()):
                self.numbers[(category, name)] = len(self.numbers) + 1
        (self.root / "images").mkdir(parents=True, exist_ok=True)

    def _count(self, number: int, fraction: float) -> None:
        self.frequency[number] = self.frequency.get(number, 0) + 1
        self.coverage[number] = self.coverage.get(number, 0.0) + fraction

    def add(self, stem: str, image: Image.Image, *, objects: Sequence[str] = (),
            textures: Sequence[str] = ()) -> None:
        """Write one image (``images/<stem>.jpg``), its colour label PNG (``images/<stem>_color.png``), and its
        image-level objects and textures."""
        (self.root / "images" / stem).parent.mkdir(parents=True, exist_ok=True)
        image.save(self.root / "images" / f"{stem}.jpg", quality=JPEG_QUALITY)
        colors = color_label_map(image, [self.numbers[("color", n)] for n in COLOR_NAMES])
        encode_labels(colors).save(self.root / "images" / f"{stem}_color.png")
        present, counts = np.unique(colors[colors > 0], return_counts=True)
        for number, count in zip(present.tolist(), counts.tolist()):
            self._count(number, count / colors.size)
        cells = {"color": f"{stem}_color.png"}
        for category, names in (("object", objects), ("texture", textures)):
            numbers = [self.numbers[(category, name)] for name in sorted(names)]
            for number in numbers:
                self._count(number, 1.0)
            cells[category] = ";".join(map(str, numbers))
        self.rows.append(_Row(f"{stem}.jpg", (image.height, image.width), colors.shape, cells))

    def finish(self) -> dict[str, int]:
        """Write the CSV files; returns each concept's number of positive images, by name."""
        with open(self.root / "index.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES])
            for row in self.rows:
                writer.writerow([row.image, "train", *row.size, *row.label_size,
                                 *(row.cells.get(c, "") for c in CATEGORIES)])
        by_category = {c: [(n, name) for (cat, name), n in self.numbers.items() if cat == c] for c in CATEGORIES}
        with open(self.root / "label.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
            writer.writerow([0, "-", "", 0, 0, ""])
            for (category, name), number in self.numbers.items():
                frequency = self.frequency.get(number, 0)
                writer.writerow([number, name, f"{category}({frequency})", frequency, self._coverage(number), ""])
        with open(self.root / "category.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["name", "first", "last", "count", "frequency"])
            for category in CATEGORIES:
                numbers = [n for n, _ in by_category[category]]
                images = sum(1 for row in self.rows if row.cells.get(category))
                writer.writerow([category, min(numbers, default=0), max(numbers, default=0), len(numbers), images])
        for category in CATEGORIES:
            with open(self.root / f"c_{category}.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(["code", "number", "name", "frequency", "coverage"])
                for code, (number, name) in enumerate(by_category[category], start=1):
                    writer.writerow([code, number, name, self.frequency.get(number, 0), self._coverage(number)])
        return {name: self.frequency.get(number, 0) for (_, name), number in self.numbers.items()}

    def _coverage(self, number: int) -> str:
        """Mean fraction of the image the concept covers where present (1 for image-level labels), 4 decimals."""
        frequency = self.frequency.get(number, 0)
        return f"{self.coverage.get(number, 0.0) / frequency:.4f}" if frequency else "0"
