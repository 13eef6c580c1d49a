"""Scale-out under ``torchrun``: which part of the dataset each rank extracts.

Run the same extraction on every rank, e.g. the command line (after ``load_classifier``/``open_dataset``)::

    torchrun --nproc_per_node 4 -m robustsig extract timm:resnet50 imagenet-val:/data/val --out store/

or a script calling :func:`robustsig.extract` (``torchrun --nproc_per_node 4 my_extract.py``). Under torchrun
(``WORLD_SIZE`` > 1 in the environment) :func:`robustsig.extract` joins the process group itself when the script
has not (:func:`robustsig.distributed.process_group`: NCCL on GPUs, Gloo on CPU), gives rank ``r`` of ``W`` the
contiguous shards ``[r*n/W, (r+1)*n/W)`` of the ``n`` shards (:func:`rank_shards`), lets every rank write its own
shard files, and after a barrier rank 0 checks that the shards cover the dataset and writes the one manifest.
Shards are numbered globally, so the merged store reads exactly like a single-process one, and a resumed run may
use another number of processes.
"""

from __future__ import annotations

from robustsig.distributed import World


def rank_shards(num_shards: int, world: World) -> range:
    """The contiguous shard indices rank ``world.rank`` extracts (ranks differ by at most one shard).

    Example:
        >>> [list(rank_shards(5, World(rank, 2))) for rank in range(2)]
        [[0, 1], [2, 3, 4]]
    """
    return range(num_shards * world.rank // world.size, num_shards * (world.rank + 1) // world.size)
