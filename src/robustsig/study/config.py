"""The study config: one YAML file naming a model pool, dataset roots and the analyses to run.

Validation happens in two steps:

1. *structure* (:func:`load_study_config`): keys, types, allowed values and cross references (every model or
   dataset an analysis names exists). Unknown keys are rejected. Every problem is reported at once, each line
   naming its key path and what was expected there.
2. *files* (:meth:`StudyConfig.check_paths`): the dataset roots, checkpoints and other files exist. The paper
   preset is structurally valid while its ``/path/to/...`` placeholders are still unfilled; this step lists
   every one of them.

Relative paths (dataset roots, checkpoints in specs, output folders) are read from the config file's folder.

Example:
    >>> from robustsig.study.config import validate_study_config
    >>> config = validate_study_config({
    ...     "output_dir": "/tmp/study", "store_dir": "/tmp/study/store",
    ...     "models": [{"name": "mnv2", "spec": "bundled:mobilenet_v2", "backbone": "MobileNetV2",
    ...                 "pretraining": "imagenet-1k", "kind": "supervised"}],
    ...     "datasets": {"id": {"kind": "folder", "root": "/tmp/photos"}},
    ...     "analyses": {"accuracy": None, "kurtosis": None}})
    >>> config.enabled_analyses()
    ['accuracy', 'kurtosis']
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveInt,
                      ValidationError, ValidationInfo, model_validator)

from robustsig._cells import CONTROL, is_formula
from robustsig._yaml import SafeLoader, safe_load
from robustsig.errors import DataError, InputError
from robustsig.study._messages import format_validation_error

ANALYSES: tuple[str, ...] = ("accuracy", "kurtosis", "importance", "pruning", "concepts", "cka", "wiseft",
                              "layer_kurtosis", "lowrank", "predict_er")
"""The analyses a study can run, in the order they run (and the names ``--only`` accepts)."""

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

def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("expected a name of letters, digits and . _ + @ - (no spaces or slashes) starting with a "
                         f"letter or digit; got {value!r}")
    return value


def _check_label(value: str) -> str:
    if is_formula(value) or CONTROL.search(value):
        raise ValueError("expected a label without control characters (line breaks, tabs) that does not start with "
                         f"= + - @ (a spreadsheet would run it as a formula); got {value!r}")
    return value


def _resolve(path: Path, info: ValidationInfo) -> Path:
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
        resolved = str(_resolve(Path(weights), info))
        value = value[: len(value) - len(weights)] + resolved
    return value


def _check_device(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {value!r}")
    return value


def _unique(values: list) -> list:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"expected distinct values; repeated: {', '.join(repeated)}")
    return values


def _fractions(values: list[float]) -> list[float]:
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"expected fractions in [0, 1); got {bad}")
    return _unique(values)


def _alphas(values: list[float]) -> list[float]:
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"expected interpolation weights in [0, 1]; got {bad}")
    return _unique(values)


PATH_OPTIONS: tuple[str, ...] = ("class_map", "ground_truth", "mappings")
"""Dataset options that name a file or folder the study reads (``class_map`` may also be an inline mapping)."""


def _resolve_path_options(options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """The path options of a dataset read from the config file's folder, as its root is."""
    return {key: str(_resolve(Path(value), info)) if key in PATH_OPTIONS and isinstance(value, str) and value.strip()
            else value for key, value in options.items()}


def _all_layers(value: Any) -> Any:
    return None if value == "all" else value


Name = Annotated[str, AfterValidator(_check_name)]
Label = Annotated[str, AfterValidator(_check_label)]
StudyPath = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve)]
ModelSpec = Annotated[str, AfterValidator(_check_spec)]
Layers = Annotated[list[str] | None, BeforeValidator(_all_layers)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no NaN line, no inf fraction


# --------------------------------------------------------------------------- models and datasets

class ModelEntry(_Section):
    """One model of the pool. ``backbone`` x ``pretraining`` is its row in the paper's tables, ``kind`` its column."""

    name: Name = Field(description="a short unique model name (letters, digits, . _ + @ -)")
    spec: ModelSpec = Field(description="a model spec such as 'openclip:ViT-B-32@openai'")
    backbone: Label = Field(min_length=1, description="the architecture the tables group by, e.g. 'ViT-B-32'")
    pretraining: Label = Field(min_length=1, description="the pretraining data tag, e.g. 'openai' or 'imagenet-1k'")
    kind: ModelKind = Field(description="one of 'zero-shot', 'finetuned', 'supervised'")
    classnames: StudyPath | None = Field(default=None, description="a text file of class names, one per line")
    templates: StudyPath | None = Field(default=None, description="a text file of prompt templates with '{}'")


class DatasetEntry(_Section):
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


class BrodenEntry(_Section):
    """The Broden concept dataset (``index.csv``, ``label.csv``, ``images/``)."""

    name: Name = "broden"
    kind: Literal["broden"] = "broden"
    root: StudyPath = Field(description="the Broden folder (the one holding index.csv)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="extra options passed to rs.open_dataset('broden', ...)")


class Datasets(_Section):
    id: DatasetEntry = Field(description="the in-distribution set, e.g. {kind: imagenet, root: ...}")
    shift: list[DatasetEntry] = Field(default_factory=list, description="the natural-shift sets")
    broden: BrodenEntry | None = Field(default=None, description="the Broden concept set {root: ...}")

    def evaluation(self) -> list[DatasetEntry]:
        """The in-distribution set, then the shift sets."""
        return [self.id, *self.shift]


class Baseline(_Section):
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


# --------------------------------------------------------------------------- analyses

class _Analysis(_Section):
    enabled: bool = True


class AccuracyOptions(_Analysis):
    """Top-1 accuracy on every evaluation set, and ER (eq. 1) when shift sets are given."""


class KurtosisOptions(_Analysis):
    """Activation kurtosis (eq. 2) of the head's input."""

    dataset: str | None = Field(default=None, description="the dataset to compute it on (default: the id set)")


class ImportanceOptions(_Analysis):
    """Importance of the head's singular directions (eq. 4) and the privileged ones."""

    dataset: str | None = Field(default=None, description="the dataset to compute it on (default: the id set)")
    privileged_ratio: float | None = Field(default=None, gt=0,
                                           description="importance / mean importance above which a direction "
                                                       "is privileged (null: robustsig's default)")


class PruningOptions(_Analysis):
    """Accuracy and ER after pruning the least important singular directions of the head."""

    fractions: Annotated[list[float], AfterValidator(_fractions)] = Field(
        default_factory=lambda: [round(0.05 * i, 2) for i in range(20)], min_length=1,
        description="fractions of directions to prune, in [0, 1)")
    orders: Annotated[list[PruningOrder], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["singular", "importance", "random"], min_length=1,
        description="pruning orders: singular (the paper's), importance, random (controls)")
    datasets: list[str] | None = Field(default=None, description="dataset names (default: id and shift sets)")
    seed: int = 0


class ConceptsOptions(_Analysis):
    """Concept probing on Broden: AP of every direction for every concept."""

    threshold: float = Field(default=0.9, gt=0, le=1, description="the AP above which a concept is encoded")
    min_positives: PositiveInt = Field(default=10, description="concepts with fewer positive images are skipped")
    bases: Annotated[list[Basis], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["singular", "neuron"], min_length=1,
        description="directions probed: singular (the head's) and/or neuron (the canonical basis)")
    top_k: PositiveInt = Field(default=3, description="concepts listed for the most privileged direction")
    seed: int = 0
    venn_groups: list[Annotated[list[str], Field(min_length=2)]] | None = Field(
        default=None, description="lists of model names whose concept sets a Venn diagram compares "
                                  "(default: zero-shot, finetuned and supervised per backbone and pretraining)")
    orientation: Literal["positive", "both"] = Field(
        default="both", description="both: a direction encodes a concept when it separates it on either side "
                                    "(max of AP(s) and AP(-s); a singular vector's sign is arbitrary); positive: "
                                    "only the side the SVD's sign convention points to")
    thresholds: Annotated[list[Annotated[float, Field(gt=0, le=1)]], AfterValidator(_unique)] = Field(
        default_factory=lambda: [0.8, 0.85, 0.9, 0.95], min_length=1,
        description="AP thresholds of the sensitivity sweep (unique concepts and polysemanticity at each)")
    permutations: NonNegativeInt = Field(default=1000, description="label permutations per concept of the "
                                         "significance test of the concept counts (0: no test)")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="false discovery rate of the significant concept count")


class CkaPair(_Section):
    model_a: str = Field(description="a model name")
    model_b: str = Field(description="a model name")
    layers: Layers = Field(default=None, description="layer names of model_a, or 'all'")
    layers_b: Layers = Field(default=None, description="layer names of model_b (default: the same as layers)")
    cross: bool = Field(default=False, description="every layer of a against every layer of b (a heatmap)")
    dataset: str | None = Field(default=None, description="only this dataset for this pair (default: the "
                                                          "analysis's datasets)")


class CkaOptions(_Analysis):
    """Layer-by-layer CKA between paired models."""

    pairs: list[CkaPair] = Field(min_length=1, description="a list of {model_a, model_b, layers}")
    kernel: Literal["linear", "rbf"] = "linear"
    unbiased: bool = False
    pooling: Literal["auto", "cls", "mean"] = "auto"
    dataset: str | None = Field(default=None, description="the only dataset to compute it on (default: the id set "
                                                          "and every shift set)")
    estimator: Literal["minibatch", "pooled"] = Field(
        default="minibatch", description="minibatch: the paper's (torch_cka: flattened layer outputs, unbiased HSIC "
                                         "summed over minibatches, both models in one pass); pooled: CKA over every "
                                         "image of the pooled layers in the stores (kernel, unbiased, pooling)")
    minibatch: int = Field(default=256, ge=4, description="images per minibatch of the minibatch estimator")

    @model_validator(mode="after")
    def _linear_minibatch(self) -> CkaOptions:
        if self.estimator == "minibatch" and self.kernel != "linear":
            raise ValueError(f"kernel {self.kernel!r} needs estimator: pooled; the minibatch estimator (the paper's, "
                             "torch_cka) is linear")
        return self


class WiseFtPair(_Section):
    name: Name = Field(description="the pair's name in wiseft.csv (defaults to the zero-shot model's)")
    zero_shot: str = Field(description="the model at alpha = 0")
    finetuned: str = Field(description="the model at alpha = 1")

    @model_validator(mode="before")
    @classmethod
    def _name_from_zero_shot(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("zero_shot"), str):
            data = {**data, "name": data["zero_shot"]}
        return data


class WiseFtOptions(_Analysis):
    """Wise-FT sweeps: ACC, ER, kurtosis and unique concepts of (1 - alpha) theta0 + alpha theta1."""

    pairs: list[WiseFtPair] = Field(min_length=1, description="a list of {zero_shot, finetuned}")
    alphas: Annotated[list[float], AfterValidator(_alphas)] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)], min_length=1,
        description="interpolation weights in [0, 1]")
    kurtosis: bool = True
    concepts: bool = Field(default=True, description="unique concepts per alpha (needs datasets.broden)")


class LayerKurtosisOptions(_Analysis):
    """Kurtosis (eq. 2) and outlier dimensions of every layer tap, per model and dataset (pooled layer vectors)."""

    models: list[str] | None = Field(default=None, description="model names (default: every model)")
    datasets: list[str] | None = Field(default=None, description="dataset names (default: id and shift sets)")


class LowRankOptions(_Analysis):
    """A low-rank model of the whole encoder: every linear map keeps its most important singular directions."""

    fractions: Annotated[list[float], AfterValidator(_fractions)] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75], min_length=1,
        description="fractions removed, in [0, 1): of each map's rank (budget: rank) or of the maps' parameters")
    orders: Annotated[list[PruningOrder], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["importance", "singular", "random"], min_length=1,
        description="directions pruned first: importance (eq. 4 on each map's inputs), singular, random")
    budget: Literal["rank", "parameters"] = "rank"
    calibration_images: PositiveInt | None = Field(default=256, description="id images of the calibration pass "
                                                                            "(null: all)")
    models: list[str] | None = Field(default=None, description="model names (default: every model)")
    datasets: list[str] | None = Field(default=None, description="dataset names (default: id and shift sets)")
    seed: int = 0


class PredictErOptions(_Analysis):
    """Signatures as ER predictors: the signature table, leave-one-model-out prediction of ER against the label-free
    baselines DoC and ATC, and Wise-FT tracking (robustsig.study.analyses.predict_er)."""

    label_free: bool = Field(default=True, description="DoC and ATC predicted ER from the stored logits")
    combination: list[str] | None = Field(default=None, description="signatures the ridge combination uses "
                                          "(default: every signature known for every model)")
    resamples: PositiveInt = Field(default=2000, description="bootstrap resamples of the models")
    seed: int = 0


class Analyses(_Section):
    """The analyses to run. A key that is present runs (``kurtosis:`` alone means: with the defaults);
    ``enabled: false`` keeps the options but skips it."""

    accuracy: AccuracyOptions | None = None
    kurtosis: KurtosisOptions | None = None
    importance: ImportanceOptions | None = None
    pruning: PruningOptions | None = None
    concepts: ConceptsOptions | None = None
    cka: CkaOptions | None = None
    wiseft: WiseFtOptions | None = None
    layer_kurtosis: LayerKurtosisOptions | None = None
    lowrank: LowRankOptions | None = None
    predict_er: PredictErOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {key: ({} if value is None else value) for key, value in data.items()}
        return data

    def enabled(self, name: str) -> bool:
        section = getattr(self, name)
        return section is not None and section.enabled


# --------------------------------------------------------------------------- the study

@dataclass(frozen=True)
class MissingPath:
    """A file or folder the config names that does not exist."""

    key: str
    path: Path

    @property
    def placeholder(self) -> bool:
        return str(self.path).startswith(PLACEHOLDER_PREFIX)

    def __str__(self) -> str:
        return f"{self.key}: {self.path} does not exist{' (placeholder)' if self.placeholder else ''}"


class StudyConfig(_Section):
    """A whole study: where to write, how to extract, the model pool, the datasets, the baseline, the analyses."""

    version: Literal[1] = Field(default=1, description="the config format version, 1")
    description: str | None = Field(default=None, description="a note shown at the top of the report (what the "
                                                              "study is, what data it runs on)")
    output_dir: StudyPath = Field(description="the folder results/ and report/ are written to")
    store_dir: StudyPath = Field(description="the activation store folder (reused across runs)")
    device: Annotated[str, AfterValidator(_check_device)] = "auto"
    batch_size: PositiveInt = 256
    workers: NonNegativeInt = 8
    autocast: Autocast = "none"
    models: list[ModelEntry] = Field(min_length=1, description="a list of models {name, spec, backbone, "
                                                               "pretraining, kind}")
    datasets: Datasets = Field(description="{id: ..., shift: [...], broden: ...}")
    baseline: Baseline = Field(default_factory=Baseline)
    analyses: Analyses = Field(description=f"a mapping with some of: {', '.join(ANALYSES)}")

    @model_validator(mode="after")
    def _cross_references(self) -> StudyConfig:
        problems = _reference_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-able data that validates back to an equal config (what ``provenance.json`` keeps).
        Unset optional keys are left out: a ``null`` analysis section would mean "run with the defaults"."""
        return self.model_dump(mode="json", exclude_none=True)

    # ---- lookups the runner and the report use
    @property
    def results_dir(self) -> Path:
        return self.output_dir / "results"

    @property
    def report_dir(self) -> Path:
        return self.output_dir / "report"

    def model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise InputError(f"no model named {name!r} in the study; expected one of {self.model_names()}")

    def model_names(self) -> list[str]:
        return [entry.name for entry in self.models]

    def dataset(self, name: str) -> DatasetEntry | BrodenEntry:
        for entry in self._all_datasets():
            if entry.name == name:
                return entry
        raise InputError(f"no dataset named {name!r} in the study; expected one of "
                         f"{[entry.name for entry in self._all_datasets()]}")

    def _all_datasets(self) -> list[DatasetEntry | BrodenEntry]:
        return self.datasets.evaluation() + ([self.datasets.broden] if self.datasets.broden else [])

    def enabled_analyses(self) -> list[str]:
        """The analyses that will run, in run order."""
        return [name for name in ANALYSES if self.analyses.enabled(name)]

    # ---- the second validation step: files exist
    def check_paths(self) -> list[MissingPath]:
        """Every path the study reads that does not exist (dataset roots, checkpoints, class-name and template
        files, class maps, ground-truth and mapping files, the baseline CSV), all at once. Output folders are
        created, so they are not checked."""
        wanted: list[tuple[str, Path]] = []
        for i, entry in enumerate(self.models):
            weights = spec_weights_path(entry.spec)
            if weights is not None:
                wanted.append((f"models[{i}].spec", Path(weights).expanduser()))
            wanted += [(f"models[{i}].{key}", path) for key in ("classnames", "templates")
                       if (path := getattr(entry, key)) is not None]
        wanted.append(("datasets.id.root", self.datasets.id.root))
        wanted += [(f"datasets.shift[{i}].root", entry.root) for i, entry in enumerate(self.datasets.shift)]
        if self.datasets.broden is not None:
            wanted.append(("datasets.broden.root", self.datasets.broden.root))
        for key, entry in [("datasets.id", self.datasets.id),
                           *((f"datasets.shift[{i}]", entry) for i, entry in enumerate(self.datasets.shift))]:
            wanted += [(f"{key}.options.{name}", Path(value)) for name, value in entry.options.items()
                       if name in PATH_OPTIONS and isinstance(value, str)]
        if self.baseline.fit_csv is not None:
            wanted.append(("baseline.fit_csv", self.baseline.fit_csv))
        return [MissingPath(key, path) for key, path in wanted if not _exists(path)]

    def require_paths(self) -> None:
        """Raise :class:`DataError` listing every missing path (see :meth:`check_paths`)."""
        missing = self.check_paths()
        if missing:
            note = (f"\nPlaceholders ({PLACEHOLDER_PREFIX}...) come from `robustsig study init`: replace them with "
                    "your paths." if any(item.placeholder for item in missing) else "")
            raise DataError(f"{len(missing)} path(s) named in the study config do not exist:\n"
                            + "\n".join(f"  - {item}" for item in missing) + note)


def _exists(path: Path) -> bool:
    """Whether ``path`` exists; a WebDataset brace pattern (``shards/{000..009}.tar``) is checked by its folder."""
    text = str(path)
    if "{" in text:
        return Path(text[: text.index("{")]).parent.exists()
    return path.exists()


def _reference_problems(config: StudyConfig) -> list[str]:
    """Cross-field problems: repeated names, names an analysis refers to that are not in the study."""
    problems: list[str] = []
    names = config.model_names()
    seen: dict[str, int] = {}
    cells: dict[tuple[str, str, str], int] = {}
    for i, entry in enumerate(config.models):
        if entry.name in seen:
            problems.append(f"models[{i}].name: expected a unique name; {entry.name!r} is also models"
                            f"[{seen[entry.name]}]")
        seen.setdefault(entry.name, i)
        if entry.name in ANALYSES:
            problems.append(f"models[{i}].name: expected a name that is not an analysis name "
                            f"({', '.join(ANALYSES)}), so --only can tell them apart; got {entry.name!r}")
        cell = (entry.backbone, entry.pretraining, entry.kind)
        if cell in cells:
            problems.append(f"models[{i}]: expected a distinct (backbone, pretraining, kind) per model, the cell "
                            f"of the paper's tables; {cell} is also models[{cells[cell]}] (change pretraining "
                            "to tell them apart)")
        cells.setdefault(cell, i)

    datasets = [("datasets.id", config.datasets.id)]
    datasets += [(f"datasets.shift[{i}]", entry) for i, entry in enumerate(config.datasets.shift)]
    if config.datasets.broden is not None:
        datasets.append(("datasets.broden", config.datasets.broden))
    dataset_keys: dict[str, str] = {}
    for key, entry in datasets:
        if entry.name in dataset_keys:
            problems.append(f"{key}.name: expected a unique dataset name; {entry.name!r} is also "
                            f"{dataset_keys[entry.name]} (set `name:` on one of them)")
        dataset_keys.setdefault(entry.name, key)
    evaluation = list(dict.fromkeys(entry.name for entry in config.datasets.evaluation()))

    def model_ref(key: str, name: str) -> None:
        if name not in names:
            problems.append(f"{key}: expected the name of a model of the study{_suggest(name, names)}; "
                            f"got {name!r}")

    def dataset_ref(key: str, name: str | None) -> None:
        if name is not None and name not in evaluation:
            problems.append(f"{key}: expected the name of an evaluation dataset (one of "
                            f"{', '.join(evaluation)}){_suggest(name, evaluation)}; got {name!r}")

    analyses = config.analyses
    if not config.enabled_analyses():
        problems.append(f"analyses: expected at least one enabled analysis among {', '.join(ANALYSES)}")
    for name in ("kurtosis", "importance", "cka"):
        section = getattr(analyses, name)
        if section is not None:
            dataset_ref(f"analyses.{name}.dataset", section.dataset)
    if analyses.pruning is not None:
        for i, name in enumerate(analyses.pruning.datasets or []):
            dataset_ref(f"analyses.pruning.datasets[{i}]", name)
    for name in ("layer_kurtosis", "lowrank"):
        section = getattr(analyses, name)
        for i, dataset in enumerate((section.datasets or []) if section is not None else []):
            dataset_ref(f"analyses.{name}.datasets[{i}]", dataset)
        for i, model in enumerate((section.models or []) if section is not None else []):
            model_ref(f"analyses.{name}.models[{i}]", model)
    needs_broden = [key for key, wanted in (("analyses.concepts", analyses.enabled("concepts")),
                                            ("analyses.wiseft.concepts",
                                             analyses.enabled("wiseft") and analyses.wiseft.concepts))
                    if wanted]
    if needs_broden and config.datasets.broden is None:
        problems.append(f"datasets.broden: required by {' and '.join(needs_broden)}; expected "
                        "{root: /path/to/broden1_224}")
    if analyses.enabled("predict_er") and not config.datasets.shift:
        problems.append("analyses.predict_er: expected datasets.shift (ER needs shift sets); add shift sets or "
                        "remove predict_er")
    if analyses.concepts is not None:
        for i, group in enumerate(analyses.concepts.venn_groups or []):
            for j, name in enumerate(group):
                model_ref(f"analyses.concepts.venn_groups[{i}][{j}]", name)
            if len(set(group)) != len(group):
                problems.append(f"analyses.concepts.venn_groups[{i}]: expected distinct model names")
    if analyses.cka is not None:
        for i, pair in enumerate(analyses.cka.pairs):
            model_ref(f"analyses.cka.pairs[{i}].model_a", pair.model_a)
            model_ref(f"analyses.cka.pairs[{i}].model_b", pair.model_b)
            dataset_ref(f"analyses.cka.pairs[{i}].dataset", pair.dataset)
    if analyses.wiseft is not None:
        pair_names: set[str] = set()
        for i, pair in enumerate(analyses.wiseft.pairs):
            model_ref(f"analyses.wiseft.pairs[{i}].zero_shot", pair.zero_shot)
            model_ref(f"analyses.wiseft.pairs[{i}].finetuned", pair.finetuned)
            if pair.zero_shot == pair.finetuned:
                problems.append(f"analyses.wiseft.pairs[{i}]: expected two different models; got "
                                f"{pair.zero_shot!r} twice")
            if pair.name in pair_names:
                problems.append(f"analyses.wiseft.pairs[{i}].name: expected a unique pair name; got {pair.name!r} "
                                "again (set `name:`)")
            pair_names.add(pair.name)
    return problems


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- loading

class _UniqueKeyLoader(SafeLoader):
    """robustsig's YAML loader (safe, alias bombs refused) that also refuses a key repeated in one mapping (YAML
    keeps the last one silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"repeated key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def validate_study_config(data: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None,
                          source: str = "the study config") -> StudyConfig:
    """Validate a study config given as a mapping (the parsed YAML).

    Args:
        data: the config's keys and values.
        base_dir: the folder relative paths are read from (the YAML file's folder); None keeps them relative.
        source: how error messages name the config.

    Returns:
        The validated :class:`StudyConfig` (paths are not checked yet: see :meth:`StudyConfig.check_paths`).

    Raises:
        InputError: listing every problem, each with its key path and the expected value.
    """
    if not isinstance(data, Mapping):
        raise InputError(f"{source}: expected a mapping of study keys (output_dir, models, datasets, analyses...) "
                         f"at the top level; got {type(data).__name__}")
    try:
        return StudyConfig.model_validate(dict(data), context={"base_dir": base_dir})
    except ValidationError as error:
        raise InputError(format_validation_error(error, StudyConfig, source)) from None


def load_study_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study YAML file (``yaml`` safe loading; a repeated key or an alias bomb is an error).

    Args:
        path: the YAML file; relative paths inside it are read from its folder.

    Returns:
        The validated config (structure only; call :meth:`StudyConfig.require_paths` before running).

    Raises:
        InputError: the file is missing, is not YAML, or is not a valid study config.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"study config {str(path)!r} does not exist; create one with "
                         "`robustsig study init --preset paper --out study.yaml`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read study config {str(path)!r}: {error}") from None
    data = safe_load(text, str(path), _UniqueKeyLoader)
    return validate_study_config(data if data is not None else {}, base_dir=path.resolve().parent,
                                 source=str(path))


# --------------------------------------------------------------------------- --only

def select(config: StudyConfig, only: Iterable[str]) -> StudyConfig:
    """Restrict a study to some analyses and/or models (the ``--only`` option).

    Args:
        config: the whole study.
        only: analysis names and/or model names; each item may hold several, comma-separated. Analysis names
            keep only those analyses; model names keep only those models, with the CKA pairs, Wise-FT pairs and
            Venn groups whose models are all kept (an analysis left without pairs is disabled).

    Returns:
        A new, validated config.

    Raises:
        InputError: a name that is neither an analysis nor a model of the study.

    Example:
        >>> # select(config, ["kurtosis,pruning", "RN50-openai-zs"])
    """
    items = [item.strip() for entry in only for item in entry.split(",") if item.strip()]
    names = config.model_names()
    unknown = [item for item in items if item not in ANALYSES and item not in names]
    if unknown:
        raise InputError("--only: " + "; ".join(
            f"{item!r} is neither an analysis ({', '.join(ANALYSES)}) nor a model of the study"
            f"{_suggest(item, ANALYSES + tuple(names))}" for item in unknown))
    analyses = {item for item in items if item in ANALYSES} or set(ANALYSES)
    models = {item for item in items if item in names} or set(names)

    data = config.to_dict()
    data["models"] = [entry for entry in data["models"] if entry["name"] in models]
    sections = {name: section for name, section in data["analyses"].items() if name in analyses}
    for name, keys in (("cka", ("model_a", "model_b")), ("wiseft", ("zero_shot", "finetuned"))):
        if name in sections:
            sections[name]["pairs"] = [pair for pair in sections[name]["pairs"]
                                       if all(pair[key] in models for key in keys)]
            if not sections[name]["pairs"]:
                del sections[name]
    if "venn_groups" in sections.get("concepts", {}):
        kept = [group for group in sections["concepts"]["venn_groups"] if set(group) <= models]
        sections["concepts"]["venn_groups"] = kept or None
    data["analyses"] = sections
    return validate_study_config(data, source="the selected study (--only)")
