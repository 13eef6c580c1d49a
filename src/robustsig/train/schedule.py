"""The learning rate at each optimiser step: a pure function of the recipe and the step.

The rate depends on nothing but ``(recipe, step, steps_per_epoch)``, so a resumed run sets exactly the rates an
uninterrupted run would, and the scheduler's state in a checkpoint is just the step counter.

- warm-up (every schedule): ``lr * (step + 1) / warmup_steps`` while ``step < warmup_steps`` (wise-ft's form);
- ``cosine``: after warm-up, ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))) * lr`` (wise-ft's
  ``cosine_lr``);
- ``step``: ``lr * gamma ** (milestones passed)``, a milestone epoch ``m`` taking effect at step
  ``m * steps_per_epoch`` (the warm-up factor multiplies it while it lasts);
- ``constant``: ``lr`` after warm-up.

Example:
    >>> from robustsig.train.recipes import load_recipe
    >>> recipe = load_recipe("supervised", warmup_steps=0)
    >>> [round(learning_rate(recipe, step, steps_per_epoch=10), 12) for step in (0, 299, 300, 600)]
    [0.001, 0.001, 0.0001, 1e-05]
"""

from __future__ import annotations

import bisect
import math

from robustsig.train.recipes import Recipe


def learning_rate(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based).

    Args:
        recipe: the schedule's parameters (``lr``, ``schedule``, ``warmup_steps``, ``lr_milestones``, ``lr_gamma``).
        step: the step about to be taken, ``0 <= step < recipe.epochs * steps_per_epoch``.
        steps_per_epoch: optimiser steps per epoch (global batches per epoch).
    """
    warmup = recipe.warmup_steps
    if recipe.schedule == "cosine" and step >= warmup:
        span = max(recipe.epochs * steps_per_epoch - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span)) * recipe.lr
    rate = recipe.lr
    if recipe.schedule == "step":
        rate *= recipe.lr_gamma ** bisect.bisect_right([m * steps_per_epoch for m in recipe.lr_milestones], step)
    return rate * (step + 1) / warmup if step < warmup else rate
