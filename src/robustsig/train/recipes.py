"""Training recipes as data: the paper's finetuning (appendix D.1) and supervised (D.2) recipes, overridable.

A :class:`Recipe` holds every value that decides the trained weights (optimiser, schedule, augmentation,
precision, seed). Run options that do not change the result (data-loader workers, checkpoint interval,
device) are not part of it. Overrides come from a YAML file (read safely, alias bombs refused: :mod:`robustsig._yaml`)
and/or keyword arguments (the command-line options); every value is validated and all problems are reported at once.

=======================  ==============================  ===================================================
field                    ``finetune`` (D.1)              ``supervised`` (D.2)
=======================  ==============================  ===================================================
epochs                   10                              90
batch_size (global)      256                             1024
lr (AdamW)               3e-5                            1e-3
weight_decay             0.1                             1e-2
schedule                 cosine, 500 warm-up steps       step: x0.1 at epochs 30 and 60, 5,000 warm-up steps
label_smoothing          0                               0.1
grad_clip (max norm)     1.0                             none
augmentation             random resized crop, area       random resized crop, area 0.08-1, horizontal flip
                         0.9-1, no flip
head                     ``wiseft``: wise-ft's: the      ``linear``: a linear layer with bias on the raw
                         starting head with a trainable  (unnormalised) embedding; ``normalized-linear`` is
                         bias (OpenCLIP: the zero-shot   the bias-free layer on the L2-normalised embedding
                         weights on the normalised       (see :mod:`robustsig.train.heads`)
                         embedding, a bias started at
                         0); ``normalized-linear``: the
                         bias-free zero-shot head
=======================  ==============================  ===================================================

D.1 follows wise-ft's finetuning code (``mlfoundations/wise-ft``, ``src/models/finetune.py``): AdamW over all
parameters, cosine schedule with linear warm-up (``lr * (step + 1) / warmup``), gradient norm clipped at 1.0,
label smoothing off by default, CLIP's *training* transform (``RandomResizedCrop(scale=(0.9, 1.0))``, bicubic, no
flip; open_clip's ``is_train=True`` transform is the same), and its head (``src/models/modeling.py``,
``ClassificationHead``: the zero-shot weights and a bias of zeros, both trained; ``head: wiseft``).

Example:
    >>> recipe = load_recipe("finetune", lr=1e-5)
    >>> recipe.lr, recipe.epochs, recipe.schedule
    (1e-05, 10, 'cosine')
    >>> load_recipe("supervised").lr_milestones
    (30, 60)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import yaml

from robustsig._yaml import safe_load
from robustsig.errors import InputError

Schedule = Literal["cosine", "step", "constant"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Head = Literal["linear", "normalized-linear", "wiseft"]
SCHEDULES: tuple[str, ...] = ("cosine", "step", "constant")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
HEADS: tuple[str, ...] = ("linear", "normalized-linear")
"""The heads a model trained from scratch can get (:mod:`robustsig.train.heads`); D.2's is the first."""
FINETUNE_HEADS: tuple[str, ...] = ("wiseft", "normalized-linear", "linear")
"""The heads a finetuning can train (:mod:`robustsig.train.heads`); D.1's is the first."""
RECIPE_HEADS: tuple[str, ...] = ("linear", "normalized-linear", "wiseft")
"""Every value of a recipe's ``head`` key besides null."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights.

    Attributes:
        name: the recipe it started from (``finetune`` or ``supervised``); informational.
        epochs: passes over the training set.
        batch_size: the *global* batch (summed over all processes; each of ``W`` processes takes
            ``batch_size / W``, which must be whole). The last incomplete batch of an epoch is dropped.
        lr: AdamW's peak learning rate.
        weight_decay: AdamW's decoupled weight decay (on every parameter, as wise-ft does).
        betas, eps: AdamW's moment coefficients and epsilon.
        warmup_steps: linear warm-up, ``lr * (step + 1) / warmup_steps`` for the first steps.
        schedule: ``cosine`` (to 0 at the last step), ``step`` (times ``lr_gamma`` at each of
            ``lr_milestones``) or ``constant``.
        lr_milestones: epochs at which the ``step`` schedule multiplies the learning rate by ``lr_gamma``.
        lr_gamma: the factor of the ``step`` schedule.
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        grad_clip: maximum global gradient norm, or ``None`` for no clipping.
        crop_scale: area range of ``RandomResizedCrop``; ``None`` trains on the model's eval preprocessing.
        hflip: random horizontal flips.
        image_size: training crop size; ``None`` uses the crop size of the model's preprocessing.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (fp16 with a gradient scaler; both need a GPU, except
            bf16 which also runs on CPU), or ``auto`` (bf16 on a GPU that supports it, fp16 on older GPUs,
            fp32 on CPU).
        seed: seeds the initialisation of new weights, the data order and every random augmentation.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (needed on GPUs for bit-exact resumes).
        head: the head trained (see :mod:`robustsig.train.heads`): from scratch one of :data:`HEADS`; finetuning
            one of :data:`FINETUNE_HEADS` (``wiseft``, D.1's: the starting head with a trainable bias, added at 0
            where it has none), or ``None`` to train whatever head the classifier has. It decides the trained
            weights and what ``h`` is, so a resume with another head is refused like any other recipe change.
    """

    name: str = "custom"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500
    schedule: Schedule = "cosine"
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    crop_scale: tuple[float, float] | None = (0.9, 1.0)
    hflip: bool = False
    image_size: int | None = None
    precision: Precision = "auto"
    seed: int = 0
    deterministic: bool = False
    head: Head | None = None

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise InputError(_message(f"recipe {self.name!r}", problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), for YAML, JSON and checkpoints."""
        return {name: _plain(getattr(self, name)) for name in FIELDS}

    def to_yaml(self) -> str:
        """The recipe as a YAML file that :func:`load_recipe` reads back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_recipe(base: str | Recipe = "finetune", path: str | os.PathLike | None = None, **overrides: Any) -> Recipe:
    """A recipe: ``base``, then the values of a YAML file, then keyword overrides.

    Args:
        base: ``"finetune"`` (D.1), ``"supervised"`` (D.2), or a :class:`Recipe`. A YAML file may name its own base
            with a ``base:`` key.
        path: a YAML file holding a mapping of recipe fields (e.g. ``lr: 1.0e-5``); unknown keys are errors.
        **overrides: recipe fields (``grad_clip=None``, ``crop_scale=None``... set them to none).

    Returns:
        the validated :class:`Recipe`.

    Raises:
        InputError: unknown base or field, a value of the wrong type or out of range (every problem listed, each
            naming its key), an unreadable or malformed YAML file.

    Example:
        >>> load_recipe("supervised", epochs=3, lr_milestones=[1, 2]).lr_milestones
        (1, 2)
    """
    values: dict[str, Any] = {}
    source = f"the {base.name if isinstance(base, Recipe) else base!r} recipe with the values given"
    if path is not None:
        source = str(path)
        values.update(_read_yaml(Path(path)))
        base = values.pop("base", base)
    recipe = _base(base, source)
    values.update(overrides)
    unknown = [key for key in values if key not in FIELDS]
    if unknown:
        raise InputError(_message(source, [f"{key}: unknown recipe key{_close(key)}; recipe keys: base, "
                                           f"{', '.join(FIELDS)}" for key in unknown]))
    problems: list[str] = []
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = _CONVERTERS[key](value)
        except (TypeError, ValueError) as err:
            problems.append(f"{key}: {err}; got {value!r}")
    if problems:
        raise InputError(_message(source, problems))
    merged = {**{k: getattr(recipe, k) for k in FIELDS}, **converted}
    problems = _problems(SimpleNamespace(**merged))
    if problems:
        raise InputError(_message(source, problems))
    return Recipe(**merged)


# --- validation ----------------------------------------------------------------------------------------------
def _problems(recipe: Any) -> list[str]:
    """Every range or consistency problem of a recipe (already converted to the right types)."""
    problems = []
    if not isinstance(recipe.name, str) or not recipe.name.strip():
        problems.append(f"name: expected a non-empty name; got {recipe.name!r}")

    def check(ok: bool, key: str, expected: str) -> None:
        if not ok:
            problems.append(f"{key}: expected {expected}; got {_plain(getattr(recipe, key))!r}")

    check(_is_int(recipe.epochs) and recipe.epochs >= 1, "epochs", "an integer >= 1")
    check(_is_int(recipe.batch_size) and recipe.batch_size >= 1, "batch_size", "an integer >= 1 (the global batch)")
    check(_is_number(recipe.lr) and recipe.lr > 0, "lr", "a learning rate > 0")
    check(_is_number(recipe.weight_decay) and recipe.weight_decay >= 0, "weight_decay", "a number >= 0")
    check(isinstance(recipe.betas, tuple) and len(recipe.betas) == 2
          and all(_is_number(b) and 0 <= b < 1 for b in recipe.betas), "betas", "two numbers in [0, 1)")
    check(_is_number(recipe.eps) and recipe.eps > 0, "eps", "a number > 0")
    check(_is_int(recipe.warmup_steps) and recipe.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
    check(recipe.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}")
    milestones = recipe.lr_milestones
    well_formed = (isinstance(milestones, tuple) and all(_is_int(m) for m in milestones)
                   and list(milestones) == sorted(set(milestones)))
    in_range = (not well_formed or recipe.schedule != "step" or not _is_int(recipe.epochs)
                or all(0 < m < recipe.epochs for m in milestones))  # milestones only matter to the step schedule
    check(well_formed and in_range,
          "lr_milestones", f"strictly increasing epochs between 1 and epochs - 1 = {recipe.epochs - 1} (when "
          "changing epochs, change the milestones too, or use schedule 'constant' or 'cosine')")
    if recipe.schedule == "step" and not milestones and not problems:
        problems.append("lr_milestones: the 'step' schedule needs at least one milestone epoch")
    check(_is_number(recipe.lr_gamma) and 0 < recipe.lr_gamma <= 1, "lr_gamma", "a factor in (0, 1]")
    check(_is_number(recipe.label_smoothing) and 0 <= recipe.label_smoothing < 1, "label_smoothing",
          "a number in [0, 1)")
    check(recipe.grad_clip is None or (_is_number(recipe.grad_clip) and recipe.grad_clip > 0), "grad_clip",
          "a maximum gradient norm > 0, or null for none")
    scale = recipe.crop_scale
    check(scale is None or (isinstance(scale, tuple) and len(scale) == 2 and all(_is_number(s) for s in scale)
                            and 0 < scale[0] <= scale[1] <= 1),
          "crop_scale", "[min, max] with 0 < min <= max <= 1 (areas of the random resized crop), or null")
    check(isinstance(recipe.hflip, bool), "hflip", "true or false")
    check(recipe.image_size is None or (_is_int(recipe.image_size) and recipe.image_size >= 8), "image_size",
          "an integer >= 8, or null for the model's crop size")
    check(recipe.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    check(_is_int(recipe.seed) and recipe.seed >= 0, "seed", "an integer >= 0")
    check(isinstance(recipe.deterministic, bool), "deterministic", "true or false")
    check(recipe.head is None or recipe.head in RECIPE_HEADS, "head",
          f"one of {', '.join(HEADS)} (training from scratch), {', '.join(FINETUNE_HEADS)} (finetuning), or null "
          "(train the head the model has)")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        value = value.strip().replace("_", "")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("expected an integer") from None


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number, not a boolean")
    try:
        number = float(value)  # YAML reads 3e-5 (no dot) as a string: float() takes it
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _to_optional_float(value: Any) -> float | None:
    return None if _is_none(value) else _to_float(value)


def _to_optional_int(value: Any) -> int | None:
    return None if _is_none(value) else _to_int(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise ValueError("expected true or false")


def _to_pair(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split()]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("expected two numbers")
    return (_to_float(value[0]), _to_float(value[1]))


def _to_optional_pair(value: Any) -> tuple[float, float] | None:
    return None if _is_none(value) else _to_pair(value)


def _to_int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split()]
    if _is_int(value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of epochs")
    return tuple(_to_int(v) for v in value)


def _to_choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}{_close(text, choices)}")
        return text
    return convert


def _to_optional_choice(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    choice = _to_choice(choices)

    def convert(value: Any) -> str | None:
        if _is_none(value):
            return None
        try:
            return choice(value)
        except ValueError as err:
            raise ValueError(f"{err}, or null") from None
    return convert


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off", ""))


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "name": str, "epochs": _to_int, "batch_size": _to_int, "lr": _to_float, "weight_decay": _to_float,
    "betas": _to_pair,
    "eps": _to_float, "warmup_steps": _to_int, "schedule": _to_choice(SCHEDULES), "lr_milestones": _to_int_tuple,
    "lr_gamma": _to_float, "label_smoothing": _to_float, "grad_clip": _to_optional_float,
    "crop_scale": _to_optional_pair, "hflip": _to_bool, "image_size": _to_optional_int,
    "precision": _to_choice(PRECISIONS), "seed": _to_int, "deterministic": _to_bool,
    "head": _to_optional_choice(RECIPE_HEADS),
}


def _base(base: str | Recipe, source: str) -> Recipe:
    if isinstance(base, Recipe):
        return base
    recipe = RECIPES.get(str(base).strip().lower())
    if recipe is None:
        raise InputError(f"{source}: unknown base recipe {base!r}{_close(str(base), RECIPES)}; built-in recipes: "
                         f"{', '.join(RECIPES)}")
    return recipe


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"recipe file {str(path)!r} not found; pass a YAML file of recipe keys (e.g. 'lr: 1.0e-5')")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read recipe file {str(path)!r}: {err}") from None
    data = safe_load(text, f"recipe file {str(path)!r}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"recipe file {str(path)!r} holds a {type(data).__name__}; expected a mapping of recipe "
                         "keys to values (e.g. 'epochs: 5')")
    return {str(key): value for key, value in data.items()}


def _close(word: str, choices=None) -> str:
    matches = difflib.get_close_matches(word, list(FIELDS if choices is None else choices), n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _message(source: str, problems: list[str]) -> str:
    count = len(problems)
    return (f"{source} is not a valid training recipe ({count} problem{'s' if count != 1 else ''}):\n"
            + "\n".join(f"  - {problem}" for problem in problems))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


FINETUNE = Recipe(name="finetune", epochs=10, batch_size=256, lr=3e-5, weight_decay=0.1, warmup_steps=500,
                  schedule="cosine", label_smoothing=0.0, grad_clip=1.0, crop_scale=(0.9, 1.0), hflip=False,
                  head="wiseft")
"""Appendix D.1: end-to-end finetuning of a zero-shot CLIP classifier (wise-ft's recipe and head, batch 256)."""

SUPERVISED = Recipe(name="supervised", epochs=90, batch_size=1024, lr=1e-3, weight_decay=1e-2, warmup_steps=5000,
                    schedule="step", lr_milestones=(30, 60), lr_gamma=0.1, label_smoothing=0.1, grad_clip=None,
                    crop_scale=(0.08, 1.0), hflip=True, head="linear")
"""Appendix D.2: ImageNet training from scratch (CLIP ResNets as supervised baselines). The paper does not say
which head; ``linear`` is the usual supervised one (the reasons: :mod:`robustsig.train.heads`)."""

RECIPES: dict[str, Recipe] = {"finetune": FINETUNE, "supervised": SUPERVISED}
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe))
