"""The training checkpoint: everything a killed run needs to continue as if it had never stopped.

One file, ``checkpoint.pt``, written with ``torch.save`` to a temporary file in the same folder and moved into
place with ``os.replace`` (a reader sees the previous checkpoint or the new one, never a part), and read back
with ``torch.load(weights_only=True)``: it holds tensors and plain containers only (dicts, lists, tuples, str,
int, float, bool, None).

=================  =============================================================================================
key                what
=================  =============================================================================================
format, version    ``"robustsig.train-state"``, 1
recipe             the :class:`~robustsig.train.recipes.Recipe` as a dict, its ``head`` included (a resume with
                   another recipe or head is refused)
identity           the model spec, head shape and the training set's kind, size and file-list digest
position           ``epoch``, ``batch`` (the next batch of that epoch) and ``step`` (optimiser steps done)
model              the classifier's ``state_dict`` (encoder + head)
optimizer          AdamW's ``state_dict`` (moments, step counts, param groups)
schedule           the learning-rate schedule's state: its kind, the step and the current rate (the rate is a pure
                   function of the step, see :mod:`robustsig.train.schedule`)
scaler             the fp16 ``GradScaler`` state (scale, growth tracker); empty when not used
rng                how every random draw is seeded: ``seed``; data order from ``seed + epoch``, augmentation from
                   ``(seed, epoch, sample)``, the model's own randomness (dropout) from ``(seed, step, rank)``, so no
                   generator state has to be carried over, for any number of processes or workers
epoch_totals       loss sum, correct and seen counts, skipped images and seconds of the unfinished epoch, summed
                   over all processes
history            one dict per finished epoch (the rows of ``train_log.csv``)
=================  =============================================================================================
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustsig._atomic import atomic_output
from robustsig.errors import InputError, UnsafeCheckpointError
from robustsig.train.recipes import Recipe

FORMAT = "robustsig.train-state"
VERSION = 1


@dataclass
class Position:
    """Where training stands: ``step`` optimiser steps done; next comes batch ``batch`` of epoch ``epoch``."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class EpochTotals:
    """Running sums over the batches of the current epoch (all processes once reduced)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    skipped: int = 0
    seconds: float = 0.0


@dataclass
class TrainState:
    """The non-tensor part of a checkpoint, plus the tensors' state dicts (see the module docstring)."""

    recipe: dict[str, Any]
    identity: dict[str, Any]
    position: Position
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    epoch_totals: EpochTotals = field(default_factory=EpochTotals)
    history: list[dict[str, Any]] = field(default_factory=list)


def save_train_state(state: TrainState, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "version": VERSION, **asdict(state)}
    with atomic_output(path) as temporary:
        torch.save(document, temporary)
    return path


def load_train_state(path: str | os.PathLike) -> TrainState:
    """Read a checkpoint written by :func:`save_train_state` (``weights_only=True``: no code runs).

    Raises:
        InputError: the file is damaged or is not a robustsig training checkpoint of this version.
        UnsafeCheckpointError: the file needs pickled objects beyond tensors and containers.
    """
    path = Path(path)
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"refusing to load {str(path)!r}: it needs Python objects beyond tensors and "
                                    f"plain containers ({str(err).splitlines()[0]})") from None
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways, all "unreadable"
        raise InputError(f"cannot read training checkpoint {str(path)!r} ({type(err).__name__}: {err}); delete it "
                         "(or pass --restart) to start over") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{str(path)!r} is not a robustsig training checkpoint")
    if document.get("version") != VERSION:
        raise InputError(f"training checkpoint {str(path)!r} has version {document.get('version')}; this robustsig "
                         f"resumes version {VERSION}")
    return TrainState(recipe=document["recipe"], identity=document["identity"],
                      position=Position(**document["position"]), model=document["model"],
                      optimizer=document["optimizer"], schedule=document["schedule"], scaler=document["scaler"],
                      rng=document["rng"], epoch_totals=EpochTotals(**document["epoch_totals"]),
                      history=list(document["history"]))


def check_resumable(state: TrainState, recipe: Recipe, identity: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint made with another recipe, model or training set, naming what differs."""
    saved_recipe = {k: v for k, v in state.recipe.items() if k != "name"}
    differences = [f"recipe {key}: {saved_recipe.get(key)!r} in the checkpoint, {value!r} now"
                   for key, value in recipe.to_dict().items() if key != "name" and saved_recipe.get(key) != value]
    differences += [f"{key}: {state.identity.get(key)!r} in the checkpoint, {value!r} now"
                    for key, value in identity.items() if state.identity.get(key) != value]
    if differences:
        raise InputError(f"{str(path)!r} is the checkpoint of another run ({'; '.join(differences)}); pass --restart "
                         "to start over in this folder, or choose another --out")
