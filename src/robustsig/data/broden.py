"""``broden``: the Broden concept dataset in NetDissect's on-disk format (``broden1_224``: 63,305 images,
1,197 concepts), as read by CSAILVision/NetDissect(-Lite) ``loader/data_loader.py``:

- ``index.csv``: ``image,split,ih,iw,sh,sw`` then one column per category (``color,object,part,material,scene,
  texture`` in broden1_224). ``image`` is relative to ``images/``. A category cell holds zero or more items
  separated by ``;``: a decimal number is an image-level label (the whole image has it; scene, texture), any
  other item is a PNG under ``images/`` whose pixels encode label numbers as ``R + 256 * G`` (0: unlabelled).
- ``label.csv``: ``number,name,category,frequency,coverage,syns``; ``category`` like ``material(36);object(3)``.
  Label numbers are global across categories (the concepts); 0 is never a concept.
- ``category.csv``: ``name,first,last,count,frequency``: the categories.
- ``c_<category>.csv``: ``code,number,name,frequency,coverage``: the labels of each category with their pixel
  coverage. A concept's category is the one where its coverage is largest (NetDissect's primary category;
  a label listed in no ``c_*.csv`` takes the first category of its ``label.csv`` entry).

A concept is present in an image when any of its label PNGs has a pixel of it or an image-level label names it.
Building that ``N x C`` presence matrix decodes every label PNG (minutes on the full release), so it is built
once and cached in ``cache_dir`` under a key made of the digests of every index file and of every label PNG's
bytes (each PNG read once, then vouched for by its stamp: :mod:`robustsig._contents`): a changed index or label
PNG never reuses a stale cache, and a copy or a move of the folder reuses it. A build that had to
leave labels out (an undecodable PNG) is not cached. ``.concept_matrix`` is a dense bool tensor (63,305 x
1,197: 76 MB).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from robustsig._atomic import atomic_output
from robustsig._cache import default_cache_dir
from robustsig._progress import progress
from robustsig._contents import digest_files, relative_name
from robustsig.data._layout import examples, layout_error, locate, require_dir
from robustsig.data.concepts import ConceptImageDataset
from robustsig.errors import DataError

INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
CACHE_FORMAT = 1
CHUNK = 256
_EXPECTED = ("the Broden format (NetDissect's broden1_224): index.csv, label.csv, category.csv, c_<category>.csv "
             "and images/")
_CATEGORY_COUNT = re.compile(r"^([^(]*)\((\d+)\)$")


@dataclass(frozen=True)
class BrodenLabels:
    """The concepts of a Broden folder, in label-number order."""

    numbers: list[int]
    names: list[str]
    categories: list[str]
    """each concept's primary category."""
    category_names: list[str]
    """the categories of ``category.csv``, in its order."""


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"broden: {path} is missing; expected {_EXPECTED}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in required if c not in (reader.fieldnames or [])]
        if absent:
            raise DataError(f"broden: {path}: no column {examples(absent)}; expected {', '.join(required)}")
        return list(reader)


def _number(value: str, path: Path, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"broden: {path}: {column} {value!r} is not an integer") from None


def _coverage(value: str, path: Path) -> float:
    try:
        return float(value or 0.0)
    except ValueError:
        raise DataError(f"broden: {path}: coverage {value!r} is not a number") from None


def read_labels(folder: Path) -> BrodenLabels:
    """Concept numbers, names and primary categories from ``label.csv``, ``category.csv`` and ``c_*.csv``."""
    categories = [row["name"] for row in _read_csv(folder / "category.csv", ("name",))]
    label_rows = _read_csv(folder / "label.csv", ("number", "name", "category"))
    best: dict[int, tuple[float, int]] = {}  # number -> (coverage, category position): NetDissect's max
    for position, category in enumerate(categories):
        path = folder / f"c_{category}.csv"
        for row in _read_csv(path, ("code", "number", "coverage")):
            key = (_coverage(row["coverage"], path), position)
            number = _number(row["number"], path, "number")
            best[number] = max(best.get(number, key), key)
    numbers, names, primary = [], [], []
    for row in sorted(label_rows, key=lambda r: _number(r["number"], folder / "label.csv", "number")):
        number = int(row["number"])
        if number <= 0:
            continue
        listed = [m.group(1) for m in map(_CATEGORY_COUNT.match, (row["category"] or "").split(";")) if m]
        numbers.append(number)
        names.append(row["name"])
        primary.append(categories[best[number][1]] if number in best else (listed[0] if listed else ""))
    if not numbers:
        raise DataError(f"broden: {folder / 'label.csv'} lists no concepts")
    return BrodenLabels(numbers, names, primary, categories)


def _cache_key(folder: Path, categories: list[str], pngs: list[str]) -> str:
    digest = hashlib.blake2b(f"broden-presence-v{CACHE_FORMAT}".encode(), digest_size=16)
    for name in ["index.csv", "label.csv", "category.csv", *(f"c_{c}.csv" for c in categories)]:
        digest.update(name.encode() + b"\0" + hashlib.blake2b((folder / name).read_bytes()).digest())
    contents, _ = digest_files(pngs, folder, progress_label="hash label PNGs")
    for png, content in zip(pngs, contents):
        digest.update(os.fsencode(relative_name(png, folder)) + f"\0{content}\n".encode())
    return digest.hexdigest()


def _split_cell(cell: str) -> tuple[list[int], list[str]]:
    items = [item.strip() for item in (cell or "").split(";") if item.strip()]
    return [int(i) for i in items if i.isdigit()], [i for i in items if not i.isdigit()]


def _image_labels(job: tuple[list[int], list[str]]) -> tuple[np.ndarray, list[str]]:
    """Label numbers present in one image (image-level numbers plus every pixel of its label PNGs), and the
    PNGs that could not be decoded."""
    numbers, pngs = job
    found = [np.asarray(numbers, dtype=np.int64)]
    failed = []
    for png in pngs:
        try:
            with Image.open(png) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
        except (OSError, ValueError, SyntaxError) as error:
            failed.append(f"{png} ({type(error).__name__}: {error})")
            continue
        found.append(np.unique(pixels[..., 0] + 256 * pixels[..., 1]))
    present = np.unique(np.concatenate(found))
    return present[present > 0], failed


def _label_chunk(jobs: list[tuple[list[int], list[str]]]) -> list[tuple[np.ndarray, list[str]]]:
    return [_image_labels(job) for job in jobs]


def _build_presence(jobs: list[tuple[list[int], list[str]]], labels: BrodenLabels, workers: int,
                    strict: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """CSR (indptr, column indices) of the image x concept presence matrix, and whether every label was read
    (non-strict: undecodable PNGs and unknown label numbers are left out, with a warning)."""
    column_of = np.full(max(labels.numbers) + 1, -1, dtype=np.int64)
    column_of[labels.numbers] = np.arange(len(labels.numbers))
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    results: list[tuple[np.ndarray, list[str]]] = []
    with progress(total=len(jobs), desc="broden: reading concept labels", unit="img") as bar:
        if workers > 0 and len(chunks) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for chunk in pool.map(_label_chunk, chunks):
                    results.extend(chunk)
                    bar.update(len(chunk))
        else:
            for chunk in chunks:
                results.extend(_label_chunk(chunk))
                bar.update(len(chunk))
    failed = [f for _, fails in results for f in fails]
    if failed:
        message = f"broden: {len(failed)} label PNGs could not be decoded: {examples(failed, 3)}"
        if strict:
            raise DataError(message)
        warnings.warn(message + "; their pixel labels are left out", RuntimeWarning, stacklevel=4)
    every = np.unique(np.concatenate([present for present, _ in results] or [np.zeros(0, dtype=np.int64)]))
    unknown = [int(n) for n in every if n >= len(column_of) or column_of[n] < 0]
    if unknown:
        message = f"broden: label numbers {examples(map(str, unknown))} are not in label.csv"
        if strict:
            raise DataError(message)
        warnings.warn(message + "; they are left out", RuntimeWarning, stacklevel=4)
    columns = [np.unique(column_of[present[present < len(column_of)]]) for present, _ in results]
    columns = [c[c >= 0] for c in columns]
    indptr = np.zeros(len(columns) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(c) for c in columns])
    indices = (np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)).astype(np.int32)
    return indptr, indices, not failed and not unknown


def _load_cache(path: Path, rows: int, numbers: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as cached:
            indptr, indices, cached_numbers = cached["indptr"], cached["indices"], cached["numbers"]
    except (OSError, KeyError, ValueError):
        return None
    if len(indptr) != rows + 1 or cached_numbers.tolist() != numbers:
        return None
    return indptr, indices


def _save_cache(path: Path, indptr: np.ndarray, indices: np.ndarray, numbers: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary, open(temporary, "wb") as stream:
        np.savez_compressed(stream, indptr=indptr, indices=indices, numbers=np.asarray(numbers, dtype=np.int64))


def open_broden(root: str | os.PathLike, *, split: str | None = None, cache_dir: str | os.PathLike | None = None,
                workers: int | None = None, transform: Callable[[Image.Image], Any] | None = None,
                strict: bool = False) -> ConceptImageDataset:
    """The Broden images with their concept presence matrix (built once, then cached).

    Args:
        root: the Broden folder (``broden1_224/`` or the folder above it).
        split: keep only the images of this ``split`` (``"train"``/``"val"``); ``None``: all.
        cache_dir: where the presence matrix is cached (default: ``broden/`` in
            :func:`robustsig._cache.default_cache_dir`).
        workers: processes decoding label PNGs when the cache is built (default: up to 4; 0: none).
        transform, strict: see :class:`~robustsig.data.base.ImageSource`; ``strict`` also fails on an
            undecodable label PNG or an unknown label number instead of warning.

    Returns:
        A :class:`~robustsig.data.concepts.ConceptImageDataset` (labels ``-1``) with ``.concept_matrix``
        (``N x C`` bool), ``.concepts`` (names), ``.concept_categories``, ``.concept_numbers`` (Broden label
        numbers) and ``.balanced_sets(min_positives=..., max_positives=..., seed=...)``.
    """
    kind = "broden"
    top = require_dir(root, kind, _EXPECTED)
    folder = locate(top, lambda p: (p / "index.csv").is_file(), ("broden1_224", "broden1_227", "broden1_384"))
    if folder is None:
        raise layout_error(kind, top, "no index.csv", _EXPECTED)
    labels = read_labels(folder)
    index = _read_csv(folder / "index.csv", INDEX_COLUMNS)
    if not index:
        raise DataError(f"broden: {folder / 'index.csv'} lists no images")
    category_columns = [c for c in index[0] if c not in INDEX_COLUMNS]
    images = folder / "images"
    jobs = []
    for row in index:
        numbers, pngs = [], []
        for column in category_columns:
            cell_numbers, cell_pngs = _split_cell(row[column])
            numbers += cell_numbers
            pngs += [str(images / png) for png in cell_pngs]
        jobs.append((numbers, pngs))

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "broden"
    pngs = [png for _, job_pngs in jobs for png in job_pngs]
    cache_file = cache / f"broden-{_cache_key(folder, labels.category_names, pngs)}.npz"
    csr = _load_cache(cache_file, len(index), labels.numbers)
    if csr is None:
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        indptr, indices, complete = _build_presence(jobs, labels, workers, strict)
        if complete:  # a partial read is never cached: the warning repeats until the files are fixed
            _save_cache(cache_file, indptr, indices, labels.numbers)
    else:
        indptr, indices = csr
    matrix = torch.zeros(len(index), len(labels.numbers), dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(len(index)), torch.from_numpy(np.diff(indptr)))
    matrix[rows, torch.from_numpy(indices.astype(np.int64))] = True

    keep = [n for n, row in enumerate(index) if split is None or row["split"] == split]
    if not keep:
        raise DataError(f"broden: {folder / 'index.csv'} has no image of split {split!r}")
    samples = [(images / index[n]["image"], -1) for n in keep]
    dataset = ConceptImageDataset(samples, concept_matrix=matrix[keep], concepts=labels.names,
                                  concept_categories=labels.categories, transform=transform, strict=strict,
                                  kind=kind, root=folder)
    dataset.concept_numbers = labels.numbers
    return dataset
