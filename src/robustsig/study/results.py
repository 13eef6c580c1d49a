"""The results of a study on disk: one CSV per table with fixed columns, and ``provenance.json``.

Layout of ``OUTPUT_DIR/results/``::

    models.csv      model, spec, backbone, pretraining, kind          (the pool, from the config)
    datasets.csv    dataset, kind, role, root                         (role: id | shift | concepts)
    NAME.csv        one table per result table of each analysis (its module defines the row type; docs/study.md
                    lists them all)
    provenance.json what each table was computed on (models, datasets, store keys, sample counts), the config,
                    package versions
    ledger.json     what ``robustsig study run`` has finished (see robustsig.study.ledger), and run.log its log

Each table is a frozen dataclass (a row type) whose fields are its columns in order; :data:`TABLES` lists them.
Accuracies are fractions in [0, 1]. Floats are written with Python's shortest round-trip repr, so a table reads
back bit for bit; an empty cell is None (only in the columns typed ``| None``). Every file is written atomically
(a temporary file in the same folder, then ``os.replace``), so an interrupted run never leaves half a table.

Example:
    >>> import tempfile
    >>> from robustsig.study.results import ModelRow, Results
    >>> results = Results(tempfile.mkdtemp())
    >>> _ = results.write(ModelRow, [ModelRow("mnv2", "bundled:mobilenet_v2", "MobileNetV2", "imagenet-1k",
    ...                                       "supervised")])
    >>> results.read(ModelRow)[0].backbone
    'MobileNetV2'
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


def column(doc: str) -> Any:
    """A column of a result table, with what it holds (a dataclass field)."""
    return field(metadata={"doc": doc})


# --------------------------------------------------------------------------- the tables

@dataclass(frozen=True)
class ModelRow:
    """The model pool: one row per model of the config."""

    TABLE: ClassVar[str] = "models"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = column("model name (unique)")
    spec: str = column("model spec, e.g. openclip:ViT-B-32@openai")
    backbone: str = column("architecture: the row group of the paper's tables")
    pretraining: str = column("pretraining data tag: the row within a backbone")
    kind: str = column("zero-shot, finetuned or supervised: the column group of the paper's tables")


@dataclass(frozen=True)
class DatasetRow:
    """The datasets of the study."""

    TABLE: ClassVar[str] = "datasets"
    KEY: ClassVar[tuple[str, ...]] = ("dataset",)
    dataset: str = column("dataset name (unique)")
    kind: str = column("dataset kind (imagenet, imagenet-v2, ..., folder, csv, webdataset, broden)")
    role: str = column("id (in-distribution), shift, or concepts (Broden)")
    root: str = column("the dataset's root folder")


TABLES: dict[str, type] = {row.TABLE: row for row in (ModelRow, DatasetRow)}
"""Table name -> row type; the CSV file is ``NAME.csv``. Every analysis adds its own with :func:`result_table`."""


def result_table(row: type) -> type:
    """Register a result table (a class decorator on a frozen dataclass with ``TABLE``, its name, and ``KEY``, the
    columns that identify a row): its fields are the CSV's columns in order, each declared with :func:`column`.
    The name must be new.

    Raises:
        InputError: another row type already has that name.
    """
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
