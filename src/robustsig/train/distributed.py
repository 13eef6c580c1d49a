"""Who this process is in a ``torchrun`` job, and the few collective operations training needs.

Under ``torchrun`` the environment names the process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it the
job is one process of rank 0. Each process runs on ``cuda:LOCAL_RANK`` when GPUs are available (process group
backend ``nccl``), else on the CPU (``gloo``).

The global batch is split evenly: each of ``W`` processes takes ``batch_size / W`` samples per step, and
DistributedDataParallel averages their gradients, so one step sees the same samples (and, up to the order of
floating-point sums and per-process BatchNorm statistics, the same gradient) as one process with the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from robustsig.errors import InputError


@dataclass(frozen=True)
class World:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 writes checkpoints, logs and the final model).
        size: number of processes.
        local_rank: rank on this machine (the GPU index).
        device: where this process trains.
    """

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(device: str | torch.device | None = None) -> World:
    """Rank, world size and device of this process, from ``torchrun``'s environment (one process without it).

    Args:
        device: ``None``/``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``"cpu"``, ``"cuda"``
            (then ``cuda:LOCAL_RANK``) or an explicit ``"cuda:N"`` (single-process jobs only).

    Raises:
        InputError: malformed ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, or a CUDA device asked for without CUDA.
    """
    rank, size, local_rank = (_env_int(name, default) for name, default in
                              (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if not 0 <= rank < size:
        raise InputError(f"RANK={rank} is not in [0, WORLD_SIZE={size}); launch with torchrun, which sets both")
    text = "auto" if device is None else str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(text)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r} ({err}); use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
        if target.index is None:
            target = torch.device("cuda", local_rank)
        elif size > 1 and target.index != local_rank:
            raise InputError(f"device {text!r} under torchrun: each process uses cuda:LOCAL_RANK; pass "
                             "--device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    return World(rank=rank, size=size, local_rank=local_rank, device=target)


@contextmanager
def process_group(world: World) -> Iterator[None]:
    """Join the job's process group for the block (``nccl`` on GPUs, ``gloo`` on CPUs); nothing for one process
    or when a group already exists (it is then left to its owner)."""
    if not world.distributed or dist.is_initialized():
        yield
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    dist.init_process_group(backend="nccl" if world.device.type == "cuda" else "gloo", init_method="env://")
    try:
        yield
    finally:
        dist.destroy_process_group()


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


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor over all processes (returned on its original device; a no-op for one process)."""
    if not world.distributed:
        return values
    reduced = values.to(world.device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(values.device)


def barrier(world: World) -> None:
    """Wait for every process (a no-op for one process)."""
    if world.distributed:
        if world.device.type == "cuda":
            dist.barrier(device_ids=[world.device.index])
        else:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None
