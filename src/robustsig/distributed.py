"""Who this process is in a ``torchrun`` job, which device it runs on, and the few collectives robustsig needs.

Under ``torchrun`` the environment names the process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without it the
job is one process of rank 0 and every collective here is a no-op. Each process runs on ``cuda:LOCAL_RANK`` when
GPUs are available (process group backend ``nccl``), else on the CPU (``gloo``). Extraction
(:func:`robustsig.extract`) and training (:func:`robustsig.train.loop.train_classifier`) join the group
themselves with :func:`process_group` when the calling script has not; model loading picks its device with
:func:`resolve_device`.

Example:
    >>> world = world_from_env()          # outside torchrun: rank 0 of 1
    >>> world.is_main, world.distributed
    (True, False)
    >>> with process_group(world, resolve_device("cpu", world)):
    ...     gather(world, world.rank)
    [0]
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from robustsig.errors import InputError

GROUP_TIMEOUT = datetime.timedelta(hours=2)
"""How long a collective waits for the other processes: generous, because rank 0 alone may spend long minutes
finishing an extraction's manifest or writing a training checkpoint while the others wait for it."""


@dataclass(frozen=True)
class World:
    """This process's place in a ``torchrun`` job (rank 0 of 1 outside torchrun).

    Attributes:
        rank: global rank (0 writes manifests, checkpoints, logs and the final model).
        size: number of processes (``WORLD_SIZE``).
        local_rank: rank on this machine (the index of its GPU).

    Example:
        >>> World(rank=1, size=4).is_main
        False
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the job has more than one process."""
        return self.size > 1


def world_from_env() -> World:
    """Rank, world size and local rank of this process, from ``torchrun``'s environment (rank 0 of 1 without it).

    Raises:
        InputError: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` that is not an integer, or ``RANK`` outside
            ``[0, WORLD_SIZE)``.

    Example:
        >>> world_from_env().size   # outside torchrun
        1
    """
    rank, size, local_rank = (_env_int(name, default) for name, default in
                              (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"RANK={rank} is not in [0, WORLD_SIZE={size}); launch with torchrun, which sets both")
    if local_rank < 0:
        raise InputError(f"LOCAL_RANK={local_rank} is negative; launch with torchrun, which sets it")
    return World(rank=rank, size=size, local_rank=local_rank)


def resolve_device(device: str | torch.device | None, world: World | None = None) -> torch.device:
    """The device this process should run on.

    Args:
        device: ``None`` or ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``"cpu"``,
            ``"cuda"`` (``cuda:LOCAL_RANK``), an explicit ``"cuda:N"`` (under torchrun only ``N = LOCAL_RANK``),
            or any other torch device (``"mps"``).
        world: this process's place in the job (default: :func:`world_from_env`).

    Returns:
        the device, with its index for CUDA.

    Raises:
        InputError: a string torch does not know as a device, a CUDA device without CUDA, a GPU index torch does
            not see, or ``cuda:N`` under torchrun with ``N`` other than ``LOCAL_RANK``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    world = world_from_env() if world is None else world
    text = "auto" if device is None else str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(text)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r} ({err}); use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if target.type != "cuda":
        return target
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use device 'cpu' "
                         "(--device cpu)")
    if target.index is None:
        target = torch.device("cuda", world.local_rank)
    elif world.distributed and target.index != world.local_rank:
        raise InputError(f"device {text!r} under torchrun: each process uses cuda:LOCAL_RANK "
                         f"(cuda:{world.local_rank} here); pass device 'cuda' or 'auto' and choose the GPUs with "
                         "CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if target.index >= count:
        raise InputError(f"{target} asked for, but torch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1}); "
                         "pick one of those, or run at most that many processes per machine with torchrun")
    return target


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Be in the job's default process group for the block: ``nccl`` when ``device`` is a GPU (which becomes this
    process's current CUDA device), else ``gloo``.

    Nothing happens for one process or when a group already exists (it is then left to its owner); a group this
    call created is destroyed at the end of the block. Needs ``MASTER_ADDR``/``MASTER_PORT`` (torchrun sets them).

    Example:
        >>> with process_group(World(), torch.device("cpu")):   # one process: nothing to join
        ...     pass
    """
    if not world.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            rank=world.rank, world_size=world.size, timeout=GROUP_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every process (a no-op for one process)."""
    if not world.distributed:
        return
    if _on_gpus():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every process; ``value`` is ignored on the others."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(world: World, value: Any) -> list[Any]:
    """Every process's ``value`` (any picklable object), in rank order, on every process.

    Example:
        >>> gather(World(), "only me")
        ['only me']
    """
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """``values`` summed over every process (a new tensor on ``values``' device; ``values`` itself for one
    process)."""
    if not world.distributed:
        return values
    reduced = values.to(torch.device("cuda", torch.cuda.current_device()) if _on_gpus() else "cpu", copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(values.device)


def _on_gpus() -> bool:
    """Whether the current group communicates through NCCL (GPU tensors, a current CUDA device)."""
    return dist.get_backend() == dist.Backend.NCCL


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None
