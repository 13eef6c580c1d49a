"""The shared torchrun layer: environment parsing, device resolution (GPUs faked where the error cases need them),
the process-group manager on real gloo groups (one process in-process, two spawned), and collectives."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import robustsig as rs
from robustsig import distributed
from robustsig.distributed import (World, all_reduce_sum, barrier, broadcast, gather, process_group, resolve_device,
                                   world_from_env)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def env(monkeypatch):
    """A clean torchrun environment: set variables with ``env(RANK="1", ...)``."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def set_variables(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_variables


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees ``count`` CUDA GPUs (0: none)."""

    def fake(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return fake


# --- the environment ---------------------------------------------------------------------------------------
def test_world_outside_torchrun_is_rank_0_of_1(env):
    world = world_from_env()
    assert world == World(rank=0, size=1, local_rank=0) == World()
    assert (world.is_main, world.distributed) == (True, False)
    env(RANK="", WORLD_SIZE=" ")  # blank counts as unset
    assert world_from_env() == World()


def test_world_from_torchrun_variables(env):
    env(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1")
    world = world_from_env()
    assert (world.rank, world.size, world.local_rank, world.is_main, world.distributed) == (5, 8, 1, False, True)


@pytest.mark.parametrize("variables, message", [
    ({"RANK": "two", "WORLD_SIZE": "4"}, r"environment variable RANK='two' is not an integer \(torchrun sets it\)"),
    ({"WORLD_SIZE": "4.0"}, r"WORLD_SIZE='4.0' is not an integer"),
    ({"LOCAL_RANK": "gpu1"}, r"LOCAL_RANK='gpu1' is not an integer"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, r"RANK=4 is not in \[0, WORLD_SIZE=4\); launch with torchrun"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK=-1 is not in \[0, WORLD_SIZE=2\)"),
    ({"RANK": "1"}, r"RANK=1 is not in \[0, WORLD_SIZE=1\)"),
    ({"WORLD_SIZE": "0"}, r"RANK=0 is not in \[0, WORLD_SIZE=0\)"),
    ({"LOCAL_RANK": "-2"}, r"LOCAL_RANK=-2 is negative"),
])
def test_malformed_torchrun_variables_are_input_errors(env, variables, message):
    env(**variables)
    with pytest.raises(rs.InputError, match=message):
        world_from_env()


# --- the device ---------------------------------------------------------------------------------------------
def test_auto_device_without_cuda_is_the_cpu(env, gpus):
    gpus(0)
    for device in (None, "auto", "cpu", torch.device("cpu")):
        assert resolve_device(device) == torch.device("cpu")
        assert resolve_device(device, World(1, 2, 1)) == torch.device("cpu")
    assert resolve_device("meta") == torch.device("meta")  # other torch devices pass through


def test_auto_and_cuda_mean_this_process_gpu(env, gpus):
    gpus(4)
    for device in (None, "auto", "cuda", torch.device("cuda")):
        assert resolve_device(device) == torch.device("cuda", 0)
        assert resolve_device(device, World(rank=6, size=8, local_rank=2)) == torch.device("cuda", 2)
    env(RANK="3", WORLD_SIZE="4", LOCAL_RANK="3")  # without a world: torchrun's environment
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")  # the CPU stays allowed under torchrun


def test_explicit_gpu_index(env, gpus):
    gpus(4)
    assert resolve_device("cuda:3") == torch.device("cuda", 3)  # any visible GPU for one process
    assert resolve_device("cuda:2", World(2, 4, 2)) == torch.device("cuda", 2)  # its own GPU under torchrun
    assert resolve_device(torch.device("cuda", 1), World(1, 2, 1)) == torch.device("cuda", 1)
    with pytest.raises(rs.InputError, match=r"device 'cuda:0' under torchrun: each process uses cuda:LOCAL_RANK "
                                            r"\(cuda:1 here\); pass device 'cuda' or 'auto' and choose the GPUs "
                                            r"with CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:0", World(1, 2, 1))
    with pytest.raises(rs.InputError, match=r"cuda:4 asked for, but torch sees 4 CUDA GPU\(s\) \(cuda:0 to "
                                            r"cuda:3\)"):
        resolve_device("cuda:4")
    with pytest.raises(rs.InputError, match=r"cuda:5 asked for, but torch sees 4 CUDA GPU\(s\).*at most that "
                                            r"many processes per machine"):
        resolve_device("auto", World(5, 8, 5))  # --nproc_per_node larger than the GPU count


def test_cuda_without_cuda_is_an_input_error(env, gpus):
    gpus(0)
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(rs.InputError, match=r"asked for, but torch sees no CUDA GPU here; use device 'cpu' "
                                                r"\(--device cpu\)"):
            resolve_device(device)


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "0", ""])
def test_unknown_device_is_an_input_error(env, device):
    with pytest.raises(rs.InputError, match=rf"unknown device '{device}' \(.*\); use 'auto', 'cpu', 'cuda' or "
                                            r"'cuda:N'"):
        resolve_device(device)


# --- one process: no group needed, collectives are no-ops --------------------------------------------------------
def test_one_process_needs_no_group_and_collectives_are_no_ops(env):
    assert not dist.is_initialized()
    world = World()
    with process_group(world, torch.device("cpu")):
        assert not dist.is_initialized()
        barrier(world)
        value = {"a": [1, 2]}
        assert broadcast(world, value) is value
        assert gather(world, value) == [value]
        totals = torch.arange(3.0)
        assert all_reduce_sum(totals, world) is totals
    assert not dist.is_initialized()


def test_a_group_the_caller_made_is_left_to_it(env, monkeypatch, free_port):
    """A script that set up its own (here a 1-process gloo) group keeps it after the block."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        for world in (World(), World(0, 1, 0)):
            with process_group(world, torch.device("cpu")):
                assert dist.get_backend() == "gloo"
            assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


# --- two processes: the group is created and destroyed, collectives combine ranks -------------------------------
def _two_rank_worker(rank: int, port: int, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    world = world_from_env()
    device = resolve_device("cpu", world)
    seen: dict = {"before": dist.is_initialized()}
    with process_group(world, device):
        seen["backend"] = dist.get_backend()
        with process_group(world, device):  # nested: the outer block owns the group
            pass
        seen["after_nested"] = dist.is_initialized()
        barrier(world)
        seen["broadcast"] = broadcast(world, {"from": world.rank} if world.is_main else "ignored")
        seen["gather"] = gather(world, f"rank {world.rank}")
        values = torch.tensor([world.rank + 1.0, 10.0 * world.rank], dtype=torch.float64)
        seen["sum"] = all_reduce_sum(values, world).tolist()
        seen["unchanged"] = values.tolist()
    seen["after"] = dist.is_initialized()
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))


@pytest.mark.torchrun
def test_two_process_gloo_group_and_collectives(tmp_path, env, free_port):
    mp.spawn(_two_rank_worker, args=(free_port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"before": False, "backend": "gloo", "after_nested": True, "broadcast": {"from": 0},
                        "gather": ["rank 0", "rank 1"], "sum": [3.0, 10.0],
                        "unchanged": [rank + 1.0, 10.0 * rank], "after": False}


def test_docstring_examples_run(env):
    result = doctest.testmod(distributed, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
