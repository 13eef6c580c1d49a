"""The training loop behind ``robustsig finetune`` and ``robustsig train``: one process or a ``torchrun`` job.

:func:`train_classifier` trains every weight of a :class:`~robustsig.models.classifier.Classifier` (encoder and
head) with AdamW on a labelled image dataset, following a :class:`~robustsig.train.recipes.Recipe`:

- mixed precision on GPUs (``torch.autocast`` in bf16, or fp16 with a ``GradScaler``), optional gradient
  clipping, label smoothing, the recipe's learning-rate schedule;
- cross-entropy over the head's outputs, or, for a training set with a ``class_map`` (your classes as sets of a
  head's ImageNet-1k outputs), the likelihood of each image's set with the whole head kept
  (:mod:`robustsig.train.objective`); the training accuracy is counted with the set's scoring rule;
- DistributedDataParallel under ``torchrun`` (``nccl`` on GPUs, ``gloo`` on CPUs), the global batch split evenly
  over the processes; only rank 0 writes files;
- a checkpoint every ``checkpoint_every`` steps and at the end (:mod:`robustsig.train.state`); started again with
  the same output folder, a killed run resumes at the exact batch it stopped at and ends with the same weights as
  an uninterrupted run (bit for bit on CPU; on GPUs with ``deterministic`` set), because the data order, every
  augmentation and the model's own randomness are seeded from ``(seed, epoch, sample)`` and ``(seed, step, rank)``
  rather than carried in generator state;
- per-epoch training loss and accuracy in ``train_log.csv`` (one row per epoch), a progress bar per epoch.

Files in ``out_dir``: ``model.safetensors`` (the trained classifier, :func:`~robustsig.save_classifier` format:
it loads with ``FAMILY:ARCH@out_dir/model.safetensors``), ``checkpoint.pt``, ``train_log.csv``, ``recipe.yaml`` (every
recipe value, the head included: ``head: wiseft`` for D.1, ``head: linear`` for D.2, ``head: null`` for a run that
trained whatever head the model had; a recipe naming a head the classifier does not have is refused before
training).
"""

from __future__ import annotations

import csv
import io
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from robustsig._progress import progress, quiet
from robustsig.distributed import World, all_reduce_sum, barrier, process_group, resolve_device, world_from_env
from robustsig.errors import DataError, InputError, RobustsigError
from robustsig.models.checkpoint import load_into, save_classifier
from robustsig.models.classifier import Classifier
from robustsig._atomic import write_text_atomic
from robustsig.train.data import check_training_set, derived_seed, per_rank_batch, training_loader
from robustsig.train.heads import check_recipe_head
from robustsig.train.objective import training_objective
from robustsig.train.recipes import Recipe
from robustsig.train.schedule import learning_rate
from robustsig.train.state import (EpochTotals, Position, TrainState, check_resumable, load_train_state,
                                   save_train_state)
from robustsig.train.transforms import training_transform

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.safetensors"
LOG_NAME = "train_log.csv"
RECIPE_NAME = "recipe.yaml"
LOG_COLUMNS: tuple[str, ...] = ("epoch", "step", "loss", "accuracy", "lr", "samples", "skipped", "seconds")
"""Columns of ``train_log.csv``: epoch (1-based), optimiser steps done, mean training loss and top-1 accuracy
(fraction) over the epoch's batches (with augmentation, in train mode), the last learning rate, images seen,
undecodable images skipped, wall-clock seconds."""

StepCallback = Callable[[int], None]


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        out_dir: the output folder.
        model_path: the trained classifier (written by rank 0), or ``None`` when the classifier records no
            rebuildable architecture (``meta["family"]``/``meta["arch"]``); its weights are then in the checkpoint.
        checkpoint_path: the last training checkpoint.
        log_path: ``train_log.csv``.
        steps: optimiser steps done in total.
        steps_per_epoch: global batches per epoch.
        resumed_from_step: the step a resumed run started from (``None`` for a fresh run).
        history: one dict per epoch (the CSV rows).
        world_size: processes in the job.
        rank: this process's rank.
    """

    out_dir: Path
    model_path: Path | None
    checkpoint_path: Path
    log_path: Path
    steps: int
    steps_per_epoch: int
    resumed_from_step: int | None
    history: list[dict[str, Any]]
    world_size: int
    rank: int

    def summary(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        last = self.history[-1] if self.history else {}
        return {"out_dir": str(self.out_dir), "model": None if self.model_path is None else str(self.model_path),
                "checkpoint": str(self.checkpoint_path),
                "log": str(self.log_path), "steps": self.steps, "steps_per_epoch": self.steps_per_epoch,
                "epochs": len(self.history), "resumed_from_step": self.resumed_from_step,
                "world_size": self.world_size, "final_loss": last.get("loss"), "final_accuracy": last.get("accuracy")}


def train_classifier(clf: Classifier, dataset: Any, recipe: Recipe, out_dir: str | Path, *,
                     device: str | torch.device | None = None, workers: int = 4, checkpoint_every: int = 1000,
                     restart: bool = False, on_step: StepCallback | None = None) -> TrainResult:
    """Train ``clf`` end to end on ``dataset`` following ``recipe``; resume from ``out_dir`` when it holds a checkpoint.

    Args:
        clf: the classifier to train (changed in place; left in eval mode). Its head's outputs are the classes:
            dataset labels must be logit indices ``0..K-1``, unless the dataset has a ``class_map`` (then labels
            are class numbers and the map's ids must be head outputs).
        dataset: a map-style labelled image dataset (:func:`robustsig.open_dataset` of kind ``folder``, ``csv``,
            ``imagenet``...; ``folder``/``csv`` with ``class_map=`` train the set likelihood); its own transform is
            ignored: the recipe's augmentation is built from ``clf.preprocess``.
        recipe: the training recipe (:func:`robustsig.train.recipes.load_recipe`).
        out_dir: the output folder (see the module docstring). A checkpoint there is resumed when it was made
            with the same recipe, model spec and training set, and refused otherwise.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``; under ``torchrun`` each process takes
            ``cuda:LOCAL_RANK``.
        workers: DataLoader worker processes per training process (results do not depend on it).
        checkpoint_every: steps between checkpoints (0: only at the end).
        restart: discard a checkpoint in ``out_dir`` and start over.
        on_step: called with the number of steps done after every step (after that step's checkpoint).

    Returns:
        the :class:`TrainResult`.

    Raises:
        InputError: the batch does not split over the processes, the dataset cannot be trained on, fp16 without a
            GPU, a recipe ``head`` that ``clf`` does not have, or a checkpoint from another run (another recipe,
            head included, model or training set) in ``out_dir``.

    Example:
        >>> result = train_classifier(clf, rs.open_dataset("folder", "train/"), load_recipe("finetune"),
        ...                           "runs/ft")  # doctest: +SKIP
        >>> result.model_path  # doctest: +SKIP
        PosixPath('runs/ft/model.safetensors')
    """
    if workers < 0 or checkpoint_every < 0:
        raise InputError(f"workers and checkpoint_every must be >= 0, got {workers} and {checkpoint_every}")
    world = world_from_env()
    target = resolve_device(device, world)
    per_rank_batch(recipe.batch_size, world.size)  # every process refuses an uneven split before joining the group
    with process_group(world, target):
        trainer = _Trainer(clf, dataset, recipe, Path(out_dir), world, target, workers, checkpoint_every, on_step)
        with _deterministic_algorithms(recipe.deterministic), nullcontext() if world.is_main else quiet():
            return trainer.run(restart)


def checkpoint_matches(out_dir: str | os.PathLike, clf: Classifier, dataset: Any, recipe: Recipe) -> bool:
    """Whether ``out_dir`` holds a checkpoint that :func:`train_classifier` would resume for this classifier,
    dataset and recipe (same recipe, model spec and head, training files and class map); False when there is none
    or it is unreadable.

    Example:
        >>> checkpoint_matches("runs/ft", clf, dataset, load_recipe("finetune"))  # doctest: +SKIP
        True
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return False
    try:
        check_resumable(load_train_state(path), recipe, _identity(clf, dataset), path)
    except RobustsigError:  # another run's, damaged, or not a training checkpoint
        return False
    return True


class _Trainer:
    """One training run: set-up, resume, epochs, checkpoints (see :func:`train_classifier`)."""

    def __init__(self, clf: Classifier, dataset: Any, recipe: Recipe, out_dir: Path, world: World,
                 device: torch.device, workers: int, checkpoint_every: int, on_step: StepCallback | None) -> None:
        self.clf, self.dataset, self.recipe, self.out_dir = clf, dataset, recipe, out_dir
        self.world, self.device = world, device
        self.checkpoint_every, self.on_step = checkpoint_every, on_step
        per_rank = per_rank_batch(recipe.batch_size, world.size)
        check_training_set(dataset, clf.head.out_features, recipe.batch_size)
        check_recipe_head(clf, recipe.head)
        self.amp_dtype, use_scaler = _precision(recipe.precision, device)
        self.transform = training_transform(clf.preprocess, recipe)
        self.loader, self.sampler = training_loader(dataset, self.transform.per_image, world, per_rank, recipe.seed,
                                                    workers, pin_memory=device.type == "cuda")
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = recipe.epochs * self.steps_per_epoch
        clf.to(device)
        self.params = [p for p in clf.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                           weight_decay=recipe.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.objective = training_objective(dataset, clf.head.out_features, recipe.label_smoothing)
        self.identity = _identity(clf, dataset)
        self.position = Position()
        self.history: list[dict[str, Any]] = []
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, correct, count, skipped
        self.seconds = 0.0  # of the current epoch before this process started it (rank 0's clock)
        self.lr = learning_rate(recipe, 0, self.steps_per_epoch)
        self.rebuildable = bool(clf.meta.get("family") and clf.meta.get("arch"))
        if not self.rebuildable and world.is_main:
            warnings.warn("this classifier records no architecture (meta['family'], meta['arch']), so it cannot be "
                          f"saved as {MODEL_NAME}; its trained weights stay in {CHECKPOINT_NAME} (key 'model')",
                          UserWarning, stacklevel=3)

    # --- paths ----------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_NAME

    @property
    def model_path(self) -> Path:
        return self.out_dir / MODEL_NAME

    # --- the run --------------------------------------------------------------------------------------------
    def run(self, restart: bool) -> TrainResult:
        resumed = self._start(restart)
        finished = self.position.epoch >= self.recipe.epochs  # a finished run started again: nothing to redo
        if not finished:
            model: nn.Module = self.clf
            if self.world.distributed:
                index = [self.device.index] if self.device.type == "cuda" else None
                model = DistributedDataParallel(self.clf, device_ids=index, gradient_as_bucket_view=True)
            self.clf.train()
            try:
                while self.position.epoch < self.recipe.epochs:
                    self._epoch(model)
            finally:
                self.clf.eval()
            self._save_checkpoint()
        self.clf.eval()
        self._record_training()
        if self.world.is_main and self.rebuildable and not (finished and self.model_path.is_file()):
            save_classifier(self.clf, self.model_path)
        barrier(self.world)
        return TrainResult(self.out_dir, self.model_path if self.rebuildable else None, self.checkpoint_path,
                           self.log_path, self.position.step,
                           self.steps_per_epoch, resumed, list(self.history), self.world.size, self.world.rank)

    def _start(self, restart: bool) -> int | None:
        """Resume from the checkpoint in ``out_dir`` (returning its step) or start fresh (``None``)."""
        found = self.checkpoint_path.is_file()
        barrier(self.world)  # every process has looked before rank 0 may remove anything
        resumed = None
        if found and not restart:
            state = load_train_state(self.checkpoint_path)
            check_resumable(state, self.recipe, self.identity, self.checkpoint_path)
            load_into(self.clf, state.model, f"training checkpoint {str(self.checkpoint_path)!r}")
            self.optimizer.load_state_dict(state.optimizer)
            self.scaler.load_state_dict(state.scaler)
            self.position, self.history = state.position, state.history
            self.lr = float(state.schedule["lr"])
            if self.world.is_main:
                totals = state.epoch_totals
                self.totals = torch.tensor([totals.loss_sum, totals.correct, totals.count, totals.skipped],
                                           dtype=torch.float64, device=self.device)
                self.seconds = totals.seconds
            resumed = self.position.step
        barrier(self.world)  # every process has read the checkpoint before rank 0 may replace it
        if self.world.is_main:
            if resumed is None:
                for stale in (self.checkpoint_path, self.model_path, self.log_path):
                    stale.unlink(missing_ok=True)
            write_text_atomic(self.out_dir / RECIPE_NAME, self.recipe.to_yaml())
            self._write_log()
        return resumed

    def _epoch(self, model: nn.Module) -> None:
        epoch, start = self.position.epoch, self.position.batch
        self.sampler.set_epoch(epoch, start_batch=start)
        started = time.perf_counter()
        bar = progress(total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{self.recipe.epochs}",
                       unit="batch")
        try:
            for ids, images, labels, skipped in self.loader:
                self._step(model, images, labels, len(skipped), ids)
                if self.checkpoint_every and self.position.step % self.checkpoint_every == 0 \
                        and self.position.step < self.total_steps:
                    self._save_checkpoint(self.seconds + time.perf_counter() - started)
                if self.on_step is not None:
                    self.on_step(self.position.step)
                bar.update(1)
                if bar.n % 10 == 0 or bar.n == self.steps_per_epoch:
                    bar.set_postfix(lr=f"{self.lr:.3g}", refresh=False)
        finally:
            bar.close()
        self._end_epoch(self.seconds + time.perf_counter() - started)

    def _step(self, model: nn.Module, images: torch.Tensor | None, labels: torch.Tensor | None, skipped: int,
              ids: Any) -> None:
        if images is None:
            raise DataError(f"every image of a training batch failed to decode (dataset indices {list(ids)[:8]}); "
                            "check the dataset folder")
        step = self.position.step
        self.lr = learning_rate(self.recipe, step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        _seed_everything(derived_seed(self.recipe.seed, 1, step, self.world.rank))
        device = self.device
        images = self.transform.on_device(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = model(images)
        loss = self.objective.loss(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.recipe.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            count = labels.numel()
            correct = self.objective.correct(logits, labels)
            self.totals += torch.stack([loss.detach().double() * count, correct.double(),
                                        torch.tensor(float(count), dtype=torch.float64, device=device),
                                        torch.tensor(float(skipped), dtype=torch.float64, device=device)])
        self.position.step += 1
        self.position.batch += 1

    def _end_epoch(self, seconds: float) -> None:
        loss_sum, correct, count, skipped = all_reduce_sum(self.totals, self.world).tolist()
        self.history.append({"epoch": self.position.epoch + 1, "step": self.position.step,
                             "loss": loss_sum / count if count else float("nan"),
                             "accuracy": correct / count if count else float("nan"), "lr": self.lr,
                             "samples": int(count), "skipped": int(skipped), "seconds": round(seconds, 3)})
        self.totals.zero_()
        self.seconds = 0.0
        self.position.epoch += 1
        self.position.batch = 0
        if self.world.is_main:
            self._write_log()

    # --- files (rank 0) and provenance --------------------------------------------------------------------------
    def _save_checkpoint(self, seconds: float = 0.0) -> None:
        """A collective (every process calls it; epoch totals are summed over them); rank 0 writes."""
        loss_sum, correct, count, skipped = all_reduce_sum(self.totals, self.world).tolist()
        if not self.world.is_main:
            return
        state = TrainState(
            recipe=self.recipe.to_dict(), identity=self.identity, position=Position(**asdict(self.position)),
            model={k: v.detach().cpu() for k, v in self.clf.state_dict().items()},
            optimizer=_to_cpu(self.optimizer.state_dict()),
            schedule={"kind": self.recipe.schedule, "step": self.position.step, "lr": self.lr},
            scaler=self.scaler.state_dict(),
            rng={"seed": self.recipe.seed, "data_order": "seed + epoch", "augmentation": "(seed, epoch, sample)",
                 "model": "(seed, step, rank)"},
            epoch_totals=EpochTotals(loss_sum, int(correct), int(count), int(skipped), seconds),
            history=list(self.history))
        save_train_state(state, self.checkpoint_path)

    def _write_log(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.history:
            writer.writerow({key: repr(value) if isinstance(value, float) else value for key, value in row.items()})
        write_text_atomic(self.log_path, text.getvalue())

    def _record_training(self) -> None:
        kind, root = getattr(self.dataset, "kind", "images"), getattr(self.dataset, "root", None)
        self.clf.meta["spec"] = f"{self.recipe.name}({self.identity['spec']}, {kind}:{root})"
        self.clf.meta["random_init"] = False
        self.clf.meta["training"] = {"recipe": self.recipe.to_dict(), "data": {**self.identity["data"], "root": root},
                                     "steps": self.position.step, "world_size": self.world.size,
                                     "history": list(self.history)}


# --- helpers --------------------------------------------------------------------------------------------------
def _precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for a recipe's precision on ``device``."""
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise InputError(f"precision 'fp16' needs a CUDA GPU; this run is on {device} (use 'bf16' or 'fp32')")
    return torch.float16, True


@contextmanager
def _deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` (and no cuDNN autotuning) for the block when ``enabled``;
    the previous settings are restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses deterministic mode without it
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _identity(clf: Classifier, dataset: Any) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the model's spec and head, the training set's files (by their
    paths relative to its root, so a copy of the set elsewhere, e.g. on a node's local disk, still matches) and its
    class map when it has one (it decides the loss)."""
    described = dataset.describe() if hasattr(dataset, "describe") else {}
    data = {key: described.get(key) for key in ("kind", "num_samples", "num_classes", "files_digest")}
    class_map = getattr(dataset, "class_map", None)
    if class_map is not None:
        data["class_map"] = [[int(i) for i in ids] for ids in class_map]
    return {"spec": clf.spec, "head": [clf.head.out_features, clf.head.in_features], "data": data}


def _to_cpu(value: Any) -> Any:
    """A copy of an optimizer state dict with every tensor on the CPU (plain containers kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_cpu(item) for item in value]
    return value
