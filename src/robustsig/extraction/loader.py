"""Turning a dataset into the ordered batches one extraction run needs.

Two kinds of datasets:

- map-style (``dataset[i]`` -> ``(image, label)``, ``len``): only the positions to compute are loaded, in
  consecutive chunks of ``batch_size`` of the list of positions (a chunk may span shards: the extraction pads
  every forward pass to a full batch, so a row does not depend on the batch it ran in, see
  :mod:`robustsig.extraction.extractor`);
- iterable streams (WebDataset and the like) yielding ``(image, label)`` or ``(key, image, label)``: the position
  of an item is its rank in the stream, which must be deterministic and complete in every worker and rank (do
  not split it by worker or node yourself: extract does). Each DataLoader worker walks the stream and builds
  every ``num_workers``-th batch, so items are decoded once per worker but preprocessed once. Batches never
  cross a shard boundary (:func:`plan_batches`), so a resumed run starts at a batch boundary.

An image of ``None`` (a corrupt file, see :class:`~robustsig.data.base.ImageDataset`) is skipped and reported.
When ``transform`` is given (the classifier's ``preprocess``), it is applied to each decoded image here; the
dataset object itself is never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate, get_worker_info

from robustsig.errors import InputError


class Batch(NamedTuple):
    """One batch of decoded samples and the positions it covers.

    Attributes:
        start: first dataset position the batch covers.
        covered: how many positions it covers (decoded + skipped).
        ids: positions of the decoded samples ``(n,)``.
        images: ``(n, 3, H, W)`` or ``None`` when no sample of the batch decoded.
        labels: ``(n, ...)`` or ``None``.
        skipped: positions of the samples that could not be decoded.
        keys: sample keys of the decoded samples (streams of ``(key, image, label)``), else ``None``.
        skipped_keys: sample keys of the skipped samples, else ``None``.
        skipped_reasons: why each skipped sample could not be decoded (``None`` where the dataset does not say).
    """

    start: int
    covered: int
    ids: torch.Tensor
    images: torch.Tensor | None
    labels: torch.Tensor | None
    skipped: list[int]
    keys: list[str] | None
    skipped_keys: list[str] | None
    skipped_reasons: list[str | None]


def is_batch_end(position: int, shard_size: int, batch_size: int) -> bool:
    """Whether ``position`` is the last of its batch (batches are ``batch_size`` chunks of each shard)."""
    in_shard = position % shard_size
    return in_shard == shard_size - 1 or in_shard % batch_size == batch_size - 1


def plan_batches(start: int, stop: int, shard_size: int, batch_size: int) -> list[list[int]]:
    """The batches (lists of positions) covering ``[start, stop)``, cut by :func:`is_batch_end`."""
    batches, current = [], []
    for position in range(start, stop):
        current.append(position)
        if is_batch_end(position, shard_size, batch_size):
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


class _PositionBatches(Sampler[list[int]]):
    """Consecutive chunks of ``batch_size`` of the positions of ``parts`` (ranges or lists), one part at a time
    (memory independent of the dataset size)."""

    def __init__(self, parts: Sequence[Sequence[int]], batch_size: int) -> None:
        self.parts, self.batch_size = list(parts), batch_size

    def __iter__(self) -> Iterator[list[int]]:
        current: list[int] = []
        for part in self.parts:
            for position in part:
                current.append(position)
                if len(current) == self.batch_size:
                    yield current
                    current = []
        if current:
            yield current

    def __len__(self) -> int:
        return -(-sum(len(part) for part in self.parts) // self.batch_size)


def _collate(items: Sequence[tuple[int, Any, Any, str | None, str | None]]) -> Batch:
    kept = [item for item in items if item[1] is not None]
    lost = [item for item in items if item[1] is None]
    with_keys = items[0][3] is not None
    if kept and not isinstance(kept[0][1], torch.Tensor):
        raise InputError(f"the dataset yields {type(kept[0][1]).__name__} images, not tensors: give the dataset a "
                         "transform, or a `transform` attribute set to None so extract applies the classifier's "
                         "preprocess")
    return Batch(
        start=int(items[0][0]), covered=len(items),
        ids=torch.tensor([item[0] for item in kept], dtype=torch.long),
        images=default_collate([item[1] for item in kept]) if kept else None,
        labels=default_collate([item[2] for item in kept]) if kept else None,
        skipped=[int(item[0]) for item in lost],
        keys=[str(item[3]) for item in kept] if with_keys else None,
        skipped_keys=[str(item[3]) for item in lost] if with_keys else None,
        skipped_reasons=[item[4] for item in lost],
    )


def _as_is(batch: Batch) -> Batch:
    return batch


class _MapItems(Dataset):
    """``(position, image, label, None, reason)`` items of a map-style dataset, ``transform`` applied; ``reason``
    says why an image of ``None`` could not be decoded, when the dataset has ``fetch`` to tell it."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor] | None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, position: int) -> tuple[int, Any, Any, None, str | None]:
        fetch = getattr(self.dataset, "fetch", None)
        image, label, reason = fetch(position) if callable(fetch) else (*self.dataset[position], None)
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return position, image, label, None, reason


class _StreamBatches(IterableDataset):
    """The batches of positions ``[start, stop)`` of a stream; worker ``w`` of ``n`` builds batches ``w, w+n, ...``."""

    def __init__(self, stream: IterableDataset, transform: Callable[[Any], torch.Tensor] | None, start: int,
                 stop: int | None, shard_size: int, batch_size: int) -> None:
        self.stream = stream
        self.transform = transform
        self.start, self.stop = start, stop
        self.shard_size, self.batch_size = shard_size, batch_size

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch_number, items = 0, []
        for position, item in enumerate(self.stream):
            if position < self.start:
                continue
            if self.stop is not None and position >= self.stop:
                break
            if batch_number % workers == worker:
                items.append(self._item(position, item))
            if is_batch_end(position, self.shard_size, self.batch_size):
                if items:
                    yield _collate(items)
                items = []
                batch_number += 1
        if items:  # the stream ended inside a batch
            yield _collate(items)

    def _item(self, position: int, item: Any) -> tuple[int, Any, Any, str | None, None]:
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise InputError(f"a stream item must be (image, label) or (key, image, label); item {position} is "
                             f"{type(item).__name__}" + (f" of length {len(item)}" if isinstance(item, (tuple, list))
                                                         else ""))
        key, image, label = item if len(item) == 3 else (None, *item)
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return position, image, label, key, None


def batch_loader(dataset: Dataset, transform: Callable[[Any], torch.Tensor] | None, ranges: Sequence[Sequence[int]],
                 stream: tuple[int, int | None] | None, shard_size: int, batch_size: int, num_workers: int,
                 pin_memory: bool) -> DataLoader:
    """A DataLoader yielding :class:`Batch` es in position order.

    Args:
        dataset: map-style or iterable.
        transform: applied to each decoded image (``None``: items are used as they are).
        ranges: map-style: the positions to compute (ranges or lists, in order), cut into consecutive
            ``batch_size`` chunks.
        stream: iterable: the positions ``(start, stop)`` to compute (``stop`` ``None``: until the stream ends).
        shard_size, batch_size: how batches are cut (streams: see :func:`plan_batches`).
        num_workers, pin_memory: as for :class:`torch.utils.data.DataLoader`.
    """
    options = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        options["prefetch_factor"] = 4
    if isinstance(dataset, IterableDataset):
        start, stop = stream  # type: ignore[misc]
        batches = _StreamBatches(dataset, transform, start, stop, shard_size, batch_size)
        return DataLoader(batches, batch_size=None, collate_fn=_as_is, **options)
    return DataLoader(_MapItems(dataset, transform), batch_sampler=_PositionBatches(ranges, batch_size),
                      collate_fn=_collate, **options)
