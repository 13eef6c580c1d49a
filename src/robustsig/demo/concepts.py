"""The demo's concept set in the Broden on-disk format (NetDissect's ``broden1_224``, read by
:func:`robustsig.data.broden.open_broden`): image-level concepts only (label numbers in the ``index.csv`` cells),
images as PNG.

>>> import tempfile
>>> writer = BrodenWriter(Path(tempfile.mkdtemp()) / "broden", {"object": ["cat", "dog"]})
>>> writer.add("photos/cat_000", Image.new("RGB", (8, 8)), {"object": ["cat"]})
>>> writer.finish()
{'cat': 1, 'dog': 0}
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

CATEGORIES: tuple[str, ...] = ("object", "scene")


@dataclass
class _Row:
    image: str
    size: tuple[int, int]
    cells: dict[str, str]


@dataclass
class BrodenWriter:
    """Write images and their image-level concepts as a Broden folder (``index.csv``, ``label.csv``,
    ``category.csv``, ``c_<category>.csv``, ``images/``).

    Args:
        root: the folder to write (created).
        concepts: category (of :data:`CATEGORIES`) -> its concept names; label numbers are given in that order
            from 1.
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

    def add(self, stem: str, image: Image.Image, concepts: Mapping[str, Sequence[str]]) -> None:
        """Write one image (``images/<stem>.png``) and its concepts (category -> names)."""
        (self.root / "images" / stem).parent.mkdir(parents=True, exist_ok=True)
        image.save(self.root / "images" / f"{stem}.png")
        cells = {}
        for category in CATEGORIES:
            numbers = [self.numbers[(category, name)] for name in sorted(concepts.get(category, ()))]
            for number in numbers:
                self._count(number, 1.0)
            cells[category] = ";".join(map(str, numbers))
        self.rows.append(_Row(f"{stem}.png", (image.height, image.width), cells))

    def finish(self) -> dict[str, int]:
        """Write the CSV files; returns each concept's number of positive images, by name."""
        with open(self.root / "index.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["image", "split", "ih", "iw", "sh", "sw", *CATEGORIES])
            for row in self.rows:
                writer.writerow([row.image, "train", *row.size, *row.size,
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
