"""``robustsig demo`` end to end at the tiny size (the same code path as the demo, on 5 models and fewer images)
through the command line: the report holds every section's tables and figures and says what data it ran on,
results/ has rows for every model and set, the Wise-FT checkpoint in the pool is the Wise-FT sweep's own point,
predict_er leaves the weight-sharing group out, ``study.yaml`` reruns as written; a rerun computes nothing (no
forward pass, no training step), a study failure exits 1, and a folder that is not the demo's is refused."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import replace

import numpy as np
import pytest

import robustsig as rs
from robustsig.cli import main
from robustsig.demo import run as demo_run
from robustsig.demo.config import RANDOM
from robustsig.runner import StepRecord
from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.analyses.cka import CkaRow
from robustsig.study.analyses.concepts.summary import ConceptRow
from robustsig.study.analyses.importance import PrivilegedRow
from robustsig.study.analyses.kurtosis import KurtosisRow
from robustsig.study.analyses.predict_er import ErPredictionRow, SignatureRow
from robustsig.study.analyses.pruning import PruningRow
from robustsig.study.analyses.wiseft import WiseFtRow
from robustsig.study.config import load_study_config
from robustsig.study.results import Results

from cli_helpers import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*randomly initialised")]
BASE, FINETUNED, HALF = "squeezenet1_1", "squeezenet1_1-ft", "squeezenet1_1-wiseft-0.5"
MODELS = [BASE, FINETUNED, HALF, "mobilenet_v2", RANDOM]
SETS = ["photos", "sketch", "noise"]
# section id -> (its tables, its number of figures)
SECTIONS = {"pool": ((), 0), "accuracy": (("accuracy", "accuracy_by_dataset"), 1), "kurtosis": (("kurtosis",), 0),
            "importance": (("privileged",), 1), "pruning": ((), 2),
            "concepts": (("concepts_singular", "concepts_singular_both", "concepts_neuron", "concepts_neuron_both",
                          "concept_significance_singular", "concept_significance_neuron", "concept_top"), 4),
            "atlas": ((), 0), "cka": ((), 1), "noclip": None,
            "wiseft": (("wiseft",), 1), "layer_kurtosis": ((), 1), "lowrank": ((), 1),
            "predict_er": (("er_predictors", "er_tracking"), 2), "config": ((), 0), "versions": ((), 0)}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The tiny demo run once from an empty folder: (folder, exit code, --json summary)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        try:
            main(["demo", "--size", "tiny", "--out", str(out), "--json"])
            code = 0
        except SystemExit as done:
            code = done.code
    return out, code, json.loads(stdout.getvalue())


def _sections(html: str) -> dict[str, str]:
    parts = re.split(r'<section id="([a-z_]+)">', html)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_report_shows_every_section_and_what_the_data_is(first_run):
    out, code, summary = first_run
    assert code == 0 and summary["ok"], summary["study"]["failures"]
    report = out / "report" / "report.html"
    assert summary["report"] == str(report)
    html = report.read_text()
    sections = _sections(html)
    assert list(sections) == list(SECTIONS)
    assert "Not run: results/noclip.csv absent (the noclip analysis was not part of this study)" in sections["noclip"]
    for name, shown in SECTIONS.items():
        if shown is None:  # the demo has no NoCLIP model: the only section it leaves out, and says so
            continue
        tables, figures = shown
        body = sections[name]
        assert "Not run" not in body, name
        assert re.findall(r'<table id="table-([a-z_]+)">', body) == list(tables), name
        assert body.count('<figure><img src="data:image/png;base64,') == figures, name
    assert "ACC(S) is the mean over 2 shift set(s): sketch (folder), noise (folder)" in sections["accuracy"]
    assert "AP orientation: the paper&#x27;s one-sided AP of h . v_i" in sections["concepts"]
    assert "leaving each group of models that share weights out" in sections["predict_er"]
    assert sorted(p.name for p in (out / "report" / "figures").glob("*.png")) == [
        "concept_thresholds_neuron.png", "concept_thresholds_singular.png", "er_tracking.png", "fig1_robustness.png",
        "fig2_importance.png", "fig5_cka_depth.png", "layer_kurtosis.png", "lowrank_accuracy.png",
        "pruning_accuracy.png", "pruning_er.png", "signatures_vs_er.png", "venn_neuron_0.png", "venn_singular_0.png",
        "wiseft_sweeps.png"]
    statement = summary["data"]["statement"]
    assert "8 real ImageNet validation photos with their true labels" in statement
    assert "not ImageNet numbers" in statement
    head = html.split("<nav>")[0]  # the study's description, above the contents: the data, then the pool's layout
    assert "real ImageNet validation photos" in head and "the supervised column is empty" in head
    pool = sections["pool"]
    assert re.search(r"<td>squeezenet1_1-ft</td><td><code>bundled:squeezenet1_1@[^<]*model\.safetensors</code></td>"
                     r"<td>SqueezeNet 1.1</td><td>imagenet-1k</td><td>Finetuned</td>", pool)
    assert re.search(r"<td>squeezenet1_1-wiseft-0.5</td><td><code>bundled:squeezenet1_1@[^<]*"
                     r"squeezenet1_1-wiseft-0.5\.safetensors</code></td><td>SqueezeNet 1.1</td><td>wise-ft 0.5</td>",
                     pool)


def test_results_have_rows_for_every_model_and_the_wiseft_checkpoint_is_the_sweeps_point(first_run):
    out, _, summary = first_run
    results = Results(out / "results")
    accuracy = {(row.model, row.dataset): row.accuracy for row in results.read(AccuracyRow)}
    assert set(accuracy) == {(model, name) for model in MODELS for name in SETS}
    for table in (KurtosisRow, PrivilegedRow, PruningRow, SignatureRow):
        assert {row.model for row in results.read(table)} == set(MODELS), table.__name__
    assert {(row.model, row.basis) for row in results.read(ConceptRow)} == {(m, b) for m in MODELS
                                                                              for b in ("singular", "neuron")}
    assert {(row.model_a, row.model_b, row.dataset) for row in results.read(CkaRow)} == {
        (BASE, FINETUNED, "photos"), (BASE, "mobilenet_v2", "photos")}
    # the random control scores 0 on the id set, where eq. 1 is undefined: no ER row for it
    assert all(accuracy[(RANDOM, name)] == 0 for name in SETS)
    assert RANDOM not in {row.model for row in results.read(RobustnessRow)}
    wiseft = {row.alpha: row for row in results.read(WiseFtRow)}
    assert sorted(wiseft) == [0.0, 0.5, 1.0]
    for alpha, model in ((0.0, BASE), (0.5, HALF), (1.0, FINETUNED)):
        # the pool's saved checkpoint and the sweep's in-memory interpolation are the same model
        assert wiseft[alpha].acc_id == accuracy[(model, "photos")], alpha
        assert wiseft[alpha].acc_shift == pytest.approx(np.mean([accuracy[(model, name)] for name in SETS[1:]]))
    assert [row["model"] for row in summary["study"]["summary"]] == MODELS
    assert summary["finetunes"][BASE]["steps"] == 2 and not summary["finetunes"][BASE]["reused"]
    weights = out / "finetune" / BASE / "model.safetensors"
    assert summary["finetunes"][BASE]["spec"] == f"bundled:squeezenet1_1@{weights}"


def test_predict_er_leaves_the_weight_sharing_group_out(first_run):
    out, _, _ = first_run
    results = Results(out / "results")
    er = {row.model: row.er for row in results.read(RobustnessRow)}
    predictions = {(row.predictor, row.model): row.predicted_er for row in results.read(ErPredictionRow)}
    group = [BASE, FINETUNED, HALF]
    provenance = json.loads((out / "results" / "provenance.json").read_text())
    assert provenance["tables"]["er_predictors"]["parameters"]["groups"] == [group]
    # the reference for the SqueezeNet models is the mean ER of the models outside their group: MobileNetV2 alone
    for model in group:
        assert predictions[("mean of others", model)] == pytest.approx(er["mobilenet_v2"])
    assert predictions[("mean of others", "mobilenet_v2")] == pytest.approx(np.mean([er[m] for m in group]))


def test_study_yaml_is_the_study_that_ran(first_run):
    out, _, summary = first_run
    config = load_study_config(out / "study.yaml")
    assert config.model_names() == MODELS
    assert config.to_dict() == json.loads((out / "results" / "provenance.json").read_text())["config"]
    assert config.model(FINETUNED).spec == summary["finetunes"][BASE]["spec"]
    assert rs.load_classifier(config.model(FINETUNED).spec).head.out_features == 1000


def test_a_rerun_reuses_everything(first_run, capsys, monkeypatch):
    out, _, _ = first_run
    finetune = out / "finetune" / BASE
    stamps = {name: (finetune / name).stat().st_mtime_ns for name in ("checkpoint.pt", "model.safetensors")}
    stamps["wiseft"] = (out / "wiseft" / f"{HALF}.safetensors").stat().st_mtime_ns
    report = out / "report" / "report.html"
    built = report.stat().st_mtime_ns

    def no_step(*args, **kwargs):
        raise AssertionError("a training step was taken by a rerun")

    monkeypatch.setattr("robustsig.train.loop._Trainer._step", no_step)
    code, stdout, stderr = run_cli(capsys, "demo", "--size", "tiny", "--out", str(out), "--json")
    assert code == 0, stderr
    again = json.loads(stdout)
    assert again["data"]["reused"] and again["finetunes"][BASE]["reused"]
    assert again["study"]["counts"]["done"] == 0 and again["study"]["counts"]["reused"] > 0
    assert not [step for step in again["study"]["steps"] if step["tag"] == "extract" and step["status"] != "reused"]
    assert {name: (finetune / name).stat().st_mtime_ns for name in stamps if name != "wiseft"} == {
        name: stamp for name, stamp in stamps.items() if name != "wiseft"}
    assert (out / "wiseft" / f"{HALF}.safetensors").stat().st_mtime_ns == stamps["wiseft"]
    # nothing the report is built from changed: it is reused, not drawn again
    assert report.stat().st_mtime_ns == built and "report.html reused" in (out / "results" / "run.log").read_text()
    # the terminal form: the data statement, timings, the summary table and where the report is
    code, stdout, _ = run_cli(capsys, "demo", "--size", "tiny", "--out", str(out))
    assert code == 0
    assert "real ImageNet validation photos" in stdout and "Time: data" in stdout and "(reused)" in stdout
    assert f"report: {out / 'report' / 'report.html'}" in stdout
    assert re.search(r"^squeezenet1_1-ft +\d", stdout, re.MULTILINE)


def test_a_study_failure_exits_1(first_run, capsys, monkeypatch):
    out, _, _ = first_run
    real = demo_run.run_study

    def failing(*args, **kwargs):
        summary = real(*args, **kwargs)
        summary.steps.append(StepRecord("extract:mobilenet_v2:photos", "extract", "mobilenet_v2 on photos",
                                        "failed", 0.0, "the weights are missing", ("mobilenet_v2",)))
        return replace(summary)

    monkeypatch.setattr(demo_run, "run_study", failing)
    code, _, stderr = run_cli(capsys, "demo", "--size", "tiny", "--out", str(out))
    assert code == 1 and "the weights are missing" in stderr


def test_a_folder_that_is_not_the_demos_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    code, _, stderr = run_cli(capsys, "demo", "--size", "tiny", "--out", str(tmp_path))
    assert code == 2 and "is not a robustsig demo folder" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    code, _, stderr = run_cli(capsys, "demo", "--size", "huge", "--out", str(tmp_path / "new"))
    assert code == 2 and "--size: expected one of default, small, tiny" in stderr


def test_the_description_is_escaped_and_the_logit_ticks_do_not_crowd(first_run, tmp_path):
    out, _, _ = first_run
    config = json.loads((out / "results" / "provenance.json").read_text())["config"]
    config["description"] = "First <b>paragraph</b>.\n\nSecond & last."
    html = rs.build_report(out / "results", tmp_path / "report.html", config=config).html.read_text()
    head = html.split("<nav>")[0]
    assert ('<p class="note">First &lt;b&gt;paragraph&lt;/b&gt;.</p><p class="note">Second &amp; last.</p>' in head)
    from robustsig.study.analyses.accuracy import _logit, robustness_figure
    from robustsig.study.results import ModelRow

    models = [ModelRow("a", "x:a", "A", "t", "zero-shot"), ModelRow("b", "x:b", "A", "t", "finetuned")]
    rows = [RobustnessRow("a", 0.15, 0.12, 0.0, 0.76, -1.49), RobustnessRow("b", 0.997, 0.2, 0.0, 0.76, -1.49)]
    axis = robustness_figure(models, rows).axes[0]
    ticks = [tick for tick in axis.get_xticks()]
    low, high = axis.get_xlim()
    gaps = [_logit(b) - _logit(a) for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) >= 6 and min(gaps) >= (_logit(high) - _logit(low)) / 12 - 1e-9
    assert 0.995 in ticks  # the axis reaches past 99%: so do its labels


def test_the_report_key_follows_the_results_and_config_not_the_timestamps(first_run, tmp_path):
    import shutil

    from robustsig.runner import report_key

    out = first_run[0]
    config = load_study_config(out / "study.yaml")
    shutil.copytree(out / "results", tmp_path / "results")
    results = Results(tmp_path / "results")
    key = report_key(config, results)
    results.set_config(config.to_dict())  # a rerun stamps provenance.json again: same content, new time
    (tmp_path / "results" / "run.log").write_text("another run\n")
    assert report_key(config, results) == key
    rows = results.read(KurtosisRow)
    results.write(KurtosisRow, [replace(rows[0], kurtosis=rows[0].kurtosis + 1.0), *rows[1:]])
    assert report_key(config, results) != key
    results.write(KurtosisRow, rows)
    assert report_key(config, results) == key
    edited = load_study_config(out / "study.yaml")
    assert report_key(edited.model_copy(update={"description": "another note"}), results) != key
