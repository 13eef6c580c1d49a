"""Scale-out under ``torchrun``: which part of the dataset each rank extracts, and the few collectives needed.

Run the same extraction on every rank, e.g. the command line (after ``load_classifier``/``open_dataset``)::

    torchrun --nproc_per_node 4 -m robustsig extract timm:resnet50 imagenet-val:/data/val --out store/

or a script calling :func:`robustsig.extract` (``torchrun --nproc_per_node 4 my_extract.py``). Under torchrun
(``WORLD_SIZE`` > 1 in the environment) :func:`robustsig.extract` initialises the process group itself when
the script has not (NCCL on GPUs, Gloo on CPU), gives rank ``r`` of ``W`` the contiguous shards
``[r*n/W, (r+1)*n/W)`` of the ``n`` shards, lets every rank write its own shard files, and after a barrier
rank 0 checks that the shards cover the dataset and writes the one manifest. Shards are numbered globally, so
the merged store reads exactly like a single-process one, and a resumed run may use another number of
processes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (``rank 0 of 1`` when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_from_env() -> World:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as torchrun sets them."""
    return World(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def join(world: World, device: torch.device) -> bool:
    """Initialise the default process group for ``world`` when needed (NCCL for a CUDA device, else Gloo).

    Returns:
        whether this call created it (the caller then destroys it with :func:`leave`).
    """
    if not world.distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return True


def leave(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(world: World, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, value)
    return out


def rank_shards(num_shards: int, world: World) -> range:
    """The contiguous shard indices rank ``world.rank`` extracts (ranks differ by at most one shard)."""
    return range(num_shards * world.rank // world.world_size, num_shards * (world.rank + 1) // world.world_size)
