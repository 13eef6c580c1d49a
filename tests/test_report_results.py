"""The results folder: typed CSV tables that round-trip exactly, upserts, atomic writes, provenance."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest

import robustsig as rs
from robustsig.study import registry
from robustsig.study import results as results_module
from robustsig.study.analyses.accuracy import AccuracyRow
from robustsig.study.analyses.importance import ImportanceRow
from robustsig.study.analyses.kurtosis import KurtosisRow
from robustsig.study.analyses.pruning import PruningRow
from robustsig.study.analyses.wiseft import WiseFtRow
from robustsig.study.results import InputRecord, Results, TABLES, columns

from report_data import MODELS, write_results


def test_every_table_round_trips_exactly(tmp_path):
    registry.analyses()  # every analysis's tables registered, whatever this process imported so far
    written = write_results(tmp_path / "results")
    reread = Results(tmp_path / "results")
    assert {path.stem for path in (tmp_path / "results").glob("*.csv")} == set(TABLES)
    for table in TABLES.values():
        rows = reread.read(table)
        assert rows and all(type(row) is table for row in rows)
        assert reread.read(table) == written.read(table)
    assert reread.read(results_module.ModelRow) == MODELS


def test_awkward_values_round_trip_bit_for_bit(tmp_path):
    results = Results(tmp_path)
    values = [0.1 + 0.2, 1e-300, 5e-324, 1 / 3, -0.0, 123456789.123456789, float(np.float32(0.7))]
    # awkward floats in columns without a range (an accuracy or ER out of range is refused)
    rows = [WiseFtRow("p,with \"quotes\"\nand newline", value, 0.5, None, None, value, None) for value in values]
    rows.append(WiseFtRow("inf", 0.5, 1.0, None, None, math.inf, None))
    rows.append(WiseFtRow("nan", 0.5, 0.25, math.nan, np.float64(0.125), 3.0, np.int64(7)))
    results.write(WiseFtRow, rows)
    back = results.read(WiseFtRow)
    for got, want in zip(back[:-1], rows[:-1]):
        assert got == want and math.copysign(1, got.alpha) == math.copysign(1, want.alpha)
    assert math.isnan(back[-1].acc_shift) and back[-1].er == 0.125 and back[-1].unique_concepts == 7
    assert type(back[-1].unique_concepts) is int and type(back[-1].er) is float
    text = results.path(WiseFtRow).read_text()
    assert text.splitlines()[0] == ",".join(columns(WiseFtRow))
    assert "0.30000000000000004" in text  # shortest round-trip repr, not a rounded print


def test_wrong_values_are_refused_with_the_column_named(tmp_path):
    results = Results(tmp_path)
    with pytest.raises(rs.InputError, match=r"accuracy.csv row 0, num_samples: expected an int; got 10.5"):
        results.write(AccuracyRow, [AccuracyRow("m", "d", 0.5, 10.5)])
    with pytest.raises(rs.InputError, match=r"accuracy.csv row 1, accuracy: expected a float; got None"):
        results.write(AccuracyRow, [AccuracyRow("m", "d", 0.5, 10), AccuracyRow("m", "e", None, 10)])
    with pytest.raises(rs.InputError, match=r"importance.csv row 0, privileged: expected a bool; got 1"):
        results.write(ImportanceRow, [ImportanceRow("m", 0, 1.0, 0.5, 1)])
    with pytest.raises(rs.InputError, match="row 0: expected a row of type AccuracyRow; got KurtosisRow"):
        results.write(AccuracyRow, [KurtosisRow("m", "d", 3.0, 10, 4)])
    with pytest.raises(rs.InputError, match="expected one of the result row types"):
        results.write(dict, [])
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_malformed_files_are_reported(tmp_path):
    results = Results(tmp_path)
    with pytest.raises(rs.DataError, match="accuracy.csv does not exist: the accuracy table was not computed"):
        results.read(AccuracyRow)
    results.path(AccuracyRow).write_text("model,dataset,acc,num_samples\n")
    with pytest.raises(rs.DataError, match=r"has columns \['model', 'dataset', 'acc', 'num_samples'\]; expected"):
        results.read(AccuracyRow)
    results.path(AccuracyRow).write_text("model,dataset,accuracy,num_samples\nm,d,0.5,ten\n")
    with pytest.raises(rs.DataError, match="line 2, num_samples: expected an integer; got 'ten'"):
        results.read(AccuracyRow)
    results.path(AccuracyRow).write_text("model,dataset,accuracy,num_samples\nm,d,,10\n")
    with pytest.raises(rs.DataError, match="line 2, accuracy: empty cell; expected a number"):
        results.read(AccuracyRow)


def test_upsert_replaces_rows_with_the_same_key(tmp_path):
    results = Results(tmp_path)
    first = [PruningRow("a", "singular", f, "val", 0.5 - f / 2, None) for f in (0.0, 0.5)]
    results.upsert(PruningRow, first)
    results.upsert(PruningRow, [PruningRow("b", "singular", 0.0, "val", 0.7, 0.01)])
    results.upsert(PruningRow, [PruningRow("a", "singular", 0.5, "val", 0.3, 0.02),
                                PruningRow("a", "random", 0.5, "val", 0.1, None)])
    assert results.read(PruningRow) == [first[0], PruningRow("a", "singular", 0.5, "val", 0.3, 0.02),
                                        PruningRow("b", "singular", 0.0, "val", 0.7, 0.01),
                                        PruningRow("a", "random", 0.5, "val", 0.1, None)]


def test_an_interrupted_write_keeps_the_previous_table(tmp_path, monkeypatch):
    results = Results(tmp_path)
    before = [AccuracyRow("m", "d", 0.5, 10)]
    results.write(AccuracyRow, before)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        results.write(AccuracyRow, [AccuracyRow("m", "d", 0.9, 10)])
    monkeypatch.undo()
    assert results.read(AccuracyRow) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["accuracy.csv"]  # no temporary file left


def test_provenance_merges_inputs_and_keeps_the_config(tmp_path):
    results = Results(tmp_path)
    assert results.provenance()["tables"] == {} and results.inputs(KurtosisRow) == []
    results.set_config({"output_dir": tmp_path, "threshold": math.nan, "pairs": ("a", "b")})
    results.record(KurtosisRow, [InputRecord("a", "val", "k1", 100), InputRecord("b", "val", "k2", 100)],
                   {"dataset": "val"})
    results.record(KurtosisRow, [InputRecord("b", "val", "k3", 90)], {"pooling": "cls"})
    assert results.inputs(KurtosisRow) == [InputRecord("a", "val", "k1", 100), InputRecord("b", "val", "k3", 90)]
    document = json.loads((tmp_path / "provenance.json").read_text())  # strict JSON: NaN written as null
    assert document["config"] == {"output_dir": str(tmp_path), "threshold": None, "pairs": ["a", "b"]}
    assert document["tables"]["kurtosis"]["parameters"] == {"dataset": "val", "pooling": "cls"}
    assert document["versions"]["python"] and document["versions"]["numpy"] == np.__version__
    assert document["created"] <= document["updated"]
    assert [field.name for field in dataclasses.fields(InputRecord)] == ["model", "dataset", "store_key",
                                                                         "num_samples", "skipped"]
    (tmp_path / "provenance.json").write_text("{not json")
    with pytest.raises(rs.DataError, match="provenance.json is not readable JSON"):
        results.provenance()
