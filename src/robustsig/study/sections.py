"""The building blocks of a study config that every part shares: the field types (names, paths resolved from the
config file's folder, model specs, fractions), the model, dataset and baseline sections, and the base every
analysis's options section derives from (:class:`AnalysisOptions`).

:mod:`robustsig.study.config` assembles the whole :class:`~robustsig.study.config.StudyConfig` from these and from the
options of every registered analysis (:mod:`robustsig.study.registry`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo,
                      model_validator)

from robustsig._cells import CONTROL, is_formula

MODEL_KINDS: tuple[str, ...] = ("zero-shot", "finetuned", "supervised")
MODEL_SCHEMES: tuple[str, ...] = ("openclip", "timm", "torchvision", "hf", "bundled")
IMAGENET_KINDS: tuple[str, ...] = ("imagenet", "imagenet-v2", "imagenet-r", "imagenet-sketch", "objectnet",
                                   "imagenet-a")
GENERIC_KINDS: tuple[str, ...] = ("folder", "csv", "webdataset")
PAPER_BASELINE: tuple[float, float] = (0.76, -1.49)
"""(b1, b0) of the paper's effective-robustness line."""


PLACEHOLDER_PREFIX = "/path/to/"
"""Paths written by ``robustsig study init`` for the user to replace."""

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]*")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

ModelKind = Literal["zero-shot", "finetuned", "supervised"]
DatasetKind = Literal["imagenet", "imagenet-v2", "imagenet-r", "imagenet-sketch", "objectnet", "imagenet-a",
                      "folder", "csv", "webdataset"]
Autocast = Literal["none", "fp16", "bf16"]
Basis = Literal["singular", "neuron"]
PruningOrder = Literal["singular", "importance", "random"]


# --------------------------------------------------------------------------- field types

def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``name``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("expected a name of letters, digits and . _ + @ - (no spaces or slashes) starting with a "
                         f"letter or digit; got {value!r}")
    return value


def _check_label(value: str) -> str:
    if is_formula(value) or CONTROL.search(value):
        raise ValueError("expected a label without control characters (line breaks, tabs) that does not start with "
                         f"= + - @ (a spreadsheet would run it as a formula); got {value!r}")
    return value


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    path = path.expanduser()
    base = (info.context or {}).get("base_dir")
    if base is not None and not path.is_absolute():
        path = Path(os.path.normpath(Path(base) / path))
    return path


def _non_empty_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("expected a path; got an empty string")
    return value


def spec_weights_path(spec: str) -> str | None:
    """The local file or folder a model spec loads its weights from, or None when it names none.

    ``openclip:ViT-B-32@/ckpt/ft.safetensors`` -> ``/ckpt/ft.safetensors``; ``openclip:ViT-B-32@openai`` -> None
    (a pretrained tag); ``hf:./my-model`` -> ``./my-model``; ``openclip:ViT-B-32@local-dir:/models/x`` ->
    ``/models/x``.
    """
    _, _, rest = spec.partition(":")
    weights = rest.rpartition("@")[2] if "@" in rest else (rest if spec.startswith("hf:") else "")
    if weights.startswith("local-dir:"):
        return weights[len("local-dir:"):]
    if weights.startswith("hf-hub:"):
        return None
    if weights.startswith(("/", "./", "../", "~")) or weights.lower().endswith(_CHECKPOINT_SUFFIXES):
        return weights
    return None


def _check_spec(value: str, info: ValidationInfo) -> str:
    if CONTROL.search(value):
        raise ValueError(f"expected a model spec without control characters (line breaks, tabs); got {value!r}")
    scheme, colon, rest = value.partition(":")
    if not colon or scheme not in MODEL_SCHEMES or not rest.strip() or rest.startswith("@"):
        raise ValueError(f"expected a model spec SCHEME:NAME[@WEIGHTS] with SCHEME one of "
                         f"{', '.join(MODEL_SCHEMES)} (e.g. 'openclip:ViT-B-32@openai'); got {value!r}")
    weights = spec_weights_path(value)
    if weights is not None:
        resolved = str(resolve_path(Path(weights), info))
        value = value[: len(value) - len(weights)] + resolved
    return value


def check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {value!r}")
    return value


def unique_values(values: list) -> list:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"expected distinct values; repeated: {', '.join(repeated)}")
    return values


def fractions_below_one(values: list[float]) -> list[float]:
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"expected fractions in [0, 1); got {bad}")
    return unique_values(values)


def interpolation_weights(values: list[float]) -> list[float]:
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"expected interpolation weights in [0, 1]; got {bad}")
    return unique_values(values)


PATH_OPTIONS: tuple[str, ...] = ("class_map", "ground_truth", "mappings")
"""Dataset options that name a file or folder the study reads (``class_map`` may also be an inline mapping)."""


def _resolve_path_options(options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """The path options of a dataset read from the config file's folder, as its root is."""
    return {key: str(resolve_path(Path(value), info)) if key in PATH_OPTIONS and isinstance(value, str) and value.strip()
            else value for key, value in options.items()}


def _all_layers(value: Any) -> Any:
    return None if value == "all" else value


Name = Annotated[str, AfterValidator(check_name)]
Label = Annotated[str, AfterValidator(_check_label)]
StudyPath = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(resolve_path)]
ModelSpec = Annotated[str, AfterValidator(_check_spec)]
Layers = Annotated[list[str] | None, BeforeValidator(_all_layers)]


class Section(BaseModel):
    """A config section: unknown keys are errors, values are frozen, NaN and infinity are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no NaN line, no inf fraction


# --------------------------------------------------------------------------- models and datasets

class ModelEntry(Section):
    """One model of the pool. ``backbone`` x ``pretraining`` is its row in the paper's tables, ``kind`` its column."""

    name: Name = Field(description="a short unique model name (letters, digits, . _ + @ -)")
    spec: ModelSpec = Field(description="a model spec such as 'openclip:ViT-B-32@openai'")
    backbone: Label = Field(min_length=1, description="the architecture the tables group by, e.g. 'ViT-B-32'")
    pretraining: Label = Field(min_length=1, description="the pretraining data tag, e.g. 'openai' or 'imagenet-1k'")
    kind: ModelKind = Field(description="one of 'zero-shot', 'finetuned', 'supervised'")
    classnames: StudyPath | None = Field(default=None, description="a text file of class names, one per line")
    templates: StudyPath | None = Field(default=None, description="a text file of prompt templates with '{}'")


class DatasetEntry(Section):
    """An evaluation set: the in-distribution set or one natural shift."""

    name: Name = Field(description="a unique dataset name (defaults to the kind)")
    kind: DatasetKind = Field(description=f"one of {', '.join(IMAGENET_KINDS + GENERIC_KINDS)}")
    root: StudyPath = Field(description="the dataset's root folder")
    options: Annotated[dict[str, Any], AfterValidator(_resolve_path_options)] = Field(
        default_factory=dict, description="extra options passed to rs.open_dataset for this kind")

    @model_validator(mode="before")
    @classmethod
    def _name_from_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("kind"), str):
            data = {**data, "name": data["kind"]}
        return data


class BrodenEntry(Section):
    """The Broden concept dataset (``index.csv``, ``label.csv``, ``images/``)."""

    name: Name = "broden"
    kind: Literal["broden"] = "broden"
    root: StudyPath = Field(description="the Broden folder (the one holding index.csv)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="extra options passed to rs.open_dataset('broden', ...)")


class Datasets(Section):
    id: DatasetEntry = Field(description="the in-distribution set, e.g. {kind: imagenet, root: ...}")
    shift: list[DatasetEntry] = Field(default_factory=list, description="the natural-shift sets")
    broden: BrodenEntry | None = Field(default=None, description="the Broden concept set {root: ...}")

    def evaluation(self) -> list[DatasetEntry]:
        """The in-distribution set, then the shift sets."""
        return [self.id, *self.shift]


class Baseline(Section):
    """The effective-robustness line ``logit(ACC(S)) = b1 logit(ACC(I)) + b0``: the paper's, or refitted."""

    b1: float = PAPER_BASELINE[0]
    b0: float = PAPER_BASELINE[1]
    fit_csv: StudyPath | None = Field(default=None, description="a CSV with columns acc_id, acc_shift (fractions)")

    @model_validator(mode="after")
    def _line_or_fit(self) -> Baseline:
        given = {"b1", "b0"} & self.model_fields_set
        if self.fit_csv is not None and given:
            raise ValueError("expected either b1 and b0 (a fixed line) or fit_csv (refit from baseline "
                             "accuracies), not both")
        if len(given) == 1:
            raise ValueError(f"expected both b1 and b0; only {given.pop()} is given")
        return self



# --------------------------------------------------------------------------- the base of every analysis's options

class AnalysisOptions(Section):
    """The base of an analysis's options (its YAML section under ``analyses:``): a section that is present runs
    (``kurtosis:`` alone means: with the defaults); ``enabled: false`` keeps the options but skips it."""

    enabled: bool = True
