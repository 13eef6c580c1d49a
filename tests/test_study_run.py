"""``robustsig study run`` end to end on a tiny pool (two 5-class checkpoints of a timm test ViT, a random-init timm
ConvNeXt control, the bundled MobileNetV2) and datasets written here as real image files (an id folder, two shift
folders, one with a truncated JPEG, a Broden folder): every number in results/ is checked against the metrics
computed directly from the stores by the reference implementations of ``oracles`` (numpy, scipy, scikit-learn:
no robustsig metric is its own oracle); reruns redo nothing; --only and a changed threshold rerun only what they
touch.

The study runs once per module (the tests after the first read it, the last ones rerun it); torch uses one thread,
as on a busy shared machine threaded LAPACK calls are many times slower."""

from __future__ import annotations

import dataclasses

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

import oracles
import robustsig as rs
from robustsig.cli import main
from robustsig.runner import run_study
from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.analyses.atlas import AtlasConceptRow, AtlasDirectionRow, AtlasImageRow
from robustsig.study.analyses.cka import CkaRow, match_layers
from robustsig.study.analyses.concepts.summary import ConceptRow, ConceptTopRow, VennRow
from robustsig.study.analyses.concepts.thresholds import ConceptThresholdRow
from robustsig.study.analyses.importance import ImportanceRow, PrivilegedRow
from robustsig.study.analyses.kurtosis import KurtosisRow, OutlierRow
from robustsig.study.analyses.pruning import PruningRow
from robustsig.study.analyses.wiseft import WiseFtRow, WiseFtSignatureRow
from robustsig.study.config import load_study_config
from robustsig.study.ledger import Ledger
from robustsig.study.subjects import random_init_seed

from browser import CHROMIUM, check_page
from cka_oracle import torch_cka_compare
from study_helpers import build_world, counting_forwards, study_data, write_config

MODELS = ("zs", "ft", "ctrl", "mnv2")
SETS = ("photos", "shift-a", "shift-b")
IMAGES = {"photos": 30, "shift-a": 19, "shift-b": 20, "broden": 40}  # decoded images (shift-a: one truncated)
FILES = {"photos": 30, "shift-a": 20, "shift-b": 20, "broden": 40}
SECTIONS = ("accuracy", "kurtosis", "importance", "pruning", "concepts", "atlas", "cka", "wiseft", "predict_er")


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


def stored_accuracy(s: rs.ActivationStore) -> float:
    """Top-1 over all logits: the study's folder sets have no class subset or map."""
    return oracles.top1(s.read("logits"), s.read("labels"))


def test_the_run_extracts_each_store_once_and_computes_every_step(study):
    summary = study.summary
    assert summary.ok and summary.counts()["failed"] == summary.counts()["blocked"] == 0
    assert {step.status for step in summary.steps} == {"done"}
    subjects = [*MODELS, "zs@alpha=0.5"]
    assert sorted(summary.ran("extract")) == sorted(f"extract:{s}:{d}" for s in subjects for d in (*SETS, "broden"))
    # every image through a model once to extract (each pass padded to the batch size, so that a row does not
    # depend on its batch), then once more through each CKA pair (the paper's paired pass)
    paired = 2 * 2 * sum(len(batch) for batches in cka_minibatches(study).values() for batch in batches)
    batch = study.config.batch_size
    padded = sum(-(-files // batch) * batch for files in FILES.values())
    assert sum(study.images) == len(subjects) * padded + paired
    # the paper's CKA never stores activations: the only layers stored are those layer_kurtosis asks for
    assert {(m, d) for m in MODELS for d in SETS if store(study, m, d).layers} == {("zs", "photos")}
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
            assert accuracy[(model, name)].accuracy == pytest.approx(stored_accuracy(s), abs=1e-15)
            assert accuracy[(model, name)].num_samples == IMAGES[name]
        acc_id = accuracy[(model, "photos")].accuracy
        acc_shift = (accuracy[(model, "shift-a")].accuracy + accuracy[(model, "shift-b")].accuracy) / 2
        if 0 < acc_id < 1:
            row = robustness[model]
            assert row.acc_shift == pytest.approx(acc_shift, abs=1e-15)
            assert row.er == pytest.approx(oracles.effective_robustness(acc_id, acc_shift), abs=1e-12)
            assert (row.b1, row.b0) == (0.76, -1.49)
        else:  # ER undefined: no row, and the log says why
            assert model not in robustness
            assert f"[accuracy] {model}: ACC(I) {100 * acc_id:.2f}%" in (study.config.results_dir / "run.log").read_text()
    assert {"zs", "ft"} <= set(robustness)  # the 5-class models score in (0, 1)
    skipped = {(item.model, item.dataset): item.skipped for item in study.results.inputs(AccuracyRow)}
    assert skipped[("zs", "shift-a")] == 1 and skipped[("zs", "photos")] == 0
    # the results say what S is: two folder sets, not the paper's five kinds
    parameters = study.results.provenance()["tables"]["robustness"]["parameters"]
    assert parameters["shift_sets"] == {"shift-a": "folder", "shift-b": "folder"}
    assert parameters["paper_shift_sets"] is False and parameters["missing_classes"] == {}


def test_kurtosis_and_outliers_match_the_stores(study):
    kurtosis = {row.model: row for row in study.read(KurtosisRow)}
    outliers = study.read(OutlierRow)
    for model in MODELS:
        h = store(study, model, "photos").read("h")
        assert kurtosis[model].kurtosis == pytest.approx(oracles.activation_kurtosis(h), rel=1e-9)
        assert (kurtosis[model].dataset, kurtosis[model].num_samples, kurtosis[model].dim) == ("photos", 30, h.shape[1])
        assert [row.dimension for row in outliers if row.model == model] == oracles.outlier_dimensions(h)
    assert any(row.model == "mnv2" for row in outliers)  # real ImageNet weights have outlier features


def test_importance_and_privileged_directions_match_the_stores(study):
    importance = study.read(ImportanceRow)
    privileged = {row.model: row for row in study.read(PrivilegedRow)}
    for model in MODELS:
        s = store(study, model, "photos")
        W = s.read("W")
        expected = oracles.direction_importance(W, s.read("h"))
        singular = oracles.head_svd(W)[0]
        rows = [row for row in importance if row.model == model]
        assert [row.direction for row in rows] == list(range(len(expected)))
        np.testing.assert_allclose([row.importance for row in rows], expected, rtol=1e-6)  # h is float32
        np.testing.assert_allclose([row.singular_value for row in rows], singular, rtol=1e-10)
        flagged = oracles.privileged(expected, 3.0)
        assert sorted(row.direction for row in rows if row.privileged) == flagged
        summary = privileged[model]
        assert (summary.num_directions, summary.num_privileged) == (len(expected), len(flagged))
        assert summary.top_direction == int(expected.argmax())
        assert summary.top_ratio == pytest.approx(float(expected.max() / expected.mean()), rel=1e-6)
        assert summary.spearman == pytest.approx(spearmanr(singular, expected).statistic, abs=1e-6)
    assert privileged["mnv2"].num_privileged > 0


def test_pruning_curves_match_the_stores(study):
    """Each level rebuilt with numpy from the directions kept: singular order prunes the smallest singular values
    first, importance order the least important on the id set first, random order a seeded permutation (torch's
    ``randperm`` with seed 0, as the pruning options document)."""
    rows = study.read(PruningRow)
    fractions = [0.0, 0.25, 0.5, 0.75]
    for model in MODELS:
        id_store = store(study, model, "photos")
        W, b = id_store.read("W"), id_store.read("b")
        rank, svd = min(W.shape), oracles.head_svd(W)
        orders = {"singular": list(range(rank - 1, -1, -1)),
                  "importance": np.argsort(oracles.direction_importance(W, id_store.read("h")), kind="stable").tolist(),
                  "random": torch.randperm(rank, generator=torch.Generator().manual_seed(0)).tolist()}
        for order, sequence in orders.items():
            curves = {}
            for name in SETS:
                s = store(study, model, name)
                curves[name] = [oracles.pruned_accuracy(s.read("h"), s.read("labels"), svd, b,
                                                        sequence[:int(fraction * rank)]) for fraction in fractions]
                got = [row for row in rows if (row.model, row.order, row.dataset) == (model, order, name)]
                assert [row.fraction for row in got] == fractions
                np.testing.assert_allclose([row.accuracy for row in got], curves[name], atol=1e-12)
            expected = [None if not 0 < acc_id < 1 else
                        pytest.approx(oracles.effective_robustness(acc_id, (a + b_) / 2), abs=1e-12)
                        for acc_id, a, b_ in zip(curves["photos"], curves["shift-a"], curves["shift-b"])]
            got = [row.er for row in rows if (row.model, row.order, row.dataset) == (model, order, "photos")]
            assert got == expected
            assert got == [row.er for row in rows if (row.model, row.order, row.dataset) == (model, order, "shift-b")]


def signed_rsv(W) -> np.ndarray:
    """numpy's right singular vectors with the study's sign convention, applied here: each column's largest-magnitude
    entry made positive (the one-sided AP of h . v_i depends on it)."""
    V = oracles.head_svd(W)[2]
    return V * np.sign(V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])])


def reference_ap(study, subject: str, basis: str, names: list[str], columns: int | None = None,
                 sign: int = 1) -> np.ndarray:
    """AP of each concept and direction with scikit-learn, from the Broden store: the balanced sets, scores
    ``sign`` x h . v_i (the sign convention above) or ``sign`` x h; ``sign=-1``: the AP of the negated scores."""
    s = store(study, subject, "broden")
    broden = dataset(study, "broden")
    sets = {item.name: item for item in broden.balanced_sets(min_positives=4, seed=0)}
    h = s.read("h").double().numpy()
    scores = sign * (h @ signed_rsv(s.read("W")) if basis == "singular" else h)
    ids = s.read("ids").tolist()
    out = []
    for name in names:
        rows = [ids.index(i) for i in sets[name].indices.tolist()]
        out.append(oracles.average_precision(sets[name].labels, scores[rows][:, :columns], "positive"))
    return np.array(out)


def test_concept_ap_matrices_match_sklearn_and_the_summaries_follow(study):
    folder = study.config.results_dir / "concept_ap"
    concepts = {(row.model, row.basis): row for row in study.read(ConceptRow)}
    tops, venn = study.read(ConceptTopRow), study.read(VennRow)
    sweep = study.read(ConceptThresholdRow)
    differ = []
    for model in MODELS:
        for basis in ("singular", "neuron"):
            ap = np.load(folder / f"{model}_{basis}.npy")  # AP(s), the paper's
            negative = np.load(folder / f"{model}_{basis}_negative.npy")  # AP(-s)
            info = json.loads((folder / f"{model}_{basis}.json").read_text())
            names = info["concepts"]
            assert names == ["red-c", "sky", "wood", "striped", "kitchen"]
            assert info["categories"] == ["color", "object", "material", "texture", "scene"]
            assert "orientation" not in info and "AP(-s) in SUBJECT_BASIS_negative.npy" in info["sides"]
            columns = 64 if model == "mnv2" else None  # scikit-learn is slow: the first 64 directions of MobileNet
            # the runner scores in float32, the oracle in float64: a near-tie may order differently, so 1e-6
            np.testing.assert_allclose(ap[:, :columns], reference_ap(study, model, basis, names, columns), atol=1e-6)
            np.testing.assert_allclose(negative[:, :columns], reference_ap(study, model, basis, names, columns, -1),
                                       atol=1e-6)
            counts, both = oracles.concept_counts(ap, 0.8), oracles.concept_counts(np.fmax(ap, negative), 0.8)
            row = concepts[(model, basis)]
            assert (row.num_concepts, row.num_directions, row.threshold) == (5, ap.shape[1], 0.8)
            # the study uses the paper's one-sided AP (the default); concepts.csv names each orientation's counts
            assert row.orientation == "positive"
            assert row.unique_concepts == row.unique_concepts_positive == counts["unique"]
            assert row.polysemanticity == row.polysemanticity_positive
            assert row.polysemanticity == pytest.approx(counts["polysemanticity"], abs=1e-12)
            assert row.polysemanticity_active == pytest.approx(counts["polysemanticity_active"], nan_ok=True)
            assert row.polysemanticity_active_positive == pytest.approx(counts["polysemanticity_active"], nan_ok=True)
            assert row.unique_concepts_both == both["unique"]
            assert row.polysemanticity_both == pytest.approx(both["polysemanticity"], abs=1e-12)
            assert row.polysemanticity_active_both == pytest.approx(both["polysemanticity_active"], nan_ok=True)
            differ.append(row.polysemanticity_both != row.polysemanticity_positive)
            assert {r.concept for r in venn if (r.model, r.basis) == (model, basis)} == {names[c] for c in
                                                                                          counts["concepts"]}
            photos = store(study, model, "photos")
            direction = (int(oracles.direction_importance(photos.read("W"), photos.read("h")).argmax())
                         if basis == "singular" else int(np.abs(photos.read("h").numpy()).mean(0).argmax()))
            top = [r for r in tops if (r.model, r.basis) == (model, basis)]
            assert {r.direction for r in top} == {direction}
            assert [(r.concept, r.ap) for r in top] == oracles.top_concepts(ap, names, direction, 3)
            # the threshold sweep, from the same matrix
            swept = sorted((r for r in sweep if (r.model, r.basis) == (model, basis)), key=lambda r: r.threshold)
            assert [r.threshold for r in swept] == [0.8, 0.85, 0.9, 0.95]
            for r in swept:
                at = oracles.concept_counts(ap, r.threshold)
                at_both = oracles.concept_counts(np.fmax(ap, negative), r.threshold)
                assert (r.unique_concepts, r.orientation) == (at["unique"], "positive")
                assert r.polysemanticity == pytest.approx(at["polysemanticity"], abs=1e-12)
                assert r.polysemanticity_active == pytest.approx(at["polysemanticity_active"], nan_ok=True)
                assert (r.unique_concepts_positive, r.unique_concepts_both) == (at["unique"], at_both["unique"])
                assert r.polysemanticity_positive == pytest.approx(at["polysemanticity"], abs=1e-12)
                assert r.polysemanticity_both == pytest.approx(at_both["polysemanticity"], abs=1e-12)
                assert r.polysemanticity_active_both == pytest.approx(at_both["polysemanticity_active"], nan_ok=True)
    assert sum(row.unique_concepts for row in concepts.values()) > 0
    assert any(differ)  # the two orientations give different counts on this pool: the columns are not copies
    overlaps = study.results.provenance()["tables"]["venn"]["parameters"]["overlaps"]
    assert set(overlaps) == {"tiny-vit / synthetic"}  # zs, ft and the backbone's supervised control
    sets = {m: {r.concept for r in venn if (r.model, r.basis) == (m, "singular")} for m in ("zs", "ft", "ctrl")}
    assert overlaps["tiny-vit / synthetic"]["singular"] == oracles.venn_regions(sets)


def cka_minibatches(study) -> dict[str, list[list[int]]]:
    """The minibatches of the paper's CKA on each set: 8 consecutive positions, the decodable images among them;
    a minibatch of fewer than 4 is left out (torch_cka fails on it)."""
    batches = {}
    for name in SETS:
        data = dataset(study, name)
        decoded = [i for i in range(len(data)) if data[i][0] is not None]
        chunks = [[i for i in decoded if start <= i < start + 8] for start in range(0, len(data), 8)]
        batches[name] = [chunk for chunk in chunks if len(chunk) >= 4]
    return batches


def test_cka_is_torch_cka_on_the_id_set_and_every_shift_set(study):
    rows = study.read(CkaRow)
    assert {(row.dataset, row.estimator) for row in rows} == {(name, "minibatch") for name in SETS}
    # every layer tap, then h (the head's input) as the last point, paired with h whatever the depths
    blocks, stages = [f"block{i}" for i in range(6)] + ["h"], [f"stage{i}" for i in range(4)] + ["h"]
    for name in SETS:
        depth = [row for row in rows if (row.model_a, row.model_b, row.dataset) == ("zs", "ctrl", name)]
        assert [(r.layer_a, r.layer_b) for r in depth] == match_layers(blocks, stages, cross=False)
        assert (depth[-1].layer_a, depth[-1].layer_b) == ("h", "h") and depth[-2].layer_a != "h"
        cross = [row for row in rows if (row.model_a, row.model_b, row.dataset) == ("zs", "ft", name)]
        assert [(r.layer_a, r.layer_b) for r in cross] == [(a, b) for a in blocks for b in blocks]
    # the oracle: torch_cka's compare loop, on the raw outputs of the tapped modules and on h (what encode returns),
    # minibatch by minibatch
    models = {entry.name: entry for entry in study.config.models}
    classifiers = {name: rs.load_classifier(models[name].spec, device="cpu") for name in ("zs", "ft")}
    torch.manual_seed(random_init_seed("ctrl"))
    with pytest.warns(UserWarning, match="randomly initialised"):
        classifiers["ctrl"] = rs.load_classifier("timm:test_convnext", device="cpu")

    def features(name, images):
        clf = classifiers[name].eval()
        out = []
        hooks = [clf.encoder.get_submodule(tap.module).register_forward_hook(lambda m, i, o: out.append(o))
                 for tap in clf.taps.values()]
        with torch.no_grad():
            h = clf.encode(torch.stack([clf.preprocess(image) for image in images]))
        for hook in hooks:
            hook.remove()
        return [*out, h]

    for name, batches in cka_minibatches(study).items():
        data = dataset(study, name)
        feats = {model: [features(model, [data[i][0] for i in batch]) for batch in batches] for model in classifiers}
        for other, layers_b in (("ctrl", stages), ("ft", blocks)):
            expected = torch_cka_compare(feats["zs"], feats[other])
            for row in rows:
                if (row.model_a, row.model_b, row.dataset) == ("zs", other, name):
                    value = float(expected[blocks.index(row.layer_a), layers_b.index(row.layer_b)])
                    assert row.cka == pytest.approx(value, abs=1e-5), (name, row)
    # each value is torch_cka's (above): unbiased HSIC is not confined to [0, 1] (h against block0 is negative here)
    assert any(row.cka < 0.9 for row in rows) and all(math.isfinite(row.cka) for row in rows)
    h = {row.dataset: row.cka for row in rows if (row.model_a, row.model_b, row.layer_a) == ("zs", "ctrl", "h")}
    last = {row.dataset: row.cka for row in rows if (row.model_a, row.model_b, row.layer_a) == ("zs", "ctrl", "block5")}
    assert set(h) == set(SETS) and all(h[name] != last[name] for name in SETS)  # h is not the last block
    inputs = {(item.model, item.dataset): item.num_samples for item in study.results.inputs(CkaRow)}
    assert inputs[("zs", "shift-a")] == sum(len(b) for b in cka_minibatches(study)["shift-a"])


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
    accs = {name: stored_accuracy(point[name]) for name in SETS}
    assert middle.acc_id == pytest.approx(accs["photos"], abs=1e-15)
    assert middle.acc_shift == pytest.approx((accs["shift-a"] + accs["shift-b"]) / 2, abs=1e-15)
    if 0 < middle.acc_id < 1:
        assert middle.er == pytest.approx(oracles.effective_robustness(middle.acc_id, middle.acc_shift), abs=1e-12)
    assert middle.kurtosis == pytest.approx(oracles.activation_kurtosis(point["photos"].read("h")), rel=1e-9)
    # the kurtosis along the sweep on the id set and on each shift set (App. G, Figs. 15-16), from every point's stores
    signatures = [row for row in study.read(WiseFtSignatureRow) if row.pair == "zs"]
    assert [(row.alpha, row.dataset) for row in signatures] == [(a, name) for a in (0.0, 0.5, 1.0) for name in SETS]
    subjects = {0.0: "zs", 0.5: "zs@alpha=0.5", 1.0: "ft"}
    for row in signatures:
        h = store(study, subjects[row.alpha], row.dataset).read("h")
        assert row.kurtosis == pytest.approx(oracles.activation_kurtosis(h), rel=1e-9)
        assert row.num_samples == IMAGES[row.dataset]
        if row.dataset == "photos":
            assert row.kurtosis == rows[row.alpha].kurtosis  # wiseft.csv keeps the id set's
    assert len({row.kurtosis for row in signatures}) == len(signatures)
    folder = study.config.results_dir / "concept_ap"
    ap = np.load(folder / "zs@alpha=0.5_singular.npy")
    np.testing.assert_allclose(ap, reference_ap(study, "zs@alpha=0.5", "singular", json.loads(
        (folder / "zs@alpha=0.5_singular.json").read_text())["concepts"]), atol=1e-6)
    assert middle.unique_concepts == oracles.concept_counts(ap, 0.8)["unique"]
    assert rows[0.0].unique_concepts == oracles.concept_counts(np.load(folder / "zs_singular.npy"), 0.8)["unique"]


def test_the_atlas_shows_the_top_images_and_concepts_of_the_privileged_directions(study):
    directions, images, concepts = (study.read(table) for table in (AtlasDirectionRow, AtlasImageRow, AtlasConceptRow))
    broden = dataset(study, "broden")
    sets = broden.balanced_sets(min_positives=4, seed=0)
    for model in MODELS:
        W, h = store(study, model, "photos").read("W"), store(study, model, "photos").read("h")
        importance = oracles.direction_importance(W, h)
        expected = np.argsort(-importance, kind="stable")[:2]
        rows = sorted((row for row in directions if row.model == model), key=lambda row: row.rank)
        assert [row.direction for row in rows] == expected.tolist()
        np.testing.assert_allclose([row.ratio for row in rows], importance[expected] / importance.mean(), rtol=1e-6)
        V = rs.head_svd(W)[2].numpy()  # the study's sign convention: one-sided projections depend on it
        for name in ("photos", "broden"):
            s, samples = store(study, model, name), dataset(study, name).samples
            projection = s.read("h").double().numpy() @ V[:, expected]
            ids = s.read("ids").tolist()
            for k, direction in enumerate(expected.tolist()):
                top = np.argsort(-projection[:, k], kind="stable")[:3]
                got = sorted((row for row in images if (row.model, row.direction, row.dataset) == (model, direction,
                                                                                                   name)),
                             key=lambda row: row.rank)
                assert [row.image for row in got] == [samples[ids[i]][0] for i in top]
                np.testing.assert_allclose([row.projection for row in got], projection[top, k], rtol=1e-4, atol=1e-5)
                for row in got:
                    with Image.open(study.config.results_dir / row.thumbnail) as thumbnail:
                        assert thumbnail.size == (64, 64) and thumbnail.format == "JPEG"
        broden_store = store(study, model, "broden")
        scores = broden_store.read("h").double().numpy() @ V[:, expected]
        ids = broden_store.read("ids").tolist()
        ap = np.array([oracles.average_precision(item.labels, scores[[ids.index(i) for i in item.indices.tolist()]],
                                                 "positive") for item in sets])
        for k, direction in enumerate(expected.tolist()):
            got = sorted((row for row in concepts if (row.model, row.direction) == (model, direction)),
                         key=lambda row: row.rank)
            best = np.argsort(-ap[:, k], kind="stable")[:3]
            assert [row.concept for row in got] == [sets[c].name for c in best]
            np.testing.assert_allclose([row.ap for row in got], ap[best, k], rtol=1e-6)
    page = study.summary.report.read_text()
    assert page.count('<table class="atlas">') == len(MODELS)
    assert page.count('src="data:image/jpeg;base64,') == len(MODELS) * 2 * 2 * 3


def test_concept_significance_follows_its_p_values(study):
    from robustsig.study.analyses.concepts.significance import ConceptSignificanceRow

    rows = study.read(ConceptSignificanceRow)
    assert {(row.model, row.basis) for row in rows} == {(m, b) for m in MODELS for b in ("singular", "neuron")}
    concepts = {(row.model, row.basis): row for row in study.read(ConceptRow)}
    for row in rows:
        assert row.unique_concepts == concepts[(row.model, row.basis)].unique_concepts  # the same raw count
        assert row.significant_concepts <= row.unique_concepts and row.permutations == 999
        detail = json.loads((study.config.results_dir / "concept_ap" / f"{row.model}_{row.basis}_significance.json")
                            .read_text())
        adjusted = np.asarray(detail["adjusted"])
        encoded = np.asarray(detail["max_ap"]) >= row.threshold
        assert row.significant_concepts == int(np.sum(encoded & (adjusted <= row.alpha)))
        from scipy.stats import false_discovery_control
        np.testing.assert_allclose(adjusted, false_discovery_control(detail["p_values"]))


def test_signatures_and_er_prediction_follow_the_tables_and_stores(study):
    from robustsig.study.analyses.predict_er import (ErPredictionRow, ErPredictorRow, ErTrackingRow, LabelFreeRow,
                                                     SignatureRow)
    from robustsig.study.analyses.layer_kurtosis import LayerKurtosisRow

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
    # the layer profile: layer_kurtosis.csv's rows of the model on its kurtosis dataset (the id set)
    profile = [row for row in study.read(LayerKurtosisRow) if row.model == "zs" and row.dataset == "photos"]
    zs_store = store(study, "zs", "photos")
    assert [row.layer for row in profile] == zs_store.layers and len(profile) > 1
    assert signatures["zs"].layers == len(profile)
    assert signatures["zs"].layer_kurtosis_mean == pytest.approx(np.mean([row.kurtosis for row in profile]))
    first = profile[0]
    assert first.kurtosis == pytest.approx(rs.activation_kurtosis(zs_store.read(first.layer).flatten(1)), rel=1e-9)
    assert signatures["mnv2"].layers is None  # layer_kurtosis left it out: the column stays empty
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
    # every analysis of the study is shown; the one it leaves out (lowrank) says so
    assert re.findall(r"Not run: ([^<]*?) absent", page) == ["results/noclip.csv", "results/lowrank.csv"]
    assert "results/concept_ap/MODEL_BASIS.npy" in page and "Outlier dimensions of h" in page
    assert "ACC(S) is the mean over 2 shift set(s): shift-a (folder), shift-b (folder); these are not the paper" in page
    assert "Concepts, singular basis, the paper&#x27;s one-sided AP (Tables 3 and 6)" in page
    assert "Concepts, singular basis, variant both: max(AP(s), AP(-s))" in page
    assert "Threshold sensitivity (singular basis, the paper&#x27;s one-sided AP of h . v_i)" in page
    figures = {path.name for path in (study.config.report_dir / "figures").glob("*.png")}
    assert {"fig1_robustness.png", "fig2_importance.png", "pruning_accuracy.png", "fig5_cka_depth.png",
            "wiseft_sweeps.png", "venn_singular_0.png", "concept_thresholds_singular.png",
            "concept_thresholds_neuron.png", "signatures_vs_er.png", "er_tracking.png"} <= figures
    assert "Unique concepts against chance, singular basis" in page and "Signatures as ER predictors" in page
    assert "leave-one-model-out prediction needs at least 3" in page  # the pool's note, said plainly


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_report_renders_in_chromium(study):
    seen = check_page(study.summary.report)
    assert seen.errors == [] and seen.dialogs == [] and seen.scripts == 0
    assert seen.images and all(image["complete"] and image["width"] > 0 for image in seen.images)
    assert 1300 < seen.page_width <= 1400 and all(0 <= image["left"] and image["right"] <= seen.page_width
                                                  for image in seen.images)
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
        ap = np.load(folder / f"{row.model}_{row.basis}.npy")
        assert row.threshold == 0.9 and row.unique_concepts == oracles.concept_counts(ap, 0.9)["unique"]
    restored = run_study(study.path, progress=False)
    assert sorted(restored.ran()) == sorted(changed.ran())


def test_the_orientation_picks_what_the_derived_steps_use_without_recomputing_the_ap_matrices(study):
    before = {(row.model, row.basis): row for row in study.read(ConceptRow)}
    data = study_data(study.root)
    data["analyses"]["concepts"]["orientation"] = "both"
    changed = run_study(write_config(study.root, data, "both.yaml"), progress=False)
    assert changed.ok
    assert sorted(changed.ran()) == sorted([f"{step}:{m}" for m in MODELS for step in ("concepts",
                                                                                      "concept_thresholds")]
                                           + [f"concept_significance:{m}:{basis}" for m in MODELS
                                              for basis in ("singular", "neuron")]
                                           + ["venn", "wiseft:zs", "predict_er"])  # Wise-FT's concepts follow it too
    folder = study.config.results_dir / "concept_ap"
    venn = study.read(VennRow)
    for row in study.read(ConceptRow):
        ap = np.fmax(np.load(folder / f"{row.model}_{row.basis}.npy"),
                     np.load(folder / f"{row.model}_{row.basis}_negative.npy"))
        counts = oracles.concept_counts(ap, 0.8)
        assert row.orientation == "both" and row.unique_concepts == row.unique_concepts_both == counts["unique"]
        assert row.polysemanticity == pytest.approx(counts["polysemanticity"], abs=1e-12)
        old = before[(row.model, row.basis)]  # the named columns do not depend on the option
        assert (row.unique_concepts_positive, row.polysemanticity_positive, row.unique_concepts_both) == (
            old.unique_concepts_positive, old.polysemanticity_positive, old.unique_concepts_both)
        names = json.loads((folder / f"{row.model}_{row.basis}.json").read_text())["concepts"]
        assert {r.concept for r in venn if (r.model, r.basis) == (row.model, row.basis)} == {
            names[c] for c in counts["concepts"]}
    restored = run_study(study.path, progress=False)
    assert sorted(restored.ran()) == sorted(changed.ran())
    assert {(row.model, row.basis): row for row in study.read(ConceptRow)} == before


def test_a_concepts_table_of_the_old_schema_is_recomputed_not_a_crash(study):
    """concepts.csv and concept_thresholds.csv from before the orientation columns (and AP matrices saved in one
    orientation): the next run deletes the tables, recomputes the AP matrices and rewrites the tables."""
    results = study.config.results_dir
    before = {(row.model, row.basis): row for row in study.read(ConceptRow)}
    old = ("model,basis,num_directions,num_concepts,unique_concepts,polysemanticity,threshold,"
           "polysemanticity_active,orientation\nzs,singular,5,5,2,0.4,0.8,1.0,both\n")
    (results / "concepts.csv").write_text(old)
    (results / "concept_thresholds.csv").write_text("model,basis,threshold,unique_concepts,polysemanticity,"
                                                     "polysemanticity_active,orientation\nzs,singular,0.8,2,0.4,1.0,"
                                                     "both\n")
    (results / "concept_ap" / "zs_singular_negative.npy").unlink()  # as an older run left it: one matrix
    rerun = run_study(study.path, progress=False)
    assert rerun.ok
    assert {"concept_ap:zs:singular", *(f"concepts:{m}" for m in MODELS),
            *(f"concept_thresholds:{m}" for m in MODELS)} <= set(rerun.ran())
    assert {(row.model, row.basis): row for row in study.read(ConceptRow)} == before
    log = (results / "run.log").read_text()
    assert "concepts.csv has columns" in log and "deleted, it will be recomputed" in log


def test_only_runs_the_selected_analyses_and_models(study):
    before = {row.model: row for row in study.read(PrivilegedRow)}
    data = study_data(study.root)
    data["analyses"]["importance"]["privileged_ratio"] = 2.0
    selected = run_study(write_config(study.root, data, "ratio.yaml"), only="importance,mnv2", progress=False)
    assert [(step.id, step.status) for step in selected.steps] == [("extract:mnv2:photos", "reused"),
                                                                    ("importance:mnv2", "done")]
    assert [row["model"] for row in selected.rows] == ["mnv2"]
    after = {row.model: row for row in study.read(PrivilegedRow)}
    expected = oracles.privileged(np.array([r.importance for r in study.read(ImportanceRow) if r.model == "mnv2"]), 2.0)
    assert after["mnv2"].num_privileged == len(expected) > before["mnv2"].num_privileged
    assert after["zs"] == before["zs"]  # not selected: untouched
    ledger = Ledger(study.config.results_dir)
    assert ledger.finished("kurtosis:mnv2", ledger.digest("kurtosis:mnv2"))
    with pytest.raises(rs.InputError, match="'kurtosiss' is neither an analysis"):
        run_study(study.path, only=["kurtosiss"], progress=False)
    restored = run_study(study.path, only=["importance", "mnv2"], progress=False)
    assert restored.ran() == ["importance:mnv2"]
    # recomputed: importance projects h in float32 through BLAS, whose summation order may change with the load
    # (threads, alignment), so the floats agree to rounding, not bit for bit
    restored_rows = study.read(PrivilegedRow)
    assert [row.model for row in restored_rows] == list(before)
    for row in restored_rows:
        now, then = dataclasses.asdict(row), dataclasses.asdict(before[row.model])
        floats = [key for key, value in then.items() if isinstance(value, float)]
        assert {key: now[key] for key in floats} == pytest.approx({key: then[key] for key in floats}, rel=1e-9)
        assert {key: now[key] for key in now if key not in floats} == {key: then[key] for key in then
                                                                        if key not in floats}


def test_a_moved_study_folder_reuses_its_stores(tmp_path):
    """Datasets, checkpoints and stores moved together to another folder (or copied with cp -a): the stores are
    keyed by the files' bytes and names, not by where they lie."""
    import shutil

    root = build_world(tmp_path / "before")
    data = study_data(root)
    data["models"] = [m for m in data["models"] if m["name"] in ("zs", "mnv2")]
    data["analyses"] = {"accuracy": None}
    first = run_study(write_config(root, data), progress=False)
    assert first.ok and set(first.ran("extract")) == {f"extract:{m}:{d}" for m in ("zs", "mnv2") for d in SETS}
    moved = root.rename(tmp_path / "after")
    copied = tmp_path / "copy"
    shutil.copytree(moved, copied, copy_function=shutil.copy2, symlinks=True)  # cp -a: new inodes and ctimes
    for where in (moved, copied):
        with counting_forwards() as images:
            again = run_study(where / "study.yaml", progress=False)
        assert again.ok and images == []
        assert {step.status for step in again.steps if step.id.startswith("extract:")} == {"reused"}
