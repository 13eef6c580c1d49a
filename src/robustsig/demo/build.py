"""Build the demo's data folder: real ImageNet validation photos with their true labels as the in-distribution set,
shifted versions of them (ImageNet-C corruptions and two renditions), a training split of other photos (for the
demo's finetuned models) and a Broden-format concept set of real labelled photos, with class maps onto ImageNet-1k
and a provenance record.

The build is deterministic (every image draws from a generator seeded by ``(seed, set, photo, view)``; same
bytes on a rerun with the same package versions) and cached: the folder's ``manifest.json`` holds a digest of the
build parameters, the build format and the versions of the packages the images come from, and a build whose digest
matches reuses the folder. The folder is written under a temporary name and renamed into place once complete, so
a crash never leaves a folder that looks built.

Layout (``ROOT``)::

    manifest.json  provenance.json  provenance.md  class_map.json  train_class_map.json
    photos/<class>/*.jpg                     the in-distribution set (``folder`` kind + class_map; other/ is empty)
    sketch/ cartoon/ noise/ blur/ weather/ digital/   the shifted sets, same photos and classes
    photos-train/<class>/*.jpg               the training split: crops of other photos (+ train_class_map)
    concepts/                                the concept set (``broden`` kind)

>>> data = build_demo_data("robustsig-demo/data")   # doctest: +SKIP
>>> data.counts["photos"], data.reused              # doctest: +SKIP
(80, False)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robustsig._progress import progress
from robustsig.demo.concept_set import CONCEPTS, concept_image, concept_photos
from robustsig.demo.concepts import BrodenWriter
from robustsig.demo.crops import augmented_view
from robustsig.demo.imagenet_val import LabelledPhoto, imagenet_val_photos
from robustsig.demo.provenance import provenance, provenance_markdown
from robustsig.demo.shifts import SHIFTS, Shift
from robustsig.demo.sources import DEMO_CLASSES, OTHER_CLASS, PHOTOS, demo_class_map, load_image, source_versions
from robustsig.errors import InputError

FORMAT = 3
"""Version of what the build writes; bump it when a change to the code changes the images."""
ID_SET = "photos"
TRAIN_SET = "photos-train"
CONCEPT_SET = "concepts"
MANIFEST = "manifest.json"
CLASS_MAP = "class_map.json"
TRAIN_CLASS_MAP = "train_class_map.json"
TRAIN_SET_CODE = 50
"""The training split's seed code (the id set uses 0, the shifted sets 1-6)."""
JPEG_QUALITY = 92


@dataclass(frozen=True)
class DemoSize:
    """How many images the build writes."""

    photos: int = 20
    """ImageNet photos used (the first of foolbox's 20)."""
    id_views: int = 4
    """in-distribution views per photo (the first is the whole photo)."""
    shift_views: int = 2
    """views per photo in each shifted set."""
    train_per_class: int = 20
    """training crops per class of the training split."""
    short_side: int = 256
    """shorter side of the labelled images, in pixels (the models resize them to their own input)."""
    shifts: tuple[str, ...] | None = None
    """the shifted sets written (names of :data:`~robustsig.demo.shifts.SHIFTS`; None: all)."""
    concept_photos: int | None = None
    """the first this many photos of the concept set (None: all)."""

    def __post_init__(self) -> None:
        counts = (self.photos, self.id_views, self.shift_views, self.train_per_class, self.concept_photos or 1)
        if min(counts) < 1 or self.photos > 20 or self.short_side < 32:
            raise InputError(f"demo size {self}: expected counts >= 1, at most 20 photos and a short side >= 32 "
                             "pixels")
        unknown = set(self.shifts or ()) - {shift.name for shift in SHIFTS}
        if unknown or self.shifts == ():
            raise InputError(f"demo size {self}: expected shifts among {', '.join(s.name for s in SHIFTS)}")

    @property
    def shift_sets(self) -> tuple[Shift, ...]:
        """The shifts written, in the study's order."""
        return tuple(shift for shift in SHIFTS if self.shifts is None or shift.name in self.shifts)


SIZES: dict[str, DemoSize] = {
    "default": DemoSize(),
    "small": DemoSize(photos=10, id_views=2, shift_views=1, train_per_class=4),
    "tiny": DemoSize(photos=8, id_views=1, shift_views=1, train_per_class=2, shifts=("sketch", "noise"),
                     concept_photos=24),
}
"""Named sizes: ``default`` (the demo: 80 in-distribution images, 6 x 40 shifted, 120 training crops, 62 concept
images), ``small`` and ``tiny`` (tests: fewer photos and views; tiny also two shifted sets and 24 concept photos)."""


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
        """The training split (``folder`` kind with :attr:`train_class_map_path`): other photos than every
        evaluated and concept image."""
        return self.root / TRAIN_SET

    @property
    def shift_roots(self) -> dict[str, Path]:
        """Shift name -> its folder, in the study's order (the shifts this build wrote)."""
        return {shift.name: self.root / shift.name for shift in SHIFTS if shift.name in self.counts}

    @property
    def concepts_root(self) -> Path:
        return self.root / CONCEPT_SET

    @property
    def class_map_path(self) -> Path:
        """The class map of the in-distribution and shifted sets (each class one ImageNet-1k index)."""
        return self.root / CLASS_MAP

    @property
    def train_class_map_path(self) -> Path:
        """The class map of the training split (:func:`~robustsig.demo.sources.demo_class_map`)."""
        return self.root / TRAIN_CLASS_MAP


def class_folder(label: int, name: str) -> str:
    """The folder of an ImageNet-1k class in the labelled sets: ``609_jeep``."""
    return f"{label:03d}_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}"


def photo_class_map(photos: list[LabelledPhoto]) -> dict[str, list[int]]:
    """Class folder -> its one ImageNet-1k index, for the photos' classes, and ``other`` -> every other index (so a
    prediction is the top-1 over all 1,000 classes)."""
    from robustsig.data.classes import imagenet_classnames

    names = imagenet_classnames()
    mapped = {class_folder(photo.label, names[photo.label]): [photo.label] for photo in photos}
    taken = {photo.label for photo in photos}
    return {**dict(sorted(mapped.items())), OTHER_CLASS: [i for i in range(len(names)) if i not in taken]}


def _seeded(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _digest(params: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=16).hexdigest()


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=JPEG_QUALITY)


def photo_view(rng: np.random.Generator, photo: Image.Image, short: int, whole: bool) -> Image.Image:
    """A view of an ImageNet photo: the whole photo, or a random crop of 40-100% of its area (aspect 3/4-4/3)
    mirrored with probability 1/2; its shorter side resized to ``short``."""
    box = (0, 0, *photo.size)
    if whole:
        return augmented_view(rng, photo, box, short=short, keep=1.0, scale=(1.0, 1.0), max_degrees=0.0,
                              crop=box)
    return augmented_view(rng, photo, box, short=short, keep=0.0, scale=(0.4, 1.0), max_degrees=0.0)


def _labelled_sets(root: Path, size: DemoSize, seed: int, photos: list[tuple[LabelledPhoto, Image.Image]],
                   folders: dict[int, str], tick: Callable[[], Any]) -> None:
    """Write the in-distribution set and every shift (``tick()`` after each image). Each set draws its views from
    its own seeds."""
    sets: list[tuple[int, str, Shift | None, int]] = [(0, ID_SET, None, size.id_views)]
    sets += [(code, shift.name, shift, size.shift_views) for code, shift in enumerate(SHIFTS, start=1)
             if shift in size.shift_sets]
    for set_code, name, shift, views in sets:
        (root / name / OTHER_CLASS).mkdir(parents=True)
        for index, (photo, image) in enumerate(photos):
            for view in range(views):
                rng = _seeded(seed, set_code, index, view)
                shown = photo_view(rng, image, size.short_side, whole=shift is None and view == 0)
                if shift is not None:
                    shown = shift.apply(shown, rng)
                _save(shown, root / name / folders[photo.label] / f"{photo.name}_{view}.jpg")
                tick()


def _training_set(root: Path, size: DemoSize, seed: int, tick: Callable[[], Any]) -> None:
    """Write the training split: seeded crops of the packaged photos of :data:`DEMO_CLASSES`."""
    (root / TRAIN_SET / OTHER_CLASS).mkdir(parents=True)
    images = {name: load_image(PHOTOS[name]) for demo_class in DEMO_CLASSES for name in demo_class.photos}
    for label, demo_class in enumerate(DEMO_CLASSES):
        for i in range(size.train_per_class):
            rng = _seeded(seed, TRAIN_SET_CODE, label, i)
            photo_name = demo_class.photos[i % len(demo_class.photos)]
            subject = PHOTOS[photo_name].objects[demo_class.subject][0]
            image = augmented_view(rng, images[photo_name], subject, short=size.short_side)
            _save(image, root / TRAIN_SET / demo_class.name / f"{demo_class.name}_{i:03d}.jpg")
            tick()


def _concept_set(root: Path, size: DemoSize, tick: Callable[[], Any]) -> dict[str, int]:
    """Write the Broden-format concept set (``tick()`` after each image); returns the positives per concept."""
    categories = {category: [name for name, of in CONCEPTS if of == category] for _, category in CONCEPTS}
    writer = BrodenWriter(root, categories)
    for photo in concept_photos()[:size.concept_photos]:
        shown = {category: [name for name in photo.concepts if name in names] for category, names in categories.items()}
        writer.add(f"{photo.source}/{photo.name}", concept_image(photo.load()), shown)
        tick()
    return writer.finish()


def set_counts(size: DemoSize, concept_images: int) -> dict[str, int]:
    """Images per set of a build of ``size`` (``concept_images``: the concept photos there are)."""
    return {ID_SET: size.photos * size.id_views, **{s.name: size.photos * size.shift_views for s in size.shift_sets},
            TRAIN_SET: size.train_per_class * len(DEMO_CLASSES),
            CONCEPT_SET: min(concept_images, size.concept_photos or concept_images)}


def _write(root: Path, size: DemoSize, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """Write every set into ``root``; returns the manifest (written last, by the caller)."""
    from robustsig.data.classes import imagenet_classnames

    chosen = imagenet_val_photos()[:size.photos]
    photos = [(photo, photo.load()) for photo in chosen]
    names = imagenet_classnames()
    folders = {photo.label: class_folder(photo.label, names[photo.label]) for photo in chosen}
    counts = set_counts(size, len(concept_photos()))
    with progress(total=sum(counts.values()), desc="demo data", unit="img") as bar:
        _labelled_sets(root, size, seed, photos, folders, bar.update)
        _training_set(root, size, seed, bar.update)
        positives = _concept_set(root / CONCEPT_SET, size, bar.update)
    (root / CLASS_MAP).write_text(json.dumps(photo_class_map(chosen)) + "\n")
    (root / TRAIN_CLASS_MAP).write_text(json.dumps(demo_class_map()) + "\n")
    record = provenance(size=json.loads(json.dumps(asdict(size))), seed=seed, versions=params["versions"],
                        counts=counts, positives=positives, photos=chosen)
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
             for name in counts if name != CONCEPT_SET}
    found[CONCEPT_SET] = sum(1 for _ in (root / CONCEPT_SET / "images").glob("*/*.png"))
    return found == counts and (root / CLASS_MAP).is_file() and (root / TRAIN_CLASS_MAP).is_file()


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
        ['blur', 'cartoon', 'digital', 'noise', 'sketch', 'weather']
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

