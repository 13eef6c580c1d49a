"""The results of a study on disk: one CSV per table with fixed columns, and ``provenance.json``.

Layout of ``OUTPUT_DIR/results/``::

    models.csv      model, spec, backbone, pretraining, kind          (the pool, from the config)
    datasets.csv    dataset, kind, role, root                         (role: id | shift | concepts)
    accuracy.csv    model, dataset, accuracy, num_samples
    robustness.csv  model, acc_id, acc_shift, er, b1, b0
    kurtosis.csv    model, dataset, kurtosis, num_samples, dim
    outliers.csv    model, dataset, dimension, score
    importance.csv  model, direction, singular_value, importance, privileged
    privileged.csv  model, num_directions, num_privileged, top_direction, top_ratio, spearman
    pruning.csv     model, order, fraction, dataset, accuracy, er
    concepts.csv    model, basis, num_directions, num_concepts, unique_concepts, polysemanticity, threshold,
                    polysemanticity_active, orientation
    concept_thresholds.csv  model, basis, threshold, unique_concepts, polysemanticity, polysemanticity_active,
                    orientation   (the threshold sensitivity sweep)
    concept_top.csv model, basis, direction, rank, concept, category, ap
    venn.csv        model, basis, concept, category
    cka.csv         model_a, model_b, layer_a, layer_b, cka, dataset, estimator
    wiseft.csv      pair, alpha, acc_id, acc_shift, er, kurtosis, unique_concepts
    provenance.json what each table was computed on (models, datasets, store keys, sample counts), the config,
                    package versions
    concept_ap/     the full AP matrices of the concepts analysis (see robustsig.study.analyses.concepts)
    ledger.json     what ``robustsig study run`` has finished (see robustsig.study.ledger), and run.log its log

Each table is a frozen dataclass (a row type) whose fields are its columns in order; :data:`TABLES` lists them.
Accuracies are fractions in [0, 1]. Floats are written with Python's shortest round-trip repr, so a table reads
back bit for bit; an empty cell is None (only in the columns typed ``| None``). Every file is written atomically
(a temporary file in the same folder, then ``os.replace``), so an interrupted run never leaves half a table.

Example:
    >>> import tempfile
    >>> from robustsig.study.results import AccuracyRow, Results
    >>> results = Results(tempfile.mkdtemp())
    >>> _ = results.write(AccuracyRow, [AccuracyRow("mnv2", "photos", 0.75, 8)])
    >>> results.read(AccuracyRow)[0].accuracy
    0.75
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import operator
import os
import platform
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from robustsig._atomic import file_kind, write_text_atomic
from robustsig._cells import csv_line, escape_cell, unescape_cell
from robustsig.errors import DataError, InputError

if TYPE_CHECKING:
    from robustsig.study.config import StudyConfig


def _column(doc: str) -> Any:
    return field(metadata={"doc": doc})


# --------------------------------------------------------------------------- the tables

@dataclass(frozen=True)
class ModelRow:
    """The model pool: one row per model of the config."""

    TABLE: ClassVar[str] = "models"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = _column("model name (unique)")
    spec: str = _column("model spec, e.g. openclip:ViT-B-32@openai")
    backbone: str = _column("architecture: the row group of the paper's tables")
    pretraining: str = _column("pretraining data tag: the row within a backbone")
    kind: str = _column("zero-shot, finetuned or supervised: the column group of the paper's tables")


@dataclass(frozen=True)
class DatasetRow:
    """The datasets of the study."""

    TABLE: ClassVar[str] = "datasets"
    KEY: ClassVar[tuple[str, ...]] = ("dataset",)
    dataset: str = _column("dataset name (unique)")
    kind: str = _column("dataset kind (imagenet, imagenet-v2, ..., folder, csv, webdataset, broden)")
    role: str = _column("id (in-distribution), shift, or concepts (Broden)")
    root: str = _column("the dataset's root folder")


@dataclass(frozen=True)
class AccuracyRow:
    """Top-1 accuracy of a model on a dataset (the dataset's class subset or mapping applied)."""

    TABLE: ClassVar[str] = "accuracy"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset")
    model: str = _column("model name")
    dataset: str = _column("dataset name")
    accuracy: float = _column("top-1 accuracy, a fraction in [0, 1]")
    num_samples: int = _column("images scored (corrupt images skipped)")


@dataclass(frozen=True)
class RobustnessRow:
    """Effective robustness (eq. 1) of a model."""

    TABLE: ClassVar[str] = "robustness"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = _column("model name")
    acc_id: float = _column("accuracy on the in-distribution set")
    acc_shift: float = _column("mean accuracy over the shift sets")
    er: float = _column("acc_shift - sigmoid(b1 logit(acc_id) + b0)")
    b1: float = _column("slope of the baseline line (logit space)")
    b0: float = _column("intercept of the baseline line (logit space)")


@dataclass(frozen=True)
class KurtosisRow:
    """Activation kurtosis (eq. 2) of the head's input h."""

    TABLE: ClassVar[str] = "kurtosis"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset")
    model: str = _column("model name")
    dataset: str = _column("dataset the activations come from")
    kurtosis: float = _column("mean over samples of the kurtosis of h (Gaussian = 3)")
    num_samples: int = _column("activation vectors averaged")
    dim: int = _column("width of h")


@dataclass(frozen=True)
class OutlierRow:
    """A feature dimension of h carrying outlier activations (mean |h_i| far above the average dimension's)."""

    TABLE: ClassVar[str] = "outliers"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset", "dimension")
    model: str = _column("model name")
    dataset: str = _column("dataset the activations come from")
    dimension: int = _column("index of the dimension of h")
    score: float = _column("mean |h_i| over the mean of mean |h_j| over all dimensions (>= 5: an outlier)")


@dataclass(frozen=True)
class ImportanceRow:
    """Importance (eq. 4) of one singular direction of the head."""

    TABLE: ClassVar[str] = "importance"
    KEY: ClassVar[tuple[str, ...]] = ("model", "direction")
    model: str = _column("model name")
    direction: int = _column("index of the singular direction, 0 = largest singular value")
    singular_value: float = _column("singular value s_i of the head W")
    importance: float = _column("s_i / sum(s) x mean_n |cos(v_i, h_n)|")
    privileged: bool = _column("importance above privileged_ratio x the mean importance")


@dataclass(frozen=True)
class PrivilegedRow:
    """Summary of a model's privileged directions."""

    TABLE: ClassVar[str] = "privileged"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = _column("model name")
    num_directions: int = _column("rank of the head (directions scored)")
    num_privileged: int = _column("directions flagged privileged")
    top_direction: int = _column("the most important direction")
    top_ratio: float = _column("its importance over the mean importance")
    spearman: float = _column("Spearman correlation of singular values and importances")


@dataclass(frozen=True)
class PruningRow:
    """Accuracy of a model after pruning a fraction of its head's singular directions."""

    TABLE: ClassVar[str] = "pruning"
    KEY: ClassVar[tuple[str, ...]] = ("model", "order", "fraction", "dataset")
    model: str = _column("model name")
    order: str = _column("singular (smallest singular values first), importance or random")
    fraction: float = _column("fraction of directions pruned, in [0, 1)")
    dataset: str = _column("dataset name")
    accuracy: float = _column("top-1 accuracy of the pruned head")
    er: float | None = _column("ER of the pruned model (the same on every dataset row of this model, order and "
                               "fraction; empty without shift sets)")


@dataclass(frozen=True)
class ConceptRow:
    """Concept probing summary of a model in one basis."""

    TABLE: ClassVar[str] = "concepts"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis")
    model: str = _column("model name")
    basis: str = _column("singular (the head's right singular vectors) or neuron (canonical basis)")
    num_directions: int = _column("directions probed")
    num_concepts: int = _column("Broden concepts probed (enough positives)")
    unique_concepts: int = _column("concepts encoded (AP >= threshold) by at least one direction (eq. 5)")
    polysemanticity: float = _column("the paper's: mean number of concepts a direction encodes, over all directions "
                                     "probed (Section 4, Table 6)")
    threshold: float = _column("the AP threshold")
    polysemanticity_active: float = _column("a variant: the same mean over only the directions that encode at "
                                            "least one concept (NaN when none does)")
    orientation: str = _column("both (AP of the better side of each direction) or positive (the AP of h . v_i as "
                               "the sign convention gives it)")


@dataclass(frozen=True)
class ConceptThresholdRow:
    """Threshold sensitivity: the concept summary of a model in one basis at each AP threshold of the sweep."""

    TABLE: ClassVar[str] = "concept_thresholds"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis", "threshold")
    model: str = _column("model name")
    basis: str = _column("singular or neuron")
    threshold: float = _column("the AP threshold")
    unique_concepts: int = _column("concepts encoded by at least one direction (eq. 5)")
    polysemanticity: float = _column("the paper's: mean concepts per direction over all directions probed")
    polysemanticity_active: float = _column("variant: mean over the directions encoding at least one (NaN: none)")
    orientation: str = _column("both or positive (as concepts.csv)")


@dataclass(frozen=True)
class ConceptTopRow:
    """The top concepts of a model's most privileged direction."""

    TABLE: ClassVar[str] = "concept_top"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis", "direction", "rank")
    model: str = _column("model name")
    basis: str = _column("singular or neuron")
    direction: int = _column("the direction (the most privileged one)")
    rank: int = _column("1 = highest AP")
    concept: str = _column("Broden concept name")
    category: str = _column("Broden category (color, object, material, part, scene, texture)")
    ap: float = _column("average precision of the direction for the concept")


@dataclass(frozen=True)
class VennRow:
    """Membership of the concept sets that the Venn diagrams compare: one row per concept a model encodes."""

    TABLE: ClassVar[str] = "venn"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis", "concept")
    model: str = _column("model name")
    basis: str = _column("singular or neuron")
    concept: str = _column("a concept encoded by at least one direction")
    category: str = _column("its Broden category")


@dataclass(frozen=True)
class CkaRow:
    """CKA between a layer of one model and a layer of another, on the same images."""

    TABLE: ClassVar[str] = "cka"
    KEY: ClassVar[tuple[str, ...]] = ("model_a", "model_b", "layer_a", "layer_b", "dataset")
    model_a: str = _column("first model")
    model_b: str = _column("second model")
    layer_a: str = _column("layer of model_a (rows are written in layer order)")
    layer_b: str = _column("layer of model_b")
    cka: float = _column("CKA in [0, 1]")
    dataset: str = _column("the images it is computed on (the id set and each shift set)")
    estimator: str = _column("minibatch (the paper's, torch_cka) or pooled (see docs/study.md)")


@dataclass(frozen=True)
class WiseFtRow:
    """One point of a Wise-FT sweep (weights (1 - alpha) theta_zero_shot + alpha theta_finetuned)."""

    TABLE: ClassVar[str] = "wiseft"
    KEY: ClassVar[tuple[str, ...]] = ("pair", "alpha")
    pair: str = _column("Wise-FT pair name")
    alpha: float = _column("interpolation weight: 0 = zero-shot, 1 = finetuned")
    acc_id: float = _column("accuracy on the in-distribution set")
    acc_shift: float | None = _column("mean accuracy over the shift sets")
    er: float | None = _column("effective robustness")
    kurtosis: float | None = _column("activation kurtosis")
    unique_concepts: int | None = _column("unique concepts (singular basis)")


@dataclass(frozen=True)
class LayerKurtosisRow:
    """Activation kurtosis (eq. 2) and outlier dimensions of one layer tap of a model on one dataset."""

    TABLE: ClassVar[str] = "layer_kurtosis"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset", "layer")
    model: str = _column("model name")
    dataset: str = _column("dataset name")
    layer: str = _column("layer tap name")
    depth: float = _column("relative depth: the tap's index / (number of taps - 1), 0 = input side")
    kurtosis: float = _column("mean over images of the kurtosis of the layer's vector (Gaussian = 3)")
    outliers: int = _column("dimensions whose mean |activation| is at least 5 times the mean over dimensions")
    vectors: str = _column("the vector per image: cls (a ViT's class token), mean (the mean over tokens or "
                           "positions) or vector (a layer with one vector per image)")
    dim: int = _column("width of the layer's vector")


@dataclass(frozen=True)
class LowRankRow:
    """Accuracy of a low-rank model of the whole encoder (every linear map keeps a budget of its directions)."""

    TABLE: ClassVar[str] = "lowrank"
    KEY: ClassVar[tuple[str, ...]] = ("model", "order", "fraction", "dataset")
    model: str = _column("model name")
    order: str = _column("importance (eq. 4 on each map's inputs), singular or random: the directions pruned first")
    fraction: float = _column("fraction removed: of each map's rank, or of the maps' parameters (see provenance)")
    dataset: str = _column("dataset name")
    accuracy: float = _column("top-1 accuracy of the low-rank model")
    er: float | None = _column("ER of the low-rank model (the same on every dataset row of this model, order and "
                               "fraction; empty without shift sets)")
    parameters: int = _column("parameters of the low-rank classifier (encoder and head)")
    parameter_fraction: float = _column("parameters relative to the original model")
    flop_fraction: float = _column("FLOPs per image relative to the original model (matrix products, convolutions, "
                                   "attention)")


TABLES: dict[str, type] = {row.TABLE: row for row in (
    ModelRow, DatasetRow, AccuracyRow, RobustnessRow, KurtosisRow, OutlierRow, ImportanceRow, PrivilegedRow,
    PruningRow, ConceptRow, ConceptTopRow, VennRow, CkaRow, WiseFtRow, ConceptThresholdRow,
    LayerKurtosisRow, LowRankRow)}
"""Table name -> row type; the CSV file is ``NAME.csv``. Analyses that keep their rows beside them add them with
:func:`register_table`."""


def register_table(row: type) -> type:
    """Add a row type defined beside its analysis to :data:`TABLES` (a class decorator); its ``TABLE`` name must be
    new."""
    if TABLES.get(row.TABLE, row) is not row:
        raise InputError(f"table {row.TABLE!r} is already {TABLES[row.TABLE].__name__}")
    TABLES[row.TABLE] = row
    return row

Row = TypeVar("Row")


def columns(table: type) -> list[str]:
    """The column names of a table, in file order."""
    return [item.name for item in dataclasses.fields(table)]


# --------------------------------------------------------------------------- cells

def _format_cell(value: Any, kind: Any, where: str) -> str:
    optional = type(None) in typing.get_args(kind)
    base = next((arm for arm in typing.get_args(kind) if arm is not type(None)), kind)
    if value is None:
        if optional:
            return ""
        raise InputError(f"{where}: expected a {base.__name__}; got None")
    if base is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected a bool; got {value!r}")
        return "true" if value else "false"
    if base is int:
        try:
            if isinstance(value, bool):
                raise TypeError
            return str(operator.index(value))
        except TypeError:
            raise InputError(f"{where}: expected an int; got {value!r}") from None
    if base is float:
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            raise InputError(f"{where}: expected a float; got {value!r}")
        return repr(float(value))
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a str; got {value!r}")
    return escape_cell(value)  # never a cell a spreadsheet runs as a formula (see robustsig._cells)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false"}


def _parse_cell(text: str, kind: Any, where: str) -> Any:
    optional = type(None) in typing.get_args(kind)
    base = next((arm for arm in typing.get_args(kind) if arm is not type(None)), kind)
    if base is str:
        return unescape_cell(text)
    if text == "":
        if optional:
            return None
        raise DataError(f"{where}: empty cell; expected {_TYPE_WORDS[base]}")
    try:
        if base is bool:
            return {"true": True, "false": False}[text]
        return base(text)
    except (KeyError, ValueError):
        raise DataError(f"{where}: expected {_TYPE_WORDS[base]}; got {text!r}") from None


_RANGES: dict[str, tuple[float, float, str]] = {
    "accuracy": (0.0, 1.0, "an accuracy, a fraction in [0, 1]"),
    "acc_id": (0.0, 1.0, "an accuracy, a fraction in [0, 1]"),
    "acc_shift": (0.0, 1.0, "an accuracy, a fraction in [0, 1]"),
    "er": (-1.0, 1.0, "an effective robustness, in [-1, 1] (a difference of two accuracies)"),
}
"""Columns whose values have a fixed range, by name (every table names its accuracies and ER alike)."""


def _check_range(value: Any, column: str, where: str, error: type[Exception] = DataError) -> None:
    """Refuse a value outside its column's range (:data:`_RANGES`); NaN (undefined) and empty cells pass."""
    bounds = _RANGES.get(column)
    if bounds is None or not isinstance(value, float) or math.isnan(value):
        return
    low, high, what = bounds
    if not low <= value <= high:
        damaged = "; the file was changed or damaged: recompute it" if error is DataError else ""
        raise error(f"{where}: {value!r} is not {what}{damaged}")


# --------------------------------------------------------------------------- files

def package_versions() -> dict[str, str]:
    """Python, platform and the versions of the packages that determine the results."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("robustsig", "torch", "torchvision", "open_clip_torch", "timm", "numpy", "scipy", "pillow",
                    "safetensors", "pydantic", "pyyaml", "matplotlib", "matplotlib-venn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class InputRecord:
    """One input a table was computed on: a model's activations on a dataset."""

    model: str
    dataset: str
    store_key: str = ""
    num_samples: int | None = None
    skipped: int | None = None
    """images of the dataset that could not be decoded (left out of num_samples)."""


class Results:
    """The ``results/`` folder of a study: typed tables (CSV) and their provenance.

    Args:
        root: the folder (created on the first write).
    """

    PROVENANCE = "provenance.json"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, table: type) -> Path:
        """The CSV file of ``table``."""
        return self.root / f"{_table_name(table)}.csv"

    def has(self, table: type) -> bool:
        """Whether ``table`` was written.

        Raises:
            DataError: something else than a file is at its path (a folder, a link loop, a link to nothing): it
                is not taken for a table never computed.
        """
        path = self.path(table)
        if path.is_file():
            return True
        if not os.path.lexists(path):
            return False
        raise DataError(f"{path} is {file_kind(path, follow_links=True)}, not a results table; move it away (the "
                        "table is then recomputed)")

    def write(self, table: type[Row], rows: Iterable[Row]) -> Path:
        """Replace the whole table with ``rows`` (atomically).

        Raises:
            InputError: a row of another type, a value of the wrong type for its column, or two rows with the same
                key (``table.KEY``).
        """
        name = _table_name(table)
        rows = list(rows)
        hints = typing.get_type_hints(table)
        names = columns(table)
        lines = [csv_line(names)]  # every line break in a cell quoted, a bare CR too (see robustsig._cells)
        seen: dict[tuple, int] = {}
        for i, row in enumerate(rows):
            if type(row) is not table:
                raise InputError(f"{name}.csv row {i}: expected a row of type {table.__name__}; got "
                                 f"{type(row).__name__}")
            if seen.setdefault(_key(row), i) != i:
                raise InputError(f"{name}.csv rows {seen[_key(row)]} and {i} have the same {', '.join(table.KEY)} "
                                 f"{_key(row)}: a table holds one row per key")
            for column in names:
                _check_range(getattr(row, column), column, f"{name}.csv row {i}, {column}", InputError)
            lines.append(csv_line([_format_cell(getattr(row, column), hints[column], f"{name}.csv row {i}, {column}")
                                   for column in names]))
        target = self.path(table)
        write_text_atomic(target, "".join(lines))
        return target

    def upsert(self, table: type[Row], rows: Iterable[Row]) -> Path:
        """Add ``rows`` to the table, replacing the rows with the same key (``table.KEY``); other rows are kept
        in place, new ones appended. This is how a resumed run adds one model's results at a time."""
        rows = list(rows)
        new = {_key(row): row for row in rows}
        kept = [new.pop(_key(row), row) for row in (self.read(table) if self.has(table) else [])]
        return self.write(table, kept + [row for row in rows if _key(row) in new])

    def replace(self, table: type[Row], rows: Iterable[Row], **match: Any) -> Path:
        """Replace the rows whose columns equal ``match`` (e.g. ``model="a"``: all of model a's rows) by ``rows``;
        other rows are kept in place, the new ones appended. This is how a rerun of one model's analysis drops
        its rows that no longer exist (a fraction or dataset removed from the config).

        Raises:
            InputError: ``match`` names a column the table does not have.
        """
        unknown = sorted(set(match) - set(columns(table)))
        if unknown:
            raise InputError(f"{_table_name(table)}.csv has no column {', '.join(unknown)}; its columns are "
                             f"{columns(table)}")
        kept = [row for row in (self.read(table) if self.has(table) else [])
                if any(getattr(row, name) != value for name, value in match.items())]
        return self.write(table, kept + list(rows))

    def read(self, table: type[Row]) -> list[Row]:
        """All rows of ``table``, typed.

        Raises:
            DataError: the file is missing (or a folder, a link loop: see :meth:`has`), is not UTF-8 CSV, its header
                differs from the table's columns, a cell is malformed, an accuracy or ER is out of its range, or
                two rows repeat a key (``table.KEY``: a duplicated row would count twice). The message names the
                file and the line.
        """
        path = self.path(table)
        if not self.has(table):
            raise DataError(f"{path} does not exist: the {_table_name(table)} table was not computed")
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DataError(f"cannot read {path}: {error.strerror or error}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[:error.start].count(b"\n") + 1
            raise DataError(f"{path} line {line}: byte {data[error.start]:#04x} is not UTF-8 text; robustsig writes "
                            "its tables in UTF-8: the file was changed or damaged, recompute it") from None
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, [])
            expected = columns(table)
            if header != expected:
                raise DataError(f"{path} has columns {header}; expected {expected} (written by another robustsig "
                                "version? recompute it)")
            hints = typing.get_type_hints(table)
            rows = []
            seen: dict[tuple, int] = {}
            for line, cells in enumerate(reader, start=2):
                if len(cells) != len(expected):
                    raise DataError(f"{path} line {line}: {len(cells)} cells; expected {len(expected)}")
                values = [_parse_cell(cell, hints[column], f"{path} line {line}, {column}")
                          for cell, column in zip(cells, expected)]
                for value, column in zip(values, expected):
                    _check_range(value, column, f"{path} line {line}, {column}")
                row = table(*values)
                key = _key(row)
                if key in seen:
                    shown = ", ".join(f"{column}={value!r}" for column, value in zip(table.KEY, key))
                    raise DataError(f"{path} lines {seen[key]} and {line} are both the row of {shown}: a table "
                                    f"holds one row per {', '.join(table.KEY)}; the file was changed or damaged, "
                                    "recompute it")
                seen[key] = line
                rows.append(row)
        except csv.Error as error:
            raise DataError(f"{path} line {reader.line_num}: not readable CSV ({error}); recompute it") from None
        return rows

    # ---- provenance
    def provenance(self) -> dict[str, Any]:
        """The parsed ``provenance.json``: ``{"created", "updated", "versions", "config", "tables": {name:
        {"updated", "parameters", "inputs": [{model, dataset, store_key, num_samples}]}}}``; an empty skeleton
        when the file does not exist yet."""
        path = self.root / self.PROVENANCE
        if not path.is_file():
            return {"created": None, "updated": None, "versions": {}, "config": None, "tables": {}}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"{path} is not readable JSON: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("tables", {}), dict):
            raise DataError(f"{path}: expected an object with a 'tables' object")
        document.setdefault("tables", {})
        return document

    def _save_provenance(self, document: dict[str, Any]) -> None:
        document["updated"] = _now()
        document["created"] = document.get("created") or document["updated"]
        write_text_atomic(self.root / self.PROVENANCE, json.dumps(document, indent=2, sort_keys=False,
                                                                  default=str, allow_nan=False) + "\n")

    def set_config(self, config: Mapping[str, Any] | None, versions: Mapping[str, str] | None = None) -> None:
        """Record the study config (as a JSON-able mapping) and the package versions of this run."""
        document = self.provenance()
        document["config"] = jsonable(config)
        document["versions"] = dict(versions if versions is not None else package_versions())
        self._save_provenance(document)

    def record(self, table: type, inputs: Iterable[InputRecord], parameters: Mapping[str, Any] | None = None
               ) -> None:
        """Record what ``table`` was computed on. Inputs merge by (model, dataset) with those recorded before
        (a resumed run records one model at a time); parameters update those recorded before."""
        document = self.provenance()
        entry = document["tables"].setdefault(_table_name(table), {"updated": None, "parameters": {}, "inputs": []})
        merged = {(item["model"], item["dataset"]): item for item in entry["inputs"]}
        for item in inputs:
            merged[(item.model, item.dataset)] = dataclasses.asdict(item)
        entry["inputs"] = list(merged.values())
        entry["parameters"] = {**entry["parameters"], **jsonable(dict(parameters or {}))}
        entry["updated"] = _now()
        self._save_provenance(document)

    def inputs(self, table: type) -> list[InputRecord]:
        """The inputs recorded for ``table`` (empty when none were)."""
        entry = self.provenance()["tables"].get(_table_name(table), {})
        return [InputRecord(**item) for item in entry.get("inputs", [])]


def _table_name(table: type) -> str:
    name = getattr(table, "TABLE", None)
    if TABLES.get(name) is not table:
        raise InputError(f"expected one of the result row types ({', '.join(t.__name__ for t in TABLES.values())}); "
                         f"got {table!r}")
    return name


def _key(row: Any) -> tuple:
    return tuple(getattr(row, column) for column in row.KEY)


def jsonable(value: Any) -> Any:
    """``value`` with paths (and other objects) as strings, tuples and sets as lists, non-finite floats as None:
    what ``json.dumps(allow_nan=False)`` and ``yaml.safe_dump`` take."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)) and not isinstance(value, str):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def study_rows(config: StudyConfig) -> tuple[list[ModelRow], list[DatasetRow]]:
    """The ``models.csv`` and ``datasets.csv`` rows of a study config (the runner writes them first; the report
    lays out its tables from them)."""
    models = [ModelRow(m.name, m.spec, m.backbone, m.pretraining, m.kind) for m in config.models]
    datasets = [DatasetRow(config.datasets.id.name, config.datasets.id.kind, "id", str(config.datasets.id.root))]
    datasets += [DatasetRow(d.name, d.kind, "shift", str(d.root)) for d in config.datasets.shift]
    if config.datasets.broden is not None:
        broden = config.datasets.broden
        datasets.append(DatasetRow(broden.name, broden.kind, "concepts", str(broden.root)))
    return models, datasets
