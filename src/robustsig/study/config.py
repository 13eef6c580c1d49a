"""The study config: one YAML file naming a model pool, dataset roots and the analyses to run.

Validation happens in two steps:

1. *structure* (:func:`load_study_config`): keys, types, allowed values and cross references (every model or
   dataset an analysis names exists). Unknown keys are rejected. Every problem is reported at once, each line
   naming its key path and what was expected there.
2. *files* (:meth:`StudyConfig.check_paths`): the dataset roots, checkpoints and other files exist. The paper
   preset is structurally valid while its ``/path/to/...`` placeholders are still unfilled; this step lists
   every one of them.

The ``analyses`` section has one optional key per analysis of :mod:`robustsig.study.registry` (built in, or added by
an installed package), each validated by that analysis's own options model and cross-checked by its
:meth:`~robustsig.study.analysis.Analysis.check`. The shared sections (models, datasets, baseline) are in
:mod:`robustsig.study.sections`.

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

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from robustsig._yaml import SafeLoader, safe_load
from robustsig.errors import DataError, InputError
from robustsig.study import registry
from robustsig.study._messages import format_validation_error
from robustsig.study.sections import (PATH_OPTIONS, PLACEHOLDER_PREFIX, Autocast, Baseline, BrodenEntry,
                                      DatasetEntry, Datasets, ModelEntry, Section, StudyPath, check_device,
                                      spec_weights_path, suggest)

Analyses = registry.options_model()
"""The ``analyses`` section: one optional key per registered analysis (see :mod:`robustsig.study.registry`)."""


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



class StudyConfig(Section):
    """A whole study: where to write, how to extract, the model pool, the datasets, the baseline, the analyses."""

    version: Literal[1] = Field(default=1, description="the config format version, 1")
    description: str | None = Field(default=None, description="a note shown at the top of the report (what the "
                                                              "study is, what data it runs on)")
    output_dir: StudyPath = Field(description="the folder results/ and report/ are written to")
    store_dir: StudyPath = Field(description="the activation store folder (reused across runs)")
    device: Annotated[str, AfterValidator(check_device)] = "auto"
    batch_size: PositiveInt = 256
    workers: NonNegativeInt = 8
    autocast: Autocast = "none"
    models: list[ModelEntry] = Field(min_length=1, description="a list of models {name, spec, backbone, "
                                                               "pretraining, kind}")
    datasets: Datasets = Field(description="{id: ..., shift: [...], broden: ...}")
    baseline: Baseline = Field(default_factory=Baseline)
    analyses: Analyses = Field(description=f"a mapping with some of: {', '.join(registry.names())}")

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
        return [analysis.name for analysis in registry.enabled(self)]

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
    """Cross-field problems: repeated names, then what each enabled analysis finds (names its options refer to
    that are not in the study, a dataset it needs that the study lacks)."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    cells: dict[tuple[str, str, str], int] = {}
    analysis_names = registry.names()
    for i, entry in enumerate(config.models):
        if entry.name in seen:
            problems.append(f"models[{i}].name: expected a unique name; {entry.name!r} is also models"
                            f"[{seen[entry.name]}]")
        seen.setdefault(entry.name, i)
        if entry.name in analysis_names:
            problems.append(f"models[{i}].name: expected a name that is not an analysis name "
                            f"({', '.join(analysis_names)}), so --only can tell them apart; got {entry.name!r}")
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

    chosen = registry.enabled(config)
    if not chosen:
        problems.append(f"analyses: expected at least one enabled analysis among {', '.join(analysis_names)}")
    for analysis in registry.analyses():
        if analysis.options(config) is not None:
            note = registry.origin_note(analysis.name)
            problems += [line + note for line in
                         registry.guarded(analysis, "check", lambda a=analysis: list(a.check(config)), [])]
    return problems


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
        raise InputError(format_validation_error(error, StudyConfig, source, _plugin_note)) from None


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



def _plugin_note(loc: tuple) -> str:
    """What an error under an installed analysis's section adds: the plugin that provides it."""
    return registry.origin_note(str(loc[1])) if len(loc) > 1 and loc[0] == "analyses" else ""


# --------------------------------------------------------------------------- --only

def select(config: StudyConfig, only: Iterable[str]) -> StudyConfig:
    """Restrict a study to some analyses and/or models (the ``--only`` option).

    Args:
        config: the whole study.
        only: analysis names and/or model names; each item may hold several, comma-separated. Analysis names
            keep only those analyses; model names keep only those models, and each analysis keeps the part of its
            section about them (:meth:`~robustsig.study.analysis.Analysis.select`: the CKA and Wise-FT pairs and
            Venn groups whose models are all kept; an analysis left with nothing to run is disabled).

    Returns:
        A new, validated config.

    Raises:
        InputError: a name that is neither an analysis nor a model of the study.

    Example:
        >>> # select(config, ["kurtosis,pruning", "RN50-openai-zs"])
    """
    items = [item.strip() for entry in only for item in entry.split(",") if item.strip()]
    names = config.model_names()
    analysis_names = registry.names()
    unknown = [item for item in items if item not in analysis_names and item not in names]
    if unknown:
        raise InputError("--only: " + "; ".join(
            f"{item!r} is neither an analysis ({', '.join(analysis_names)}) nor a model of the study"
            f"{suggest(item, analysis_names + tuple(names))}" for item in unknown))
    analyses = {item for item in items if item in analysis_names} or set(analysis_names)
    models = {item for item in items if item in names} or set(names)

    data = config.to_dict()
    data["models"] = [entry for entry in data["models"] if entry["name"] in models]
    sections = {}
    for name, section in data["analyses"].items():
        if name in analyses:
            analysis = registry.get(name)
            kept = registry.guarded(analysis, "select", lambda a=analysis, s=section: a.select(s, models), section)
            if kept is not None:
                sections[name] = kept
    data["analyses"] = sections
    return validate_study_config(data, source="the selected study (--only)")
