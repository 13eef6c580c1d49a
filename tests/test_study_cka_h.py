"""CKA through h, the head's input: the last point of every CKA curve (App. B's "drop in the last layers" is about
the representation the paper analyses). The paper's minibatch estimator is checked against torch_cka in
test_study_run.py; here the pooled estimator on a small study (its h point is ``rs.cka`` of the stored h, its layer
points ``rs.cka`` of the stored layers) and the figures that name h."""

from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import robustsig as rs
from robustsig.runner import run_study
from robustsig.study.analyses.cka import CkaRow, match_layers
from robustsig.study.analyses.cka.report import cka_depth_figure, cka_heatmap_figure
from robustsig.study.config import load_study_config

from study_helpers import build_world, study_data, write_config

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = [f"block{i}" for i in range(6)]
STAGES = [f"stage{i}" for i in range(4)]


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """The CKA analysis alone, pooled estimator (linear, biased HSIC), on the id set: zs against the random-init
    ConvNeXt (fewer layers: matched by relative depth) and zs against ft layer x layer."""
    root = build_world(tmp_path_factory.mktemp("cka_h"))
    data = study_data(root)
    data["models"] = [model for model in data["models"] if model["name"] in ("zs", "ft", "ctrl")]
    del data["datasets"]["broden"]
    data["analyses"] = {"cka": {"pairs": [{"model_a": "zs", "model_b": "ctrl", "layers": "all"},
                                          {"model_a": "zs", "model_b": "ft", "cross": True}],
                                "estimator": "pooled", "dataset": "photos"}}
    path = write_config(root, data)
    summary = run_study(path, progress=False)
    assert summary.ok
    config = load_study_config(path)
    return config, rs.Results(config.results_dir).read(CkaRow)


def test_the_pooled_estimator_ends_every_curve_with_the_stored_h(pooled):
    config, rows = pooled
    stores = {model: rs.ActivationStore(config.store_dir / model / "photos") for model in ("zs", "ft", "ctrl")}
    depth = [row for row in rows if (row.model_a, row.model_b) == ("zs", "ctrl")]
    assert [(row.layer_a, row.layer_b) for row in depth] == [*match_layers(BLOCKS, STAGES, False), ("h", "h")]
    cross = [row for row in rows if (row.model_a, row.model_b) == ("zs", "ft")]
    assert [(row.layer_a, row.layer_b) for row in cross] == [(a, b) for a in [*BLOCKS, "h"] for b in [*BLOCKS, "h"]]
    assert {row.estimator for row in rows} == {"pooled"}
    for row in rows:
        a, b = stores[row.model_a].read(row.layer_a), stores[row.model_b].read(row.layer_b)
        assert row.cka == pytest.approx(rs.cka(a, b), abs=1e-9), row
    h = {row.model_b: row.cka for row in rows if (row.layer_a, row.layer_b) == ("h", "h")}
    assert h["ctrl"] == pytest.approx(rs.cka(stores["zs"].read("h"), stores["ctrl"].read("h")), abs=1e-9)
    assert h["ft"] != next(row.cka for row in cross if (row.layer_a, row.layer_b) == ("block5", "block5"))
    # the stores hold the layer taps CKA asked for, and h as every store does: no layer named h was requested
    assert stores["zs"].layers == BLOCKS and stores["ctrl"].layers == STAGES


def test_the_depth_figure_names_h_at_relative_depth_one():
    rows = [CkaRow("a", "b", layer, layer, value, dataset, "minibatch")
            for dataset, shift in (("val", 0.0), ("v2", -0.1))
            for layer, value in zip(["l0", "l1", "l2", "h"], [0.9 + shift, 0.8 + shift, 0.7 + shift, 0.3 + shift])]
    figure = cka_depth_figure(rows, "val")
    FigureCanvasAgg(figure).draw()
    ax = figure.axes[0]
    id_line = next(line for line in ax.lines if line.get_color() == "tab:orange")
    assert list(id_line.get_xdata()) == pytest.approx([0, 1 / 3, 2 / 3, 1]) and id_line.get_ydata()[-1] == 0.3
    assert [label.get_text() for label in ax.get_xticklabels()][-1] == "h"
    old = cka_depth_figure([row for row in rows if row.layer_a != "h"], "val")  # results without h: depth 1 is 1
    assert [label.get_text() for label in old.axes[0].get_xticklabels()][-1] == "1"


def test_the_heatmap_labels_h_whatever_the_tick_step():
    layers = [f"block{i}" for i in range(31)] + ["h"]  # a tick every 2 layers: h, the 32nd, falls between
    rows = [CkaRow("a", "b", x, y, 0.5, "val", "minibatch") for x in layers for y in layers]
    figure = cka_heatmap_figure(rows, "a", "b")
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()][-1] == "h"
    assert [label.get_text() for label in ax.get_xticklabels()][-1] == "h"
    assert [label.get_text() for label in ax.get_xticklabels()][:2] == ["block0", "block2"]
