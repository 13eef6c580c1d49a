"""``robustsig study run`` end to end on a tiny pool (two 5-class checkpoints of a timm test ViT, a random-init timm
ConvNeXt control, the bundled MobileNetV2) and datasets written here as real image files (an id folder, two shift
folders, one with a truncated JPEG, a Broden folder): every number in results/ is checked against the metrics
computed directly from the stores; reruns redo nothing; --only and a changed threshold rerun only what they touch.

The study runs once per module (the tests after the first read it, the last ones rerun it); torch uses one thread,
as on a busy shared machine threaded LAPACK calls are many times slower."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

import robustsig as rs
from robustsig.cli import main
from robustsig.data.scoring import pruning_scoring
from robustsig.study.analyses.cka import match_layers
from robustsig.study.config import load_study_config
from robustsig.study.ledger import Ledger
from robustsig.study.results import (AccuracyRow, CkaRow, ConceptRow, ConceptTopRow, ImportanceRow, KurtosisRow,
                                     OutlierRow, PrivilegedRow, PruningRow, RobustnessRow, VennRow, WiseFtRow)
from robustsig.study.runner import run_study
from robustsig.study.subjects import random_init_seed

from browser import CHROMIUM, check_page
from study_helpers import build_world, counting_forwards, study_data, write_config

MODELS = ("zs", "ft", "ctrl", "mnv2")
SETS = ("photos", "shift-a", "shift-b")
IMAGES = {"photos": 30, "shift-a": 19, "shift-b": 20, "broden": 40}  # decoded images (shift-a: one truncated)
SECTIONS = ("accuracy", "kurtosis", "importance", "pruning", "concepts", "cka", "wiseft", "predict_er")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = build_world(tmp_path_factory.mktemp("study"))
    path = write_config(root, study_data(root))
    with counting_forwards() as images:
        summary = run_study(path, progress=False)
    config = load_study_config(path)
    results = rs.Results(config.results_dir)
    return SimpleNamespace(root=root, path=path, config=config, summary=summary, images=images, results=results,
                           read=lambda table: results.read(table))


def store(study, subject: str, dataset: str) -> rs.ActivationStore:
    return rs.ActivationStore(study.config.store_dir / subject / dataset)


def dataset(study, name: str):
    entry = study.config.dataset(name)
    return rs.open_dataset(entry.kind, entry.root, **entry.options)


def test_the_run_extracts_each_store_once_and_computes_every_step(study):
    summary = study.summary
    assert summary.ok and summary.counts()["failed"] == summary.counts()["blocked"] == 0
    assert {step.status for step in summary.steps} == {"done"}
    subjects = [*MODELS, "zs@alpha=0.5"]
    assert sorted(summary.ran("extract")) == sorted(f"extract:{s}:{d}" for s in subjects for d in (*SETS, "broden"))
    assert sum(study.images) == len(subjects) * sum(IMAGES.values())  # every image through a model once
    # layers only where CKA reads them: the CKA models on the CKA dataset
    assert store(study, "zs", "photos").layers == [f"block{i}" for i in range(6)]
    assert store(study, "ctrl", "photos").layers == [f"stage{i}" for i in range(4)]
    assert store(study, "ft", "photos").layers == [f"block{i}" for i in range(6)]
    assert store(study, "zs", "shift-a").layers == store(study, "mnv2", "photos").layers == []
    assert len(store(study, "zs", "shift-a").skipped) == 1
    # the random-init control was built from a seed drawn from its name: the same weights in every run
    torch.manual_seed(random_init_seed("ctrl"))
    with pytest.warns(UserWarning, match="randomly initialised"):
        rebuilt = rs.load_classifier("timm:test_convnext", device="cpu")
    assert rebuilt.fingerprint() == store(study, "ctrl", "photos").manifest["key"]["model"]["fingerprint"]
    log = (study.config.results_dir / "run.log").read_text()
    assert "[extract] zs on shift-a: extracted 19 images" in log and "1 undecodable image(s) skipped" in log
    assert "[model] ctrl: random init (the spec names no weights), seed" in log


def test_accuracy_and_er_match_the_stores(study):
    accuracy = {(row.model, row.dataset): row for row in study.read(AccuracyRow)}
    robustness = {row.model: row for row in study.read(RobustnessRow)}
    for model in MODELS:
        for name in SETS:
            s = store(study, model, name)
            expected = rs.accuracy(s.read("logits"), dataset(study, name), labels=s.read("labels"))
            assert accuracy[(model, name)].accuracy == expected
            assert accuracy[(model, name)].num_samples == IMAGES[name]
        acc_id = accuracy[(model, "photos")].accuracy
        acc_shift = (accuracy[(model, "shift-a")].accuracy + accuracy[(model, "shift-b")].accuracy) / 2
        if 0 < acc_id < 1:
            row = robustness[model]
            assert row.acc_shift == pytest.approx(acc_shift, abs=1e-15)
            assert row.er == pytest.approx(rs.effective_robustness(acc_id, acc_shift), abs=1e-15)
            assert (row.b1, row.b0) == (0.76, -1.49)
        else:  # ER undefined: no row, and the log says why
            assert model not in robustness
            assert f"[accuracy] {model}: ACC(I) {100 * acc_id:.2f}%" in (study.config.results_dir / "run.log").read_text()
    assert {"zs", "ft"} <= set(robustness)  # the 5-class models score in (0, 1)
    skipped = {(item.model, item.dataset): item.skipped for item in study.results.inputs(AccuracyRow)}
    assert skipped[("zs", "shift-a")] == 1 and skipped[("zs", "photos")] == 0


def test_kurtosis_and_outliers_match_the_stores(study):
    kurtosis = {row.model: row for row in study.read(KurtosisRow)}
    outliers = study.read(OutlierRow)
    for model in MODELS:
        h = store(study, model, "photos").read("h")
        assert kurtosis[model].kurtosis == pytest.approx(rs.activation_kurtosis(h), rel=1e-12)
        assert (kurtosis[model].dataset, kurtosis[model].num_samples, kurtosis[model].dim) == ("photos", 30, h.shape[1])
        expected = rs.outlier_dimensions(h)
        assert [row.dimension for row in outliers if row.model == model] == expected.indices.tolist()
    assert any(row.model == "mnv2" for row in outliers)  # real ImageNet weights have outlier features


def test_importance_and_privileged_directions_match_the_stores(study):
    importance = study.read(ImportanceRow)
    privileged = {row.model: row for row in study.read(PrivilegedRow)}
    for model in MODELS:
        s = store(study, model, "photos")
        W = s.read("W")
        expected = rs.direction_importance(W, s.read("h"))
        singular = rs.head_svd(W).s
        rows = [row for row in importance if row.model == model]
        assert [row.direction for row in rows] == list(range(len(expected)))
        np.testing.assert_allclose([row.importance for row in rows], expected.numpy(), rtol=1e-10)
        np.testing.assert_allclose([row.singular_value for row in rows], singular.numpy(), rtol=1e-12)
        flagged = rs.privileged_directions(expected, 3.0).indices.tolist()
        assert sorted(row.direction for row in rows if row.privileged) == sorted(flagged)
        summary = privileged[model]
        assert (summary.num_directions, summary.num_privileged) == (len(expected), len(flagged))
        assert summary.top_direction == int(expected.argmax())
        assert summary.top_ratio == pytest.approx(float(expected.max() / expected.mean()), rel=1e-10)
        assert summary.spearman == pytest.approx(spearmanr(singular.numpy(), expected.numpy()).statistic, abs=1e-9)
    assert privileged["mnv2"].num_privileged > 0


def test_pruning_curves_match_the_stores(study):
    rows = study.read(PruningRow)
    fractions = [0.0, 0.25, 0.5, 0.75]
    for model in MODELS:
        id_store = store(study, model, "photos")
        W, b = id_store.read("W"), id_store.read("b")
        id_importance = rs.direction_importance(W, id_store.read("h"))
        for order in ("singular", "importance", "random"):
            curves = {}
            for name in SETS:
                s = store(study, model, name)
                curves[name] = rs.pruning_curve(s.read("h"), s.read("labels"), W, b, fractions, order,
                                                importance=id_importance, **pruning_scoring(dataset(study, name)))
                got = [row for row in rows if (row.model, row.order, row.dataset) == (model, order, name)]
                assert [row.fraction for row in got] == fractions
                assert [row.accuracy for row in got] == curves[name]["accuracy"].tolist()
            with warnings.catch_warnings():  # levels where the pruned id accuracy is 0: NaN, as the runner's empty cells
                warnings.simplefilter("ignore", RuntimeWarning)
                er = rs.pruning_effective_robustness(curves["photos"], {n: curves[n] for n in SETS[1:]})["er"]
            got = [row.er for row in rows if (row.model, row.order, row.dataset) == (model, order, "photos")]
            assert got == [None if np.isnan(value) else pytest.approx(value, abs=1e-12) for value in er]
            assert got == [row.er for row in rows if (row.model, row.order, row.dataset) == (model, order, "shift-b")]


def reference_ap(study, subject: str, basis: str, names: list[str], columns: int | None = None) -> np.ndarray:
    """AP of each concept and direction with scikit-learn, from the Broden store: the balanced sets, scores h @ V
    (head_svd's V, float32 as the runner) or h."""
    s = store(study, subject, "broden")
    broden = dataset(study, "broden")
    sets = {item.name: item for item in broden.balanced_sets(min_positives=4, seed=0)}
    h = s.read("h").float()
    scores = h @ rs.head_svd(s.read("W")).V.float() if basis == "singular" else h
    ids = s.read("ids").tolist()
    out = []
    for name in names:
        rows = [ids.index(i) for i in sets[name].indices.tolist()]
        values = scores[rows].numpy()[:, :columns]
        out.append([average_precision_score(sets[name].labels.numpy(), values[:, d]) for d in range(values.shape[1])])
    return np.array(out)


def test_concept_ap_matrices_match_sklearn_and_the_summaries_follow(study):
    folder = study.config.results_dir / "concept_ap"
    concepts = {(row.model, row.basis): row for row in study.read(ConceptRow)}
    tops, venn = study.read(ConceptTopRow), study.read(VennRow)
    for model in MODELS:
        for basis in ("singular", "neuron"):
            ap = np.load(folder / f"{model}_{basis}.npy")
            info = json.loads((folder / f"{model}_{basis}.json").read_text())
            names = info["concepts"]
            assert names == ["red-c", "sky", "wood", "striped", "kitchen"]
            assert info["categories"] == ["color", "object", "material", "texture", "scene"]
            columns = 64 if model == "mnv2" else None  # scikit-learn is slow: the first 64 directions of MobileNet
            np.testing.assert_allclose(ap[:, :columns], reference_ap(study, model, basis, names, columns), atol=1e-12)
            summary = rs.concept_summary(torch.from_numpy(ap), 0.8, names)
            row = concepts[(model, basis)]
            assert (row.num_concepts, row.num_directions, row.threshold) == (5, ap.shape[1], 0.8)
            assert row.unique_concepts == summary.unique_concepts
            assert row.polysemanticity == pytest.approx(summary.polysemanticity, nan_ok=True)
            assert {r.concept for r in venn if (r.model, r.basis) == (model, basis)} == summary.concept_set()
            photos = store(study, model, "photos")
            direction = (int(rs.direction_importance(photos.read("W"), photos.read("h")).argmax()) if basis == "singular"
                         else int(photos.read("h").abs().mean(0).argmax()))
            top = [r for r in tops if (r.model, r.basis) == (model, basis)]
            assert {r.direction for r in top} == {direction}
            assert [(r.concept, r.ap) for r in top] == summary.top_concepts(direction, 3)
    assert sum(row.unique_concepts for row in concepts.values()) > 0
    overlaps = study.results.provenance()["tables"]["venn"]["parameters"]["overlaps"]
    assert set(overlaps) == {"tiny-vit / synthetic"}  # zs, ft and the backbone's supervised control
    sets = {m: {r.concept for r in venn if (r.model, r.basis) == (m, "singular")} for m in ("zs", "ft", "ctrl")}
    expected = rs.concept_overlaps(sets)
    assert overlaps["tiny-vit / synthetic"]["singular"] == {" & ".join(k): len(v) for k, v in expected.items()}


def test_cka_matches_the_stores(study):
    rows = study.read(CkaRow)
    depth = [row for row in rows if (row.model_a, row.model_b) == ("zs", "ctrl")]
    blocks, stages = [f"block{i}" for i in range(6)], [f"stage{i}" for i in range(4)]
    assert [(r.layer_a, r.layer_b) for r in depth] == match_layers(blocks, stages, cross=False)
    assert [(r.layer_a, r.layer_b) for r in depth] == [("block0", "stage0"), ("block2", "stage1"),
                                                       ("block3", "stage2"), ("block5", "stage3")]
    cross = [row for row in rows if (row.model_a, row.model_b) == ("zs", "ft")]
    assert [(r.layer_a, r.layer_b) for r in cross] == [(a, b) for a in blocks for b in blocks]
    for row in depth + cross:
        a, b = store(study, row.model_a, "photos"), store(study, row.model_b, "photos")
        assert row.cka == pytest.approx(rs.cka(a.read(row.layer_a), b.read(row.layer_b)), abs=1e-10)


def test_wiseft_sweep_matches_its_stores(study):
    rows = {row.alpha: row for row in study.read(WiseFtRow) if row.pair == "zs"}
    assert sorted(rows) == [0.0, 0.5, 1.0]
    accuracy = {(row.model, row.dataset): row.accuracy for row in study.read(AccuracyRow)}
    assert rows[0.0].acc_id == accuracy[("zs", "photos")] and rows[1.0].acc_id == accuracy[("ft", "photos")]
    point = {name: store(study, "zs@alpha=0.5", name) for name in (*SETS, "broden")}
    torch.testing.assert_close(point["photos"].read("W"),
                               torch.lerp(store(study, "zs", "photos").read("W"), store(study, "ft", "photos").read("W"),
                                          0.5))
    assert point["photos"].manifest["key"]["model"]["spec"].startswith("wiseft(timm:test_vit@")
    middle = rows[0.5]
    accs = {name: rs.accuracy(point[name].read("logits"), dataset(study, name), labels=point[name].read("labels"))
            for name in SETS}
    assert middle.acc_id == accs["photos"]
    assert middle.acc_shift == pytest.approx((accs["shift-a"] + accs["shift-b"]) / 2, abs=1e-15)
    if 0 < middle.acc_id < 1:
        assert middle.er == pytest.approx(rs.effective_robustness(middle.acc_id, middle.acc_shift), abs=1e-15)
    assert middle.kurtosis == pytest.approx(rs.activation_kurtosis(point["photos"].read("h")), rel=1e-12)
    folder = study.config.results_dir / "concept_ap"
    ap = np.load(folder / "zs@alpha=0.5_singular.npy")
    assert middle.unique_concepts == rs.concept_summary(torch.from_numpy(ap), 0.8).unique_concepts
    assert rows[0.0].unique_concepts == rs.concept_summary(torch.from_numpy(np.load(folder / "zs_singular.npy")),
                                                           0.8).unique_concepts


def test_concept_significance_follows_its_p_values(study):
    from robustsig.study.analyses.significance import ConceptSignificanceRow

    rows = study.read(ConceptSignificanceRow)
    assert {(row.model, row.basis) for row in rows} == {(m, b) for m in MODELS for b in ("singular", "neuron")}
    concepts = {(row.model, row.basis): row for row in study.read(ConceptRow)}
    for row in rows:
        assert row.unique_concepts == concepts[(row.model, row.basis)].unique_concepts  # the same raw count
        assert row.significant_concepts <= row.unique_concepts and row.permutations == 1000
        detail = json.loads((study.config.results_dir / "concept_ap" / f"{row.model}_{row.basis}_significance.json")
                            .read_text())
        adjusted = np.asarray(detail["adjusted"])
        encoded = np.asarray(detail["max_ap"]) >= row.threshold
        assert row.significant_concepts == int(np.sum(encoded & (adjusted <= row.alpha)))
        from scipy.stats import false_discovery_control
        np.testing.assert_allclose(adjusted, false_discovery_control(detail["p_values"]))


def test_signatures_and_er_prediction_follow_the_tables_and_stores(study):
    from robustsig.study.analyses.predict_er import (ErPredictionRow, ErPredictorRow, ErTrackingRow, LabelFreeRow,
                                                     SignatureLayerRow, SignatureRow)

    signatures = {row.model: row for row in study.read(SignatureRow)}
    assert list(signatures) == list(MODELS)
    kurtosis = {row.model: row.kurtosis for row in study.read(KurtosisRow)}
    privileged = {row.model: row for row in study.read(PrivilegedRow)}
    er = {row.model: row.er for row in study.read(RobustnessRow)}
    for model, row in signatures.items():
        assert row.kurtosis == kurtosis[model] and row.er == er.get(model)
        assert row.privileged_directions == privileged[model].num_privileged
        importance = np.sort([r.importance for r in study.read(ImportanceRow) if r.model == model])[::-1]
        top = max(1, round(0.2 * importance.size))
        assert row.importance_concentration == pytest.approx(importance[:top].sum() / importance.sum())
    # the layer profile: the stores of the CKA models hold layers, the id set's kurtosis of each
    layers = study.read(SignatureLayerRow)
    zs_store = store(study, "zs", "photos")
    assert [row.layer for row in layers if row.model == "zs"] == zs_store.layers
    first = next(row for row in layers if row.model == "zs")
    assert first.kurtosis == pytest.approx(rs.activation_kurtosis(zs_store.read(first.layer).flatten(1)), rel=1e-9)
    assert signatures["mnv2"].layers is None  # no layer store: the column stays empty
    # DoC and ATC on the stores, with the folder sets' (plain) scoring rule
    label_free = {(row.model, row.method, row.dataset): row for row in study.read(LabelFreeRow)}
    for model in MODELS:
        id_store = store(study, model, "photos")
        for name in ("shift-a", "shift-b"):
            shift = store(study, model, name).read("logits")
            args = (id_store.read("logits"), id_store.read("labels"), shift)
            assert label_free[(model, "doc", name)].predicted_accuracy == pytest.approx(rs.doc_accuracy(*args))
            assert label_free[(model, "atc-entropy", name)].predicted_accuracy == pytest.approx(
                rs.atc_accuracy(*args, score="entropy"))
    # ER is defined for 2 models of this pool only (the others score 0 or 100% on the id set): no predictor, and
    # the log says why; the predictors themselves are checked on planted pools in test_predict_er.py
    with_er = [model for model in MODELS if signatures[model].er is not None]
    assert len(with_er) < 3 and study.read(ErPredictorRow) == [] and study.read(ErPredictionRow) == []
    log = (study.config.results_dir / "run.log").read_text()
    assert "leave-one-model-out prediction needs at least 3" in log
    tracking = {row.signature: row for row in study.read(ErTrackingRow)}
    assert tracking["kurtosis"].points == 3


def test_the_report_has_every_section(study):
    page = study.summary.report.read_text()
    assert study.summary.report == study.config.report_dir / "report.html"
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "Not run:" not in page
    assert "results/concept_ap/MODEL_BASIS.npy" in page and "Outlier dimensions of h" in page
    figures = {path.name for path in (study.config.report_dir / "figures").glob("*.png")}
    assert {"fig1_robustness.png", "fig2_importance.png", "fig3_pruning_accuracy.png", "fig5_cka_depth.png",
            "fig11_wiseft.png", "fig4_venn_singular_0.png", "signatures_vs_er.png", "er_tracking.png"} <= figures
    assert "Unique concepts against chance, singular basis" in page and "Signatures as ER predictors" in page
    assert "leave-one-model-out prediction needs at least 3" in page  # the pool's note, said plainly


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_report_renders_in_chromium(study):
    seen = check_page(study.summary.report)
    assert seen.errors == [] and seen.dialogs == [] and seen.scripts == 0
    assert seen.images and all(image["complete"] and image["width"] > 0 for image in seen.images)
    assert seen.title == f"robustsig study: {study.config.output_dir.name}"


def csv_bytes(study) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in study.config.results_dir.glob("*.csv")}


def test_a_rerun_builds_no_model_and_recomputes_nothing(study, capsys):
    before = csv_bytes(study)
    log_start = len((study.config.results_dir / "run.log").read_text())
    with counting_forwards() as images:
        try:
            main(["study", "run", str(study.path)])
        except SystemExit as done:
            assert done.code in (0, None)
    out = capsys.readouterr()
    assert images == []
    assert csv_bytes(study) == before
    log = (study.config.results_dir / "run.log").read_text()[log_start:]
    assert "[model]" not in log  # the stores were recognised without building any model
    assert "[extract] zs on shift-a: reused (19 images, 1 undecodable image(s) skipped)" in out.err
    assert "[kurtosis] mnv2 on photos: unchanged since the last run" in out.err
    # the terminal summary: one row per model, then where the report is
    lines = out.out.splitlines()
    assert lines[0].split() == ["model", "ACC(I)", "%", "ACC(S)", "%", "ER", "(points)", "kurtosis", "#privileged",
                                "unique", "concepts"]
    assert [line.split()[0] for line in lines[2:6]] == list(MODELS)
    kurtosis = {row.model: row.kurtosis for row in study.read(KurtosisRow)}
    assert f"{kurtosis['mnv2']:.2f}" in lines[5]
    assert f"report: {study.config.report_dir / 'report.html'}" in out.out
    assert "0 step(s) computed" in out.out


def test_a_changed_threshold_recomputes_only_what_depends_on_it(study):
    data = study_data(study.root)
    data["analyses"]["concepts"]["threshold"] = 0.9
    changed = run_study(write_config(study.root, data, "threshold.yaml"), progress=False)
    assert changed.ok
    assert sorted(changed.ran()) == sorted([f"concepts:{m}" for m in MODELS] + ["venn", "wiseft:zs", "predict_er"]
                                           + [f"concept_significance:{m}:{basis}" for m in MODELS
                                              for basis in ("singular", "neuron")])
    folder = study.config.results_dir / "concept_ap"
    for row in study.read(ConceptRow):
        ap = torch.from_numpy(np.load(folder / f"{row.model}_{row.basis}.npy"))
        assert row.threshold == 0.9 and row.unique_concepts == rs.concept_summary(ap, 0.9).unique_concepts
    restored = run_study(study.path, progress=False)
    assert sorted(restored.ran()) == sorted(changed.ran())


def test_only_runs_the_selected_analyses_and_models(study):
    before = {row.model: row for row in study.read(PrivilegedRow)}
    data = study_data(study.root)
    data["analyses"]["importance"]["privileged_ratio"] = 2.0
    selected = run_study(write_config(study.root, data, "ratio.yaml"), only="importance,mnv2", progress=False)
    assert [(step.id, step.status) for step in selected.steps] == [("extract:mnv2:photos", "reused"),
                                                                    ("importance:mnv2", "done")]
    assert [row["model"] for row in selected.rows] == ["mnv2"]
    after = {row.model: row for row in study.read(PrivilegedRow)}
    expected = rs.privileged_directions(torch.tensor([r.importance for r in study.read(ImportanceRow)
                                                      if r.model == "mnv2"]), 2.0)
    assert after["mnv2"].num_privileged == len(expected.indices) > before["mnv2"].num_privileged
    assert after["zs"] == before["zs"]  # not selected: untouched
    ledger = Ledger(study.config.results_dir)
    assert ledger.finished("kurtosis:mnv2", ledger.digest("kurtosis:mnv2"))
    with pytest.raises(rs.InputError, match="'kurtosiss' is neither an analysis"):
        run_study(study.path, only=["kurtosiss"], progress=False)
    restored = run_study(study.path, only=["importance", "mnv2"], progress=False)
    assert restored.ran() == ["importance:mnv2"] and study.read(PrivilegedRow) == list(before.values())
