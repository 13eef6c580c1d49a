"""``predict_er`` on planted results folders (tables written here): the signature table follows the tables it is read
from; ER a monotone function of kurtosis gives rho = 1 for kurtosis; a signature unrelated to ER gets an interval
covering 0; label-free predictions become predicted ER through the baseline line; Wise-FT tracking; the
``robustsig predict-er`` command (table, --json, --write) and its small-pool warning."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import robustsig as rs
from robustsig.study.analyses.accuracy import RobustnessRow
from robustsig.study.analyses.concepts.summary import ConceptRow
from robustsig.study.analyses.importance import ImportanceRow, PrivilegedRow
from robustsig.study.analyses.kurtosis import KurtosisRow
from robustsig.study.analyses.predict_er.tables import (ErPredictorRow, LabelFreeRow, SignatureRow, evaluate,
                                                        label_free_er, predict_er_tables)
from robustsig.study.analyses.wiseft import WiseFtRow
from robustsig.study.results import ModelRow, Results

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import run_cli  # noqa: E402

B1, B0 = 0.76, -1.49


def planted_results(root: Path, models: int = 10, seed: int = 0) -> tuple[Results, dict[str, float]]:
    """A results folder whose ER is a monotone (saturating) function of kurtosis, with unique concepts drawn
    independently of it."""
    rng = np.random.default_rng(seed)
    results = Results(root)
    names = [f"m{i}" for i in range(models)]
    kurtosis = np.sort(rng.uniform(3, 80, size=models))
    er = 0.3 * (1 - np.exp(-(kurtosis - 3) / 20))
    acc_id = rng.uniform(0.5, 0.8, size=models)
    predicted_line = 1 / (1 + np.exp(-(B1 * np.log(acc_id / (1 - acc_id)) + B0)))
    results.write(ModelRow, [ModelRow(n, "bundled:mobilenet_v2", "b", f"p{i}", "zero-shot")
                             for i, n in enumerate(names)])
    results.write(RobustnessRow, [RobustnessRow(n, a, float(p + e), float(e), B1, B0)
                                  for n, a, p, e in zip(names, acc_id, predicted_line, er)])
    results.write(KurtosisRow, [KurtosisRow(n, "val", float(k), 100, 64) for n, k in zip(names, kurtosis)])
    results.write(PrivilegedRow, [PrivilegedRow(n, 8, i % 3, 0, 2.0 + i, 0.9) for i, n in enumerate(names)])
    results.write(ImportanceRow, [ImportanceRow(n, d, 1.0, float(v), False) for n in names
                                  for d, v in enumerate(rng.uniform(0, 1, size=8))])
    unique = rng.permutation(models) * 7 + 100
    results.write(ConceptRow, [ConceptRow(n, "singular", 64, 300, int(u), 2.0, 0.9, 2.0, "positive", int(u), 2.0, 2.0,
                                          int(u) + 5, 4.0, 4.0) for n, u in zip(names, unique)])
    return results, dict(zip(names, er))


def test_signature_table_follows_the_tables(tmp_path):
    results, er = planted_results(tmp_path)
    rows = {row.model: row for row in predict_er_tables(results, write=True).signatures}
    importance = {m: np.sort([r.importance for r in results.read(ImportanceRow) if r.model == m])[::-1]
                  for m in rows}
    for model, row in rows.items():
        assert row.er == pytest.approx(er[model]) and row.dataset == "val"
        assert row.importance_concentration == pytest.approx(importance[model][:2].sum() / importance[model].sum())
        assert row.outlier_dimensions == 0 and row.layers is None and row.significant_concepts is None
    assert results.read(SignatureRow) == list(rows.values())


def test_monotone_kurtosis_gives_rho_one_and_unrelated_concepts_cover_zero(tmp_path):
    results, _ = planted_results(tmp_path, models=12)
    predictors = {row.predictor: row for row in predict_er_tables(results).evaluation.predictors}
    kurtosis = predictors["kurtosis"]
    assert kurtosis.spearman == pytest.approx(1.0) and kurtosis.kendall == pytest.approx(1.0)
    assert kurtosis.note == "" and kurtosis.ranked == "signature"
    assert kurtosis.mae < predictors["mean of others"].mae / 3
    unique = predictors["unique_concepts"]
    assert unique.spearman_low < 0 < unique.spearman_high
    combination = next(row for name, row in predictors.items() if name.startswith("ridge combination"))
    assert "kurtosis" in combination.predictor and combination.ranked == "prediction"


def test_label_free_predictions_become_er_through_the_line(tmp_path):
    results, er = planted_results(tmp_path, models=6)
    robustness = {row.model: row for row in results.read(RobustnessRow)}
    rows = [LabelFreeRow(m, "doc", s, robustness[m].acc_shift + shift, 0.5) for m in er
            for s, shift in (("a", 0.02), ("b", -0.04))]
    results.write(LabelFreeRow, rows)
    predicted = label_free_er(results)["doc"]
    for model in er:
        assert predicted[model] == pytest.approx(er[model] - 0.01, abs=1e-12)  # mean over the sets: -0.01
    predictors = {row.predictor: row for row in predict_er_tables(results).evaluation.predictors}
    assert predictors["doc"].mae == pytest.approx(0.01) and predictors["doc"].spearman == pytest.approx(1.0)


def test_wiseft_tracking(tmp_path):
    results, _ = planted_results(tmp_path, models=5)
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    results.write(WiseFtRow, [WiseFtRow("p", a, 0.7, 0.5, 0.3 - 0.2 * a, 20 - 15 * a, int(10 + 40 * (a - 0.5) ** 2))
                              for a in alphas])
    tracking = {row.signature: row for row in predict_er_tables(results).tracking}
    assert tracking["kurtosis"].spearman == pytest.approx(1.0) and tracking["kurtosis"].points == 5
    assert tracking["unique_concepts"].spearman == pytest.approx(0.0, abs=0.2)  # U-shaped: no tracking


def test_small_pool_and_too_small_pool():
    rows = [SignatureRow(f"m{i}", "val", k, None, None, None, None, None, None, None, None, None, None, e)
            for i, (k, e) in enumerate([(3.0, 0.0), (9.0, 0.1), (30.0, 0.2), (70.0, 0.25)])]
    evaluation = evaluate(rows, resamples=100)
    assert "mean little" in evaluation.note and all("mean little" in row.note for row in evaluation.predictors)
    too_small = evaluate(rows[:2])
    assert too_small.predictors == [] and "at least 3" in too_small.note
    with pytest.raises(rs.DataError, match="unknown signature"):
        evaluate(rows, combination=["kurtosis", "shoe_size"])


def test_the_command(tmp_path, capsys):
    results, _ = planted_results(tmp_path / "results", models=4)
    code, out, err = run_cli(capsys, "predict-er", str(results.root), "--resamples", "100")
    assert code == 0, err
    assert "kurtosis" in out and "mean of others" in out and "WARNING: only 4 model(s)" in out
    code, out, _ = run_cli(capsys, "predict-er", str(results.root), "--json", "--resamples", "100", "--write")
    document = json.loads(out)
    assert code == 0 and "mean little" in document["note"]
    assert {row["predictor"] for row in document["predictors"]} >= {"kurtosis", "unique_concepts"}
    assert results.read(ErPredictorRow)[0].predictor == document["predictors"][0]["predictor"]
    code, _, err = run_cli(capsys, "predict-er", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err


def test_groups_leave_models_that_share_weights_out_together(tmp_path):
    from robustsig.metrics.erpredict import loo_monotone, loo_ridge
    from robustsig.study.analyses.predict_er import PredictErOptions, merge_groups
    from robustsig.study.analyses.predict_er.tables import ErPredictionRow, group_labels

    results, er = planted_results(tmp_path)
    groups = [["m0", "m1", "m2"], ["m5", "m6"]]
    result = predict_er_tables(results, PredictErOptions(groups=groups), write=True)
    models = [row.model for row in result.signatures]
    labels = group_labels(models, groups)
    assert labels == ["m0", "m0", "m0", "m3", "m4", "m5", "m5", "m7", "m8", "m9"]
    x = np.array([row.kurtosis for row in result.signatures])
    y = np.array([er[m] for m in models])
    predicted = {(row.predictor, row.model): row.predicted_er for row in result.evaluation.predictions}
    np.testing.assert_allclose([predicted[("kurtosis", m)] for m in models], loo_monotone(x, y, groups=labels))
    # the reference for m0, m1 and m2 is the mean of the seven other models
    others = np.mean([er[m] for m in models[3:]])
    assert [predicted[("mean of others", m)] for m in models[:3]] == pytest.approx([others] * 3)
    combination = next(row for row in result.evaluation.predictors if row.kind == "combination")
    columns = combination.predictor.split("(")[1].rstrip(")").split(", ")
    X = np.array([[getattr(row, c) for c in columns] for row in result.signatures], dtype=float)
    np.testing.assert_allclose([predicted[(combination.predictor, m)] for m in models],
                               loo_ridge(X, y, groups=labels))
    assert {row.model for row in results.read(ErPredictionRow)} == set(models)
    assert merge_groups([["a", "b"], ["c", "a"], ["d"]]) == [["a", "b", "c"], ["d"]]
    # one group holding every model with an ER: nothing to predict from, said plainly
    alone = predict_er_tables(results, PredictErOptions(groups=[models]))
    assert alone.evaluation.predictors == [] and "all in one group" in alone.evaluation.note


def test_groups_are_validated_and_joined_with_the_wiseft_pairs(tmp_path):
    from robustsig.study.config import validate_study_config
    from robustsig.study.registry import build_plan

    base = {"version": 1, "output_dir": str(tmp_path / "out"), "store_dir": str(tmp_path / "store"),
            "models": [{"name": n, "spec": "bundled:mobilenet_v2", "backbone": "b", "pretraining": f"p{i}",
                        "kind": "zero-shot"} for i, n in enumerate(["a", "b", "c", "d"])],
            "datasets": {"id": {"kind": "folder", "root": str(tmp_path)},
                         "shift": [{"name": "s", "kind": "folder", "root": str(tmp_path)}]},
            "analyses": {"accuracy": {}, "predict_er": {"groups": [["a", "zz"], ["b", "a"]]}}}
    with pytest.raises(rs.InputError) as error:
        validate_study_config(base)
    assert "analyses.predict_er.groups[0][1]: expected the name of a model of the study" in str(error.value)
    assert "analyses.predict_er.groups[1][1]: model 'a' is already in analyses.predict_er.groups[0]" in str(error.value)
    base["analyses"]["predict_er"]["groups"] = [["a", "b"]]
    base["analyses"]["wiseft"] = {"alphas": [0.0, 1.0], "concepts": False,
                                  "pairs": [{"zero_shot": "b", "finetuned": "c"}]}
    config = validate_study_config(base)
    task = next(task for task in build_plan(config, config) if task.id == "predict_er")
    assert task.options.groups == [["a", "b", "c"]]
