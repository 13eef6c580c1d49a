"""Training batches whose content is a pure function of ``(seed, epoch, batch)``.

- Order: :class:`EpochSampler` is PyTorch's ``DistributedSampler`` (one permutation per epoch from
  ``seed + epoch``, strided over the ranks) that drops the last incomplete *global* batch and can start at any
  batch of an epoch. Global batch ``k`` of an epoch is the same set of samples whatever the number of
  processes: positions ``[k*B, (k+1)*B)`` of the epoch's permutation, rank ``r`` taking those ``= r mod W``.
- Augmentation: every sample is transformed under RNGs (torch CPU, ``random``, numpy) seeded from
  ``(seed, epoch, index)`` (:class:`SeededSamples`), so a random crop does not depend on the worker that decoded
  it, on the number of workers or processes, or on where a resumed run started.

Together they let a run killed mid-epoch resume at the exact batch and see exactly the batches (and crops) an
uninterrupted run sees.

The global batch is split evenly (:func:`per_rank_batch`): each of ``W`` processes takes ``batch_size / W``
samples per step, and DistributedDataParallel averages their gradients, so one step sees the same samples (and, up
to the order of floating-point sums and per-process BatchNorm statistics, the same gradient) as one process with
the whole batch.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from robustsig.data.base import collate_skip_corrupt
from robustsig.distributed import World
from robustsig.errors import InputError


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (``blake2b``), e.g. ``(seed, epoch, index)``.

    Example:
        >>> derived_seed(0, 1, 2) == derived_seed(0, 1, 2) != derived_seed(0, 2, 1)
        True
    """
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and numpy's global generator for the block.

    In the main process their previous states are restored afterwards; in a DataLoader worker they are not (its
    generators serve only the samples, each seeded anew, and saving numpy's state alone costs ~50 us per image).
    """
    restore = get_worker_info() is None
    if restore:
        torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        if restore:
            torch.set_rng_state(torch_state)
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """A map-style image dataset read with keys ``(epoch, index)``: item ``index`` transformed under RNGs seeded
    from ``(seed, epoch, index)``; returns ``(index, image_or_None, label)`` for :func:`collate_skip_corrupt`."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any, int]:
        epoch, index = key
        with seeded_rngs(derived_seed(self.seed, epoch, index)):
            image, label = self.dataset[index]
        return index, image, label


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global batch.

    Raises:
        InputError: ``batch_size`` is not a multiple of ``world_size``.

    Example:
        >>> per_rank_batch(256, 8)
        32
    """
    if batch_size % world_size:
        raise InputError(f"batch_size {batch_size} is the global batch and must split evenly over the "
                         f"{world_size} processes (WORLD_SIZE); pick a multiple of {world_size}, e.g. "
                         f"{max(world_size, batch_size // world_size * world_size)}")
    return batch_size // world_size


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` over whole global batches, yielding ``(epoch, index)`` keys, resumable mid-epoch.

    Args:
        dataset: the map-style dataset (only its length is read).
        world: this process's rank and the number of processes.
        batch_size: this process's share of the global batch.
        seed: the permutation of epoch ``e`` is ``randperm(len, seed + e)``, as in ``DistributedSampler``.
    """

    def __init__(self, dataset: Dataset, world: World, batch_size: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.batches_per_epoch = len(dataset) // (batch_size * world.size)  # type: ignore[arg-type]
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start_batch`` on."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise InputError(f"start_batch {start_batch} is outside the epoch's {self.batches_per_epoch} batches")
        super().set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        for index in indices[self.start_batch * self.batch_size: self.batches_per_epoch * self.batch_size]:
            yield self.epoch, int(index)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def check_training_set(dataset: Any, num_logits: int, batch_size: int) -> None:
    """Refuse datasets training cannot use, saying why.

    Args:
        dataset: the training set.
        num_logits: the head's number of outputs.
        batch_size: the global batch.

    Raises:
        InputError: a streamed dataset (needs random access), labels that are not logit indices ``0..C-1`` (or,
            with a ``class_map``, class numbers ``0..K-1``; unlabelled images), a class map naming an id beyond the
            head, or fewer images than one global batch.
    """
    what = f"the {getattr(dataset, 'kind', 'training')} dataset at {getattr(dataset, 'root', None)!r}"
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "samples"):
        raise InputError(f"{what} is streamed; training needs a map-style dataset (folder, csv, imagenet) so that "
                         "it can shuffle and resume")
    class_map = getattr(dataset, "class_map", None)
    labels = [label for _, label in dataset.samples]
    if class_map is not None:
        beyond = sorted({int(i) for ids in class_map for i in ids if not 0 <= int(i) < num_logits})
        if beyond:
            raise InputError(f"{what} has a class map naming logit ids {beyond[:5]} beyond the head's {num_logits} "
                             f"outputs (0..{num_logits - 1}); a class map names the outputs of an ImageNet-1k head: "
                             "start from a model with one, or train without class_map (one output per class)")
        num_labels, unit = len(class_map), f"the {len(class_map)} classes of its class map"
    else:
        num_labels, unit = num_logits, f"the head's {num_logits} outputs"
    bad = sorted({label for label in labels if not 0 <= label < num_labels})
    if bad:
        raise InputError(f"{what} has labels {bad[:5]} outside {unit} (0..{num_labels - 1})"
                         + ("; unlabelled images (label -1) cannot be trained on" if -1 in bad else ""))
    if len(labels) < batch_size:
        raise InputError(f"{what} has {len(labels)} images, fewer than one global batch of {batch_size}; lower "
                         "batch_size")


def training_loader(dataset: Any, transform: Callable[[Any], Any], world: World, batch_size: int, seed: int,
                    workers: int, *, pin_memory: bool) -> tuple[DataLoader, EpochSampler]:
    """A DataLoader of ``(ids, images, labels, skipped)`` batches of this process's share, and its sampler.

    Args:
        dataset: a map-style :class:`~robustsig.data.base.ImageDataset` (not changed: a copy gets ``transform``).
        transform: the random training transform.
        world: rank and number of processes.
        batch_size: this process's share of the global batch.
        seed: the recipe's seed (data order and augmentation).
        workers: DataLoader worker processes (the batches do not depend on it).
        pin_memory: page-locked batches, for faster copies to a GPU.
    """
    augmented = copy.copy(dataset)
    augmented.transform = transform
    samples = SeededSamples(augmented, seed)
    sampler = EpochSampler(samples, world, batch_size, seed)
    loader = DataLoader(samples, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_skip_corrupt, pin_memory=pin_memory,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
    return loader, sampler
