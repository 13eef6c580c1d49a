"""``rs.extract``: run a classifier over a dataset once and keep what the analyses read, on disk.

The loop is the only expensive step of a study. It records, per sample, ``h`` (the head's input), the logits
(or their top-k), the label, the dataset position (``ids``) and optional pooled layer taps, into a sharded
:class:`~robustsig.extraction.store.ActivationStore` that is keyed by everything that determines it (see
:mod:`robustsig.extraction.key`), resumable after any interruption, updated in place when some of the dataset's
files change (only their rows are computed: :mod:`robustsig.extraction.update`), and writable by many torchrun
ranks at once (see :mod:`robustsig.extraction.ranks`).

A row does not depend on the batch it ran in: every forward pass runs exactly ``batch_size`` images (a short batch
is padded with copies of its last image, whose outputs are dropped). On CPU a model's output for one image can
change in the last bits with the batch size (the kernels block the work by it; MobileNetV2 alone vs in a batch of
8 differ by 5e-16), but not with the other images of a batch nor with its place in it (checked for convolutional
networks, MobileNetV2, ResNet-18 and a ViT: ``tests/test_extract_update.py``). So a resumed run, a torchrun rank or
an update that computes only a few rows stores exactly the values a fresh single-process extraction with the same
batch size does, bit for bit on CPU.
"""

from __future__ import annotations

import bisect
import math
import os
import sys
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch.utils.data import Dataset, IterableDataset

from robustsig import distributed
from robustsig._progress import progress as progress_bar
from robustsig._progress import progress_enabled
from robustsig.errors import DataError, InputError, RobustsigError
from robustsig._contents import rehashing
from robustsig.data.listing import FileListing
from robustsig.extraction.key import describe_dataset, describe_transform, extraction_key, key_digest
from robustsig.extraction.loader import Batch, batch_loader
from robustsig.extraction.ranks import rank_shards
from robustsig.extraction.store import (HEAD_KEYS, LAYER_PREFIX, ROW_KEYS, ActivationStore, memmap_tensor,
                                        safetensors_header, torch_dtype)
from robustsig.extraction.update import Changes, Donors, describe_changes
from robustsig.extraction.writer import StoreWriter, dtype_name
from robustsig.models.classifier import Classifier, Pooling

_STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_AUTOCAST = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}


def extract(classifier: Classifier, dataset: Dataset, out_dir: str | os.PathLike,
            layers: Sequence[str] | Literal["all"] | None = None, *, batch_size: int = 64,
            num_workers: int | None = None, device: str | torch.device | None = None,
            dtype: str | torch.dtype = torch.float32, autocast: Literal["fp16", "bf16"] | None = None,
            channels_last: bool | None = None, pooling: Pooling = "auto", logits_topk: int | None = None,
            shard_size: int = 4096, overwrite: bool = False, rehash: bool = False,
            progress: bool = True) -> ActivationStore:
    """Extract ``h``, logits, labels, ids and optional layers of ``classifier`` on ``dataset`` into ``out_dir``.

    A finished store of the same key in ``out_dir`` is returned without recomputing; an unfinished one is
    resumed from its complete shards; a store of the same model and settings made from other files of the dataset
    (added, removed, changed) is updated, computing only the rows of new or changed images; a store of other
    settings is refused (see :mod:`robustsig.extraction.writer`).
    Under ``torchrun`` every rank calls this with the same arguments and extracts its own part.

    Preprocessing: when the dataset has a ``transform`` attribute set to ``None`` (as
    :class:`~robustsig.data.base.ImageDataset` has by default), ``classifier.preprocess`` is applied to each
    decoded image (the dataset object is not modified); a dataset with its own transform, or without a
    ``transform`` attribute, must yield tensors. The classifier is put in eval mode for the run (its mode is
    restored after) and moved to ``device``, where it stays.

    Args:
        classifier: the model (:class:`~robustsig.models.classifier.Classifier`).
        dataset: a map-style dataset (``dataset[i] -> (image, label)``) or an iterable stream of
            ``(image, label)``/``(key, image, label)``; it needs ``describe()`` (the store's key). An image of
            ``None`` (corrupt file) is skipped, counted and listed in the manifest, after the files the dataset
            could not list (its ``unlisted``: an unreadable folder, a FIFO...), which are listed with the reason.
        out_dir: the store directory.
        layers: layer taps to record too (names from ``classifier.layers``, or ``"all"``), pooled per sample.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes (``None``: up to 8 per process on GPU, half the cores up to 4
            on CPU).
        device: where to run (``None``/``"auto"``: this rank's GPU when there is one, else CPU; ``"cuda"``:
            this rank's GPU; see :func:`robustsig.distributed.resolve_device`).
        dtype: stored precision of float outputs: ``float32``, ``float16`` or ``bfloat16``.
        autocast: run the model under autocast in ``"fp16"`` or ``"bf16"`` (``None``: full precision).
        channels_last: channels-last memory format (``None``: on for CUDA).
        pooling: how layer outputs become one vector per sample: ``"auto"``, ``"cls"`` or ``"mean"``.
        logits_topk: keep only the ``k`` largest logits (``topk_values``/``topk_indices``) instead of all.
        shard_size: samples per shard file (the unit of resumption).
        overwrite: replace a store of other settings in ``out_dir`` instead of refusing.
        rehash: read every image to key the store, instead of trusting the stat cache for files whose stat data
            is unchanged (see :mod:`robustsig._contents`: only needed when a file may have been rewritten with its
            ctime set back).
        progress: show a progress bar (images/s, ETA) and print a summary at the end.

    Returns:
        The finished :class:`~robustsig.extraction.store.ActivationStore`; ``store.summary`` has images, skipped,
        seconds, images/s and the store's path; ``store.check`` says what this call found (see
        :func:`_check_report`).

    Example:
        >>> store = rs.extract(clf, rs.open_dataset("folder", "photos/"), "store/")   # doctest: +SKIP
        >>> store.read("logits").argmax(1)                                              # doctest: +SKIP
    """
    begin = time.perf_counter()
    num_samples, layer_names, store_dtype = _check_arguments(classifier, dataset, layers, dtype, autocast, pooling,
                                                             logits_topk, batch_size, shard_size, num_workers)
    streaming = isinstance(dataset, IterableDataset)
    world = distributed.world_from_env()
    if world.distributed and num_samples is None:
        raise InputError("under torchrun a stream needs a length (len(dataset)) so ranks can split it; "
                         "give the dataset __len__ or run in one process")
    device = distributed.resolve_device(device, world)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    num_workers = _default_workers(device) if num_workers is None else num_workers

    transform = _loader_transform(classifier, dataset)
    with rehashing(rehash):
        listing = None if streaming else dataset_listing(dataset)
        key = _store_key(classifier, dataset, layer_names, pooling, store_dtype, autocast, logits_topk,
                         None if listing is None else describe_dataset(listing))
    digest = key_digest(key)
    out_dir = Path(out_dir)
    writer = StoreWriter(out_dir, key, digest, shard_size, num_samples, listing)
    was_training = classifier.training
    show = progress and world.is_main and progress_enabled()
    with distributed.process_group(world, device):
        try:
            if _claim(writer, world, overwrite, classifier):
                store = ActivationStore(out_dir)
                store.check = _check_report("reused", listing, None)
                if show:
                    note = describe_check(store.check)
                    print(f"reusing the finished store {store.path} ({store.num_rows} images)"
                          f"{'; ' + note if note else ''}", file=sys.stderr)
                return store
            run = _Run(classifier, writer, world, device, layer_names, pooling, _STORE_DTYPES[store_dtype],
                       _AUTOCAST[autocast], channels_last, logits_topk, num_samples, batch_size, progress)
            work = run.plan(streaming)
            if show and writer.mode == "update":
                print(f"updating the store {out_dir}: {describe_check(_check_report('update', listing, writer.changes))}"
                      f"; {run.copied} row(s) kept, {run.todo} to compute", file=sys.stderr, flush=True)
            classifier.eval()
            classifier.to(device)
            if channels_last:
                classifier.to(memory_format=torch.channels_last)
            run.write_copies(work)
            if work.ranges or work.stream is not None:
                run.execute(batch_loader(dataset, transform, work.ranges, work.stream, writer.shard_size, batch_size,
                                         num_workers, pin_memory=device.type == "cuda"),
                            None if streaming else getattr(dataset, "samples", None), work)
            seconds = time.perf_counter() - begin
            rank_reports = distributed.gather(world, run.report(seconds))
            check = _check_report(writer.mode, listing, writer.changes)
            _on_main(world, lambda: writer.finalize(_record(classifier, rank_reports, seconds, out_dir, batch_size,
                                                            num_workers, device, channels_last, world, check),
                                                    getattr(dataset, "unlisted", ())))
            store = ActivationStore(out_dir)
            store.check = check
            if show:
                print(_summary_line(store.summary), file=sys.stderr, flush=True)
            return store
        finally:
            classifier.train(was_training)
            writer.release()


def dataset_listing(dataset: Dataset) -> FileListing | None:
    """The dataset's :class:`~robustsig.data.listing.FileListing` (names, labels and content digests of its files),
    when it gives one (``dataset.listing()``: every :class:`~robustsig.data.base.ImageDataset`); a store of such a
    dataset is keyed by the listing's description and can be updated file by file."""
    make = getattr(dataset, "listing", None)
    return make() if callable(make) else None


def _check_report(status: str, listing: FileListing | None, changes: Changes | None) -> dict[str, Any]:
    """What :func:`extract` found, as ``store.check`` (and ``--json``): ``status`` (``reused``, ``new``,
    ``resume`` or ``update``), ``files`` (hashing: files looked at, read and hashed, whose stat data alone changed,
    with the first few names) and, for an update, ``changes`` (counts of added, removed, changed, relabelled and
    moved files, and the first few of each)."""
    report: dict[str, Any] = {"status": status}
    if listing is not None:
        report["files"] = listing.report.as_dict() | {"stat_only_examples": listing.report.stat_only}
    if changes is not None:
        report["changes"] = dict(changes.counts) | {"examples": changes.examples}
    return report


def describe_check(check: dict[str, Any]) -> str:
    """What an :func:`extract` call found (``store.check``), in words: the files that changed since the store was
    made, and the images read again to check their bytes (``""`` when there is nothing to say).

    >>> describe_check({"status": "reused", "files": {"files": 6, "hashed": 6, "stat_only": 6, "changed": 0,
    ...                 "unreadable": 0, "stat_only_examples": ["a.png"]}})
    '6 image(s) read to check their bytes: only the stat data of 6 changed, not their bytes (a copy, touch or restore: a.png and 5 more)'
    """
    parts = []
    changes = check.get("changes")
    if changes is not None:
        parts.append(describe_changes(changes, changes.get("examples", {})))
    elif check.get("status") == "update":
        parts.append("the store lists no files (made before content keys, or from a stream): every row is computed")
    files = check.get("files") or {}
    if files.get("hashed"):
        note = f"{files['hashed']} image(s) read to check their bytes"
        if files.get("stat_only"):
            shown = files.get("stat_only_examples", [])
            more = files["stat_only"] - len(shown)
            note += (f": only the stat data of {files['stat_only']} changed, not their bytes (a copy, touch or "
                     f"restore: {', '.join(shown)}{f' and {more} more' if more > 0 else ''})")
        parts.append(note)
    return "; ".join(parts)


def store_key(classifier: Classifier, dataset: Dataset, layers: Sequence[str] | Literal["all"] | None = None, *,
              pooling: Pooling = "auto", dtype: str | torch.dtype = torch.float32,
              autocast: Literal["fp16", "bf16"] | None = None, logits_topk: int | None = None,
              description: dict[str, Any] | None = None) -> dict[str, Any]:
    """The key :func:`extract` gives a store of these arguments, computed without any forward pass.

    Compare it with a store's ``manifest["key"]`` to know beforehand whether :func:`extract` would reuse the store
    (equal keys), resume it, or refuse it (another key; see :mod:`robustsig.extraction.writer`).

    Args:
        classifier, dataset, layers, pooling, dtype, autocast, logits_topk: as for :func:`extract`.
        description: the dataset's :func:`~robustsig.extraction.key.describe_dataset`, when the caller already
            took it (a study describes each dataset once per run: one ``stat`` per file for all its stores).

    Returns:
        The key as plain JSON data (its digest is :func:`robustsig.extraction.key.key_digest` of it).

    Example:
        >>> key = store_key(clf, dataset, layers="all")                  # doctest: +SKIP
        >>> key == rs.ActivationStore("store/").manifest["key"]          # doctest: +SKIP
        True
    """
    _, layer_names, store_dtype = _check_arguments(classifier, dataset, layers, dtype, autocast, pooling,
                                                   logits_topk, 1, 1, None)
    if description is None and not isinstance(dataset, IterableDataset):
        listing = dataset_listing(dataset)
        description = None if listing is None else describe_dataset(listing)
    return _store_key(classifier, dataset, layer_names, pooling, store_dtype, autocast, logits_topk, description)


def _loader_transform(classifier: Classifier, dataset: Dataset) -> Any:
    """What the loader applies to each decoded image: the classifier's preprocess when the dataset has a
    ``transform`` slot left empty, else nothing (the dataset transforms its images itself)."""
    if hasattr(dataset, "transform") and dataset.transform is None:
        return classifier.preprocess
    return None


def _store_key(classifier: Classifier, dataset: Dataset, layer_names: list[str], pooling: str, store_dtype: str,
               autocast: str | None, logits_topk: int | None,
               description: dict[str, Any] | None = None) -> dict[str, Any]:
    own_transform = getattr(dataset, "transform", None)
    preprocess = own_transform if own_transform is not None else _loader_transform(classifier, dataset)
    return extraction_key(spec=classifier.spec, fingerprint=classifier.fingerprint(),
                          dataset=description if description is not None else describe_dataset(dataset),
                          preprocess=describe_transform(preprocess),
                          layers=layer_names, pooling=pooling, dtype=store_dtype, autocast=autocast,
                          logits_topk=logits_topk)


# --- argument checks -------------------------------------------------------------------------------------
def _check_arguments(classifier: Classifier, dataset: Dataset, layers: Sequence[str] | str | None,
                     dtype: str | torch.dtype, autocast: str | None, pooling: str, logits_topk: int | None,
                     batch_size: int, shard_size: int, num_workers: int | None) -> tuple[int | None, list[str], str]:
    """Validate everything before any work; returns the dataset length (``None``: a stream of unknown length),
    the layer names and the stored dtype's name."""
    if not isinstance(classifier, Classifier):
        raise InputError(f"classifier must be a robustsig Classifier (rs.load_classifier), got "
                         f"{type(classifier).__name__}")
    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a torch Dataset or IterableDataset, got {type(dataset).__name__}")
    num_samples = _dataset_length(dataset, isinstance(dataset, IterableDataset))
    _resolve_choice("pooling", pooling, ("auto", "cls", "mean"))
    layer_names = _resolve_layers(classifier, layers, pooling)
    store_dtype = _resolve_choice("dtype", dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype,
                                  _STORE_DTYPES)
    _resolve_choice("autocast", autocast, _AUTOCAST)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
        raise InputError(f"num_workers must be None (automatic) or an integer >= 0, got {num_workers!r}")
    num_classes = classifier.W.shape[0]
    if logits_topk is not None and not (isinstance(logits_topk, int) and 1 <= logits_topk <= num_classes):
        raise InputError(f"logits_topk must be an integer in [1, {num_classes}] (the class count), got {logits_topk!r}")
    return num_samples, layer_names, store_dtype


def _dataset_length(dataset: Dataset, streaming: bool) -> int | None:
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        if not streaming:
            raise InputError(f"map-style dataset {type(dataset).__name__} has no len()") from None
        return None
    if length == 0:
        raise InputError("the dataset is empty: nothing to extract")
    return length


def _resolve_layers(classifier: Classifier, layers: Sequence[str] | str | None, pooling: str) -> list[str]:
    if layers is None:
        return []
    if isinstance(layers, str):
        if layers != "all":
            raise InputError(f"layers must be a list of layer names or 'all', got {layers!r}")
        names = classifier.layers
    else:
        names = list(layers)
    unknown = [name for name in names if name not in classifier.taps]
    if unknown:
        raise InputError(f"unknown layer(s) {unknown}; this model has {classifier.layers or 'no layer taps'}")
    clashing = [name for name in names if name in ROW_KEYS or name in HEAD_KEYS]
    if clashing:
        raise InputError(f"layer name(s) {clashing} clash with the store's own keys {ROW_KEYS + HEAD_KEYS}; "
                         "rename the layer taps")
    if len(set(names)) != len(names):
        raise InputError(f"layers lists a name twice: {names}")
    not_tokens = [name for name in names if classifier.taps[name].layout != "tokens"]
    if pooling == "cls" and not_tokens:
        raise InputError(f"pooling='cls' takes the first token, but layer(s) {not_tokens} are not token sequences; "
                         "use pooling='mean' or 'auto'")
    return names


def _resolve_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    if value not in choices:
        raise InputError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _default_workers(device: torch.device) -> int:
    cores = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return min(8, cores) if device.type == "cuda" else min(4, cores // 2)


# --- coordination ----------------------------------------------------------------------------------------
def _on_main(world: distributed.World, action) -> Any:
    """Run ``action`` on rank 0 and share its result; a RobustsigError it raises is raised on every rank."""
    outcome: tuple[str, Any] = ("ok", None)
    if world.is_main:
        try:
            outcome = ("ok", action())
        except RobustsigError as error:
            outcome = (type(error).__name__, str(error))
            if not world.distributed:
                raise
    outcome = distributed.broadcast(world, outcome if world.is_main else None)
    status, value = outcome
    if status != "ok":
        raise (InputError if status == "InputError" else DataError)(value)
    return value


def _claim(writer: StoreWriter, world: distributed.World, overwrite: bool, classifier: Classifier) -> bool:
    """Rank 0 claims the directory; every rank learns whether the store is already finished."""
    digests = distributed.gather(world, writer.digest)
    if len(set(digests)) > 1:
        raise InputError(f"the torchrun ranks disagree on what to extract (key digests {digests}): every rank must "
                         "load the same weights and dataset with the same settings, and see the same image files "
                         "(the key holds every image's bytes and name)")
    head = {"W": classifier.W} | ({"b": classifier.b} if classifier.b is not None else {})
    done, mode = _on_main(world, lambda: (writer.prepare(overwrite, head), writer.mode))
    if not world.is_main:
        writer.mode = mode
        if not done:
            writer.adopt_shard_size()
    return done


def _record(classifier: Classifier, rank_reports: list[dict[str, Any]], seconds: float, out_dir: Path,
            batch_size: int, num_workers: int, device: torch.device, channels_last: bool,
            world: distributed.World, check: dict[str, Any]) -> dict[str, Any]:
    """Manifest fields besides the shards: model, run settings, and the summary of this run (the writer adds
    the store's totals of images and skipped samples)."""
    computed = sum(r["images"] for r in rank_reports)
    return {
        "model": {"spec": classifier.spec, "meta": classifier.meta, "num_classes": classifier.W.shape[0],
                  "width": classifier.W.shape[1], "classnames": classifier.classnames},
        "run": {"batch_size": batch_size, "num_workers": num_workers, "device": device.type,
                "channels_last": channels_last, "world_size": world.size, "threads": torch.get_num_threads(),
                "torch": torch.__version__},
        "summary": {"computed": computed, "seconds": round(seconds, 3),
                    "images_per_s": round(computed / seconds, 2) if seconds else None,
                    "reused_shards": sum(r["reused_shards"] for r in rank_reports),
                    "written_shards": sum(r["written_shards"] for r in rank_reports),
                    "copied_rows": sum(r["copied_rows"] for r in rank_reports), "check": check,
                    "world_size": world.size, "ranks": rank_reports, "store": str(out_dir.resolve())},
    }


def _summary_line(summary: dict[str, Any]) -> str:
    copied = f", {summary['copied_rows']} rows copied" if summary.get("copied_rows") else ""
    return (f"stored {summary['images']} images ({summary['skipped']} skipped); computed {summary['computed']} in "
            f"{summary['seconds']:.1f} s ({summary['images_per_s'] or 0:.1f} images/s, {summary['reused_shards']} "
            f"shards reused{copied}) -> {summary['store']}")


# --- the loop --------------------------------------------------------------------------------------------
class _ShardPlan(NamedTuple):
    """One shard to write: its positions ``[start, stop)`` (``stop`` ``None``: the end of a stream of unknown
    length), the stored rows it copies (``position -> (shard file, row)``) and how many positions it computes."""

    index: int
    start: int
    stop: int | None
    copies: dict[int, tuple[Path, int]]
    expected: int


class _Work(NamedTuple):
    """Map-style: the positions to compute (one list); a stream: ``(start, stop or None)``; and the shards to
    write (a stream of unknown length makes its plans as it goes)."""

    ranges: list[list[int]]
    stream: tuple[int, int | None] | None
    plans: dict[int, _ShardPlan]


class _ShardBuffer:
    """The outputs gathered for one shard until every position it computes is done (kept on the model's device
    until written)."""

    def __init__(self, plan: _ShardPlan) -> None:
        self.plan = plan
        self.covered = 0
        self.positions: list[int] = []
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.skipped: list[dict[str, Any]] = []
        self.sample_keys: list[str] = []
        self.with_keys = False

    @property
    def complete(self) -> bool:
        return self.covered == self.plan.expected


class _Run:
    """One rank's part of an extraction: which shards to write, the forward loop, and shard writing."""

    def __init__(self, classifier: Classifier, writer: StoreWriter, world: distributed.World, device: torch.device,
                 layers: list[str], pooling: Pooling, store_dtype: torch.dtype, autocast: torch.dtype | None,
                 channels_last: bool, logits_topk: int | None, num_samples: int | None, batch_size: int,
                 progress: bool) -> None:
        self.classifier, self.writer, self.world, self.device = classifier, writer, world, device
        self.layers, self.pooling, self.store_dtype, self.autocast = layers, pooling, store_dtype, autocast
        self.channels_last, self.logits_topk, self.num_samples = channels_last, logits_topk, num_samples
        self.batch_size, self.progress = batch_size, progress
        self.reused_shards = self.written_shards = self.images = self.skipped = self.todo = self.copied = 0
        self._buffers: dict[int, _ShardBuffer] = {}
        self._writes: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    @property
    def shard_size(self) -> int:
        return self.writer.shard_size

    def _shard_stop(self, index: int) -> int:
        stop = (index + 1) * self.shard_size
        return stop if self.num_samples is None else min(stop, self.num_samples)

    def plan(self, streaming: bool) -> _Work:
        """What this rank writes: the shards it lacks (a shard of the wanted tag is kept); of each, the positions
        whose image has a stored row (copied) and the others (computed)."""
        if self.num_samples is None:  # a stream of unknown length, one process: complete shards are a prefix
            index, last = 0, None
            while (info := self.writer.shard_info(index)) is not None:
                index, last = index + 1, info
            self.reused_shards = index
            if last is not None and int(last["stop"]) - int(last["start"]) < self.shard_size:
                return _Work([], None, {})  # the stream ended in the last shard written
            return _Work([], (index * self.shard_size, None), {})
        num_shards = math.ceil(self.num_samples / self.shard_size)
        mine = rank_shards(num_shards, self.world)
        missing = [k for k in mine if self.writer.shard_info(k) is None]
        if streaming and missing:  # a stream is walked forward: recompute from the first missing shard on
            missing = list(range(missing[0], mine.stop))
        self.reused_shards = len(mine) - len(missing)
        listing = self.writer.listing
        donors = (Donors(self.writer.path, str(self.writer.settings))
                  if missing and listing is not None and self.writer.mode != "new" else None)
        plans, positions = {}, []
        for k in missing:
            start, stop = k * self.shard_size, self._shard_stop(k)
            copies, todo = {}, []
            for position in range(start, stop):
                found = donors.find(listing.digests[position]) if donors is not None else None
                if found is not None:
                    copies[position] = found
                else:
                    todo.append(position)
            plans[k] = _ShardPlan(k, start, stop, copies, len(todo))
            positions += todo
        self.todo = len(positions)
        self.copied = sum(len(plan.copies) for plan in plans.values())
        if streaming:
            return _Work([], (plans[missing[0]].start, plans[missing[-1]].stop) if missing else None, plans)
        return _Work([positions] if positions else [], None, plans)

    def write_copies(self, work: _Work) -> None:
        """Write the shards that compute nothing (every image has a stored row), before any forward pass."""
        for plan in work.plans.values():
            if plan.expected == 0:
                self._store(_ShardBuffer(plan))

    def execute(self, loader, samples: Sequence[tuple[str, int]] | None, work: _Work) -> None:
        """Run the forward passes; each shard whose positions are all done is written by a background thread
        while the next batches are computed (at most one shard waits to be written, so memory stays bounded)."""
        show = self.progress and self.world.is_main
        bar = progress_bar(total=self.todo or None, desc="extract", unit="img") if show else None
        autocast = (torch.autocast(self.device.type, dtype=self.autocast) if self.autocast is not None
                    else nullcontext())
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robustsig-shard-writer")
        try:
            with torch.inference_mode(), autocast:
                for batch in loader:
                    if work.stream is not None:
                        self._check_stream_order(batch.start // self.shard_size)
                    self._forward(batch, samples, work)
                    if bar is not None:
                        bar.update(batch.covered)
            for index in sorted(self._buffers):
                buffer = self._buffers.pop(index)
                if self.num_samples is not None:
                    raise DataError(f"the stream ended at position {buffer.plan.start + buffer.covered}, but the "
                                    f"dataset says it has {self.num_samples} samples")
                self._write(buffer)  # the last, partial shard of a stream of unknown length
            self._wait_for_write()
        finally:
            self._writes.shutdown(wait=True)  # a shard being written when the run fails is finished, not torn
            if bar is not None:
                bar.close()

    def _check_stream_order(self, index: int) -> None:
        for open_index, buffer in self._buffers.items():
            if open_index < index and buffer.covered:
                raise DataError(f"the data ended shard {open_index} after {buffer.covered} samples; a stream must "
                                "yield the same items in the same order every time")

    def _buffer(self, index: int, work: _Work) -> _ShardBuffer:
        if index not in self._buffers:
            plan = work.plans.get(index)
            if plan is None:  # a stream of unknown length: every shard is full but the last
                plan = _ShardPlan(index, index * self.shard_size, None, {}, self.shard_size)
            self._buffers[index] = _ShardBuffer(plan)
        return self._buffers[index]

    def _forward(self, batch: Batch, samples: Sequence[tuple[str, int]] | None, work: _Work) -> None:
        rows = self._outputs(batch, samples) if batch.images is not None else {}
        ids = batch.ids.tolist()
        skipped = []
        for position, key, reason in zip(batch.skipped, batch.skipped_keys or [None] * len(batch.skipped),
                                         batch.skipped_reasons):
            entry: dict[str, Any] = {"id": position}
            if key is not None:
                entry["key"] = key
            elif samples is not None:
                entry["path"] = samples[position][0]
            if reason is not None:
                entry["reason"] = reason
            skipped.append(entry)
        shards = sorted({p // self.shard_size for p in ids} | {p // self.shard_size for p in batch.skipped})
        for index in shards:
            buffer = self._buffer(index, work)
            lo = bisect.bisect_left(ids, index * self.shard_size)
            hi = bisect.bisect_left(ids, (index + 1) * self.shard_size)
            if hi > lo:
                for name, value in rows.items():
                    buffer.parts.setdefault(name, []).append(value[lo:hi])
                buffer.positions += ids[lo:hi]
            if batch.keys is not None:
                buffer.with_keys = True
                buffer.sample_keys += batch.keys[lo:hi]
            mine = [entry for entry in skipped if entry["id"] // self.shard_size == index]
            buffer.skipped += mine
            buffer.covered += (hi - lo) + len(mine)
            if buffer.complete:
                self._write(self._buffers.pop(index))

    def _outputs(self, batch: Batch, samples: Sequence[tuple[str, int]] | None) -> dict[str, torch.Tensor]:
        """The stored outputs of the batch's decoded images, from one forward pass of exactly ``batch_size``
        images (a short batch is padded with its last image; see the module notes)."""
        x = batch.images.to(self.device, non_blocking=True)
        count = x.shape[0]
        if count < self.batch_size:
            x = torch.cat([x, x[-1:].expand(self.batch_size - count, *x.shape[1:])])
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        h, logits, layers = self.classifier.forward_with_layers(x, self.layers, self.pooling)
        h, logits = h[:count], logits[:count]
        rows = {"h": h, "labels": batch.labels, "ids": batch.ids}
        if self.logits_topk is None:
            rows["logits"] = logits
        else:
            values, indices = logits.float().topk(self.logits_topk, dim=1)
            rows |= {"topk_values": values, "topk_indices": indices}
        rows |= {LAYER_PREFIX + name: value[:count] for name, value in layers.items()}
        rows = {name: value.to(self.store_dtype) if value.is_floating_point() and name != "labels" else value
                for name, value in rows.items()}
        self._check_finite(rows, batch, samples)
        return rows

    def _check_finite(self, rows: dict[str, torch.Tensor], batch: Batch,
                      samples: Sequence[tuple[str, int]] | None) -> None:
        """Refuse NaN or inf in what is stored (a model with NaN weights would otherwise be scored as a model):
        one reduction per tensor and one device sync per batch."""
        floats = {name: value for name, value in rows.items() if value.is_floating_point() and name != "labels"}
        finite = torch.stack([torch.isfinite(value).all() for value in floats.values()]).tolist()
        if all(finite):
            return
        bad = [name for name, ok in zip(floats, finite) if not ok]
        layers = [f"layer {name.removeprefix(LAYER_PREFIX)!r}" for name in bad if name.startswith(LAYER_PREFIX)]
        what = ", ".join(layers + [repr(name) for name in bad if not name.startswith(LAYER_PREFIX)])
        ids = batch.ids.tolist()
        where = f"samples {ids[0]}..{ids[-1]}" + (f" (first: {samples[ids[0]][0]})" if samples is not None else "")
        if self.store_dtype == torch.float32:
            cause = "its weights may hold NaN or inf, or the values overflow float32"
        else:
            cause = (f"the values may overflow {str(self.store_dtype).removeprefix('torch.')} storage (store them "
                     "with dtype float32), or its weights hold NaN or inf")
        raise InputError(f"model {self.classifier.spec} produced non-finite values (NaN or inf) in {what} on "
                         f"{where}: {cause}; nothing of these samples is stored. Check the model's weights")

    def _write(self, buffer: _ShardBuffer) -> None:
        """Hand a complete shard to the writer thread (after the previous one is on disk)."""
        computed = {name: torch.cat(parts).cpu() for name, parts in buffer.parts.items()}
        self._wait_for_write()
        self._pending = self._writes.submit(self._store, buffer, computed)

    def _store(self, buffer: _ShardBuffer, computed: dict[str, torch.Tensor] | None = None) -> None:
        plan = buffer.plan
        tensors = self._assemble(buffer, computed or {})
        stop = plan.stop if plan.stop is not None else plan.start + buffer.covered
        self.writer.write_shard(plan.index, plan.start, stop, tensors, buffer.skipped,
                                buffer.sample_keys if buffer.with_keys else None)
        self.written_shards += 1
        self.images += len(buffer.positions)
        self.skipped += len(buffer.skipped)

    def _assemble(self, buffer: _ShardBuffer, computed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The shard's rows in position order: the computed ones and those copied from stored shards (with
        their new position and label)."""
        copies = buffer.plan.copies
        if not copies:
            return {name: value.contiguous() for name, value in computed.items()}
        positions = sorted(buffer.positions + list(copies))
        where = {position: row for row, position in enumerate(positions)}
        donors: dict[Path, tuple[list[int], list[int]]] = {}
        for position, (path, row) in copies.items():
            targets, rows = donors.setdefault(path, ([], []))
            targets.append(where[position])
            rows.append(row)
        headers = {path: safetensors_header(path) for path in donors}
        reference = next(iter(headers.values()))[0]
        labels = self.writer.listing.labels  # type: ignore[union-attr]  # copies need a listing
        tensors: dict[str, torch.Tensor] = {}
        for name, info in reference.items():
            if name == "__metadata__":
                continue
            if name == "ids":
                tensors[name] = torch.tensor(positions, dtype=torch.long)
                continue
            if name == "labels":
                tensors[name] = torch.tensor([labels[p] for p in positions], dtype=torch_dtype(info["dtype"]))
                continue
            value = torch.empty((len(positions), *info["shape"][1:]), dtype=torch_dtype(info["dtype"]))
            if name in computed:
                value[[where[p] for p in buffer.positions]] = computed[name]
            for path, (targets, rows) in donors.items():
                header, data_start = headers[path]
                value[targets] = memmap_tensor(path, header[name], data_start)[rows]
            tensors[name] = value
        return tensors

    def _wait_for_write(self) -> None:
        """Block until the shard being written is on disk (re-raising a write error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def report(self, seconds: float) -> dict[str, Any]:
        return {"rank": self.world.rank, "images": self.images, "skipped": self.skipped,
                "seconds": round(seconds, 3), "reused_shards": self.reused_shards,
                "written_shards": self.written_shards, "copied_rows": self.copied}
