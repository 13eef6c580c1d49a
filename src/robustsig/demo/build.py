"""Build the demo's data folder: a labelled in-distribution set, its shifted versions, a training split (for the
demo's finetuned model) and a Broden-format concept set, all cut from real packaged photos, with a class map onto
ImageNet-1k and a provenance record.

The build is deterministic (every image draws from a generator seeded by ``(seed, set, class, index)``; same
bytes on a rerun with the same package versions) and cached: the folder's ``manifest.json`` holds a digest of the
build parameters, the build format and the versions of the packages the images come from, and a build whose digest
matches reuses the folder. The folder is written under a temporary name and renamed into place once complete, so
a crash never leaves a folder that looks built.

Layout (``ROOT``)::

    manifest.json  provenance.json  provenance.md  class_map.json
    photos/<class>/*.jpg                     the in-distribution set (``folder`` kind + class_map; other/ is empty)
    photos-train/<class>/*.jpg               the training split: its own seeded crops of the same photos
    sketch/ cartoon/ rephoto/ viewpoint/ occlusion/   the shifted sets, same classes
    concepts/                                the concept set (``broden`` kind)

>>> data = build_demo_data("robustsig-demo/data")   # doctest: +SKIP
>>> data.counts["photos"], data.reused              # doctest: +SKIP
(360, False)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robustsig._progress import progress
from robustsig.demo.concepts import COLOR_NAMES, JPEG_QUALITY, BrodenWriter
from robustsig.demo.crops import augmented_view, concept_crop, random_box
from robustsig.demo.provenance import provenance, provenance_markdown
from robustsig.demo.shifts import SHIFTS, Shift
from robustsig.demo.sources import (COLOR_IMAGES, DEMO_CLASSES, OTHER_CLASS, PHOTOS, TEXTURES, PackagedImage,
                                    demo_class_map, load_image, source_versions, textile_files)
from robustsig.errors import InputError

FORMAT = 2
"""Version of what the build writes; bump it when a change to the code changes the images."""
ID_SET = "photos"
TRAIN_SET = "photos-train"
CONCEPT_SET = "concepts"
MANIFEST = "manifest.json"
CLASS_MAP = "class_map.json"
TRAIN_SET_CODE = 50
"""The training split's seed code (the labelled sets use 0-5, the concept set 100 and 200)."""
CLUTTER_TEXTILES = 4
"""Textile images used as clutter (backgrounds and occluders) next to the textures and the coins."""


@dataclass(frozen=True)
class DemoSize:
    """How many images the build writes."""

    id_per_class: int = 60
    """in-distribution images per class."""
    shift_per_class: int = 30
    """images per class in each shifted set."""
    train_per_class: int = 40
    """images per class in the training split."""
    concept_crops: int = 24
    """concept-set crops of each photo, texture and colour image."""
    textiles: int = 30
    """concept-set textile images."""
    short_side: int = 256
    """shorter side of the labelled images, in pixels (the models resize to 256 and crop 224)."""
    concept_side: int = 224
    """side of the square concept images (Broden's broden1_224)."""

    def __post_init__(self) -> None:
        counts = (self.id_per_class, self.shift_per_class, self.train_per_class, self.concept_crops, self.textiles)
        if min(counts) < 1 or min(self.short_side, self.concept_side) < 32:
            raise InputError(f"demo size {self}: expected counts >= 1 and image sides >= 32 pixels")


SIZES: dict[str, DemoSize] = {
    "default": DemoSize(),
    "small": DemoSize(id_per_class=12, shift_per_class=8, train_per_class=8, concept_crops=8, textiles=10),
    "tiny": DemoSize(id_per_class=3, shift_per_class=2, train_per_class=2, concept_crops=3, textiles=3,
                     short_side=96, concept_side=64),
}
"""Named sizes: ``default`` (the demo: 360 labelled images, 5 x 180 shifted, 390 concept images; extracting them
with the demo's 3 models and 2 interior Wise-FT alphas took 140 s on 2 CPU cores), ``small`` and ``tiny``
(tests)."""


@dataclass(frozen=True)
class DemoData:
    """A built demo data folder."""

    root: Path
    digest: str
    """digest of the build parameters and source versions (the cache key)."""
    counts: dict[str, int]
    """images per set: ``photos``, each shift, ``photos-train``, ``concepts``."""
    concept_positives: dict[str, int]
    """positive images per concept."""
    provenance: dict[str, Any]
    """what the data is (also in ``provenance.json`` and ``provenance.md``)."""
    reused: bool = field(default=False, compare=False)
    """whether this call found the folder already built."""

    @property
    def id_root(self) -> Path:
        return self.root / ID_SET

    @property
    def train_root(self) -> Path:
        """The training split (``folder`` kind with :attr:`class_map_path`), disjoint from every evaluated image."""
        return self.root / TRAIN_SET

    @property
    def shift_roots(self) -> dict[str, Path]:
        """Shift name -> its folder, in the study's order."""
        return {shift.name: self.root / shift.name for shift in SHIFTS}

    @property
    def concepts_root(self) -> Path:
        return self.root / CONCEPT_SET

    @property
    def class_map_path(self) -> Path:
        return self.root / CLASS_MAP

    @property
    def class_map(self) -> dict[str, list[int]]:
        """Class name -> its ImageNet-1k indices (``other``: every remaining index; it has no images)."""
        return demo_class_map()


def _seeded(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _digest(params: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=16).hexdigest()


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=JPEG_QUALITY)


def _labelled_sets(root: Path, size: DemoSize, seed: int, photos: dict[str, Image.Image],
                   clutter: list[Image.Image], tick: Callable[[], Any]) -> None:
    """Write the in-distribution set, every shift and the training split (``tick()`` after each image). Each set
    draws its crops from its own seeds, so no image of one set is an image of another."""
    sets: list[tuple[int, str, Shift | None, int]] = [(0, ID_SET, None, size.id_per_class)]
    sets += [(code, shift.name, shift, size.shift_per_class) for code, shift in enumerate(SHIFTS, start=1)]
    sets.append((TRAIN_SET_CODE, TRAIN_SET, None, size.train_per_class))
    for set_code, name, shift, count in sets:
        (root / name / OTHER_CLASS).mkdir(parents=True)
        for label, demo_class in enumerate(DEMO_CLASSES):
            for i in range(count):
                rng = _seeded(seed, set_code, label, i)
                photo_name = demo_class.photos[i % len(demo_class.photos)]
                photo, subject = photos[photo_name], PHOTOS[photo_name].objects[demo_class.subject][0]
                if shift is None:
                    image = augmented_view(rng, photo, subject, short=size.short_side)
                else:
                    image = shift.apply(shift.view(rng, photo, subject, size.short_side), rng, clutter)
                _save(image, root / name / demo_class.name / f"{demo_class.name}_{i:03d}.jpg")
                tick()


def _square(image: Image.Image, side: int, rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=3.0)


def _concept_set(root: Path, size: DemoSize, seed: int, images: dict[str, Image.Image], textiles: list[Path],
                 tick: Callable[[], Any]) -> dict[str, int]:
    """Write the Broden-format concept set (``tick()`` after each image); returns the positives per concept."""
    objects = sorted({name for photo in PHOTOS.values() for name in photo.objects})
    writer = BrodenWriter(root, {"color": COLOR_NAMES, "object": objects, "texture": [*TEXTURES, "textile"]})
    sources: list[PackagedImage] = [*PHOTOS.values(), *TEXTURES.values(), *COLOR_IMAGES.values()]
    for code, source in enumerate(sources):
        image = images[source.name]
        for i in range(size.concept_crops):
            rng = _seeded(seed, 100, code, i)
            if source.objects:
                box, shown = concept_crop(rng, image.size, source.objects, scale=(0.15, 0.7))
            else:
                box, shown = random_box(rng, image.size, (0.1, 0.5), (1.0, 1.0)), set()
            view = _square(image.crop(box), size.concept_side, rng)
            writer.add(f"{source.name}/{source.name}_{i:03d}", view, objects=sorted(shown),
                       textures=[source.name] if source.name in TEXTURES else [])
            tick()
    for i, path in enumerate(textiles):
        with Image.open(path) as textile:
            view = _square(textile.convert("RGB"), size.concept_side, _seeded(seed, 200, i))
        writer.add(f"textile/textile_{i:03d}", view, textures=["textile"])
        tick()
    return writer.finish()


def _write(root: Path, size: DemoSize, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """Write every set into ``root``; returns the manifest (written last, by the caller)."""
    images = {image.name: load_image(image) for image in [*PHOTOS.values(), *TEXTURES.values(),
                                                          *COLOR_IMAGES.values()]}
    textiles = textile_files(max(size.textiles, CLUTTER_TEXTILES))
    clutter = [images[name] for name in [*TEXTURES, "coins"]]
    for path in textiles[:CLUTTER_TEXTILES]:
        with Image.open(path) as textile:
            clutter.append(textile.convert("RGB"))
    photos = {name: images[name] for name in PHOTOS}
    classes = len(DEMO_CLASSES)
    counts = {ID_SET: size.id_per_class * classes, **{s.name: size.shift_per_class * classes for s in SHIFTS},
              TRAIN_SET: size.train_per_class * classes,
              CONCEPT_SET: (len(PHOTOS) + len(TEXTURES) + len(COLOR_IMAGES)) * size.concept_crops + size.textiles}
    with progress(total=sum(counts.values()), desc="demo data", unit="img") as bar:
        _labelled_sets(root, size, seed, photos, clutter, bar.update)
        positives = _concept_set(root / CONCEPT_SET, size, seed, images, textiles[:size.textiles], bar.update)
    (root / CLASS_MAP).write_text(json.dumps(demo_class_map()) + "\n")
    record = provenance(size=asdict(size), seed=seed, versions=params["versions"], counts=counts, positives=positives)
    (root / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")
    (root / "provenance.md").write_text(provenance_markdown(record))
    return {"params": params, "digest": _digest(params), "counts": counts, "concept_positives": positives,
            "provenance": record}


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _from_manifest(root: Path, manifest: dict[str, Any], reused: bool) -> DemoData:
    return DemoData(root=root, digest=manifest["digest"], counts=manifest["counts"],
                    concept_positives=manifest["concept_positives"], provenance=manifest["provenance"],
                    reused=reused)


def _is_complete(root: Path, counts: dict[str, int]) -> bool:
    """Whether every set holds the number of images its manifest counts (a deleted file means a rebuild)."""
    found = {name: sum(1 for _ in (root / name).glob("*/*.jpg"))
             for name in [ID_SET, *(s.name for s in SHIFTS), TRAIN_SET]}
    found[CONCEPT_SET] = sum(1 for _ in (root / CONCEPT_SET / "images").glob("*/*.jpg"))
    return found == counts and (root / CLASS_MAP).is_file()


def build_demo_data(out_dir: str | os.PathLike, *, size: str | DemoSize = "default", seed: int = 0) -> DemoData:
    """Build (or reuse) the demo's data folder.

    Args:
        out_dir: the folder to write; it must be absent, empty, or a demo data folder built before (a folder
            holding anything else is refused, never overwritten).
        size: a name in :data:`SIZES` or a :class:`DemoSize`.
        seed: the seed every image is drawn from.

    Returns:
        The :class:`DemoData` (paths, counts, positives per concept, provenance); ``reused`` says whether the
        folder was already built with the same parameters and source versions.

    Raises:
        InputError: an unknown size name, or ``out_dir`` holds something that is not demo data.
        DataError: a package holding the images is missing (the message names the pip package).

    Example:
        >>> data = build_demo_data("/tmp/demo-data", size="tiny")   # doctest: +SKIP
        >>> sorted(data.shift_roots)                                # doctest: +SKIP
        ['cartoon', 'occlusion', 'rephoto', 'sketch', 'viewpoint']
    """
    if isinstance(size, str):
        if size not in SIZES:
            raise InputError(f"unknown demo size {size!r}; expected one of {', '.join(SIZES)} or a DemoSize")
        size = SIZES[size]
    root = Path(out_dir).expanduser().absolute()
    params = {"format": FORMAT, "size": asdict(size), "seed": int(seed), "versions": source_versions()}
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("digest") == _digest(params) and _is_complete(root, manifest["counts"]):
        return _from_manifest(root, manifest, reused=True)
    if root.exists() and (not root.is_dir() or (manifest is None and any(root.iterdir()))):
        raise InputError(f"{root} exists and is not a robustsig demo data folder (no {MANIFEST}); give a new or "
                         "empty folder, the demo never overwrites other files")
    root.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    building.chmod(0o755)  # mkdtemp's 0700 would stay on the finished folder
    try:
        manifest = _write(building, size, int(seed), params)
        (building / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if root.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale-", dir=root.parent))
            os.replace(root, stale / root.name)
            os.replace(building, root)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(building, root)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return _from_manifest(root, manifest, reused=False)

