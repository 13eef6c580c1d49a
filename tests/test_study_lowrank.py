"""The study's ``layer_kurtosis`` and ``lowrank`` analyses on the tiny pool of test_study_run (a timm test ViT, the
bundled MobileNetV2): layer kurtosis equals eq. 2 on the stored layers, the low-rank model at fraction 0 scores
exactly what the stores score (same accuracy and ER as the accuracy analysis), the report shows both, reruns redo
nothing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import robustsig as rs
from robustsig.runner import run_study
from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.analyses.layer_kurtosis import LayerKurtosisRow
from robustsig.study.analyses.lowrank import LowRankRow
from robustsig.study.config import load_study_config

from study_helpers import build_world, study_data, write_config

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = build_world(tmp_path_factory.mktemp("study"))
    data = study_data(root)
    data["models"] = [m for m in data["models"] if m["name"] in ("zs", "ft", "mnv2")]
    data["analyses"] = {"accuracy": None, "layer_kurtosis": None,
                        "lowrank": {"models": ["zs"], "fractions": [0.0, 0.5], "calibration_images": 12,
                                    "orders": ["importance", "singular"]}}
    path = write_config(root, data)
    summary = run_study(path, progress=False)
    config = load_study_config(path)
    results = rs.Results(config.results_dir)
    return SimpleNamespace(path=path, config=config, summary=summary, read=results.read)


def test_layer_kurtosis_is_eq2_on_every_stored_layer(study):
    rows = study.read(LayerKurtosisRow)
    assert {(row.model, row.dataset) for row in rows} == {(m, d) for m in ("zs", "ft", "mnv2")
                                                          for d in ("photos", "shift-a", "shift-b")}
    for row in rows:
        store = rs.ActivationStore(study.config.store_dir / row.model / row.dataset)
        h = store.read(row.layer).double().numpy()
        centered = h - h.mean(axis=1, keepdims=True)
        by_hand = np.mean((centered ** 4).mean(axis=1) / (centered ** 2).mean(axis=1) ** 2)
        assert row.kurtosis == pytest.approx(by_hand, rel=1e-9)
        layers = store.layers
        assert row.depth == pytest.approx(layers.index(row.layer) / (len(layers) - 1))
        mean_abs = np.abs(h).mean(axis=0)
        assert row.outliers == int((mean_abs >= 5 * mean_abs.mean()).sum())
        assert row.vectors == ("cls" if row.model != "mnv2" else "mean")


def test_lowrank_at_fraction_zero_scores_what_the_stores_score(study):
    rows = study.read(LowRankRow)
    accuracy = {(row.model, row.dataset): row.accuracy for row in study.read(AccuracyRow)}
    er = {row.model: row.er for row in study.read(RobustnessRow)}
    assert {row.model for row in rows} == {"zs"}
    for row in rows:
        if row.fraction == 0.0:
            assert row.accuracy == accuracy[(row.model, row.dataset)]
            assert row.er == pytest.approx(er[row.model], abs=1e-12)
            assert row.parameter_fraction == 1.0 and row.flop_fraction == pytest.approx(1.0)
        else:
            assert row.parameter_fraction < 1.0 and row.flop_fraction < 1.0
    assert len(rows) == 2 * 2 * 3


def test_report_shows_both_and_a_rerun_recomputes_nothing(study):
    page = study.summary.report.read_text()
    assert '<section id="layer_kurtosis">' in page and '<section id="lowrank">' in page
    figures = {path.name for path in (study.config.report_dir / "figures").glob("*.png")}
    assert {"layer_kurtosis.png", "lowrank_accuracy.png", "lowrank_er.png"} <= figures
    before = {p.name: p.read_bytes() for p in study.config.results_dir.glob("*.csv")}
    again = run_study(study.path, progress=False)
    assert {p.name: p.read_bytes() for p in study.config.results_dir.glob("*.csv")} == before
    assert again.ok
