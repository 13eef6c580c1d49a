"""The figures: what they plot (read back from the matplotlib objects), and that the PNG and SVG files decode."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from importlib import resources

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import robustsig as rs
from robustsig.report import figures
from robustsig.report.figures import curve_figure
from robustsig.study.analyses import accuracy
from robustsig.study.analyses.accuracy import RobustnessRow, robustness_caption, robustness_figure
from robustsig.study.analyses.cka import CkaRow
from robustsig.study.analyses.cka.report import cka_depth_figure, cka_heatmap_figure
from robustsig.study.analyses.concepts.summary import venn_figure
from robustsig.study.analyses.concepts.thresholds import ConceptThresholdRow, concept_thresholds_figure
from robustsig.study.analyses.importance import ImportanceRow, importance_figure
from robustsig.study.analyses.pruning import PruningRow
from robustsig.study.analyses.wiseft import WiseFtRow, wiseft_figure
from robustsig.study.results import ModelRow

from report_data import MODELS, write_results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("figures") / "results")


def saved(figure, tmp_path, stem):
    png, svg = figures.save_figure(figure, tmp_path, stem)
    with Image.open(png) as image:
        image.load()
        size = image.size
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return size


TESTBED_SHIFTS = ["imagenetv2-matched-frequency-format-val", "imagenet-r", "imagenet-sketch", "objectnet-1.0-beta",
                  "imagenet-a"]


def reference_cloud(reference_dir) -> tuple[np.ndarray, np.ndarray]:
    """The paper's baseline models from the vendored testbed files: the models trained on ImageNet alone (types
    STANDARD and LOW_ACCURACY_CNN) with all six accuracies; ACC(I) = val, ACC(S) = the mean of the five shifts."""
    folder = reference_dir / "imagenet-testbed"
    with open(folder / "model_types_derived.csv") as handle:
        types = {row["model"]: row["model_type"] for row in csv.DictReader(handle)}
    with open(folder / "robustness_top1s_er_columns.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if types[row["model"]] in ("STANDARD", "LOW_ACCURACY_CNN")
                and all(row[column] for column in ["val", *TESTBED_SHIFTS])]
    return (np.array([float(row["val"]) / 100 for row in rows]),
            np.array([np.mean([float(row[column]) / 100 for column in TESTBED_SHIFTS]) for row in rows]))


def test_robustness_figure_is_fig1_with_the_testbed_cloud_and_the_baseline(results, tmp_path, reference_dir):
    rows = results.read(RobustnessRow)
    figure = robustness_figure(MODELS, rows)
    FigureCanvasAgg(figure).draw()
    ax = figure.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "logit"
    xlabels = [label.get_text() for label in ax.get_xticklabels()]
    assert "10%" in xlabels and all(label.endswith("%") for label in xlabels)
    baseline = ax.lines[0]
    x, y = baseline.get_xdata(), baseline.get_ydata()
    expected = 1 / (1 + np.exp(-(0.76 * np.log(x / (1 - x)) - 1.49)))
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    # the grey cloud: the testbed's baseline models, as computed here from the vendored CSVs
    cloud, *pool = ax.collections
    acc_id, acc_shift = reference_cloud(reference_dir)
    assert cloud.get_label() == "baseline models (197, trained on ImageNet)" and len(acc_id) == 197
    np.testing.assert_allclose(cloud.get_offsets(), np.column_stack([acc_id, acc_shift]), rtol=1e-12)
    assert tuple(cloud.get_facecolor()[0][:3]) == (0.72, 0.72, 0.72)
    # the line is drawn across the cloud, which lies around it
    assert x.min() <= acc_id.min() and x.max() >= acc_id.max()
    points = sorted(tuple(collection.get_offsets()[0]) for collection in pool)
    assert points == sorted((row.acc_id, row.acc_shift) for row in rows)
    assert saved(figure, tmp_path, "fig1") == (640, 520)


def test_the_testbed_cloud_refits_the_papers_line(reference_dir):
    """A refit on the cloud (numpy's least squares in logit space) lands next to the paper's b1 = .76, b0 = -1.49,
    r = .99; the caption says so with the refit's numbers."""
    acc_id, acc_shift = reference_cloud(reference_dir)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    b1, b0 = np.polyfit(logit(acc_id), logit(acc_shift), 1)
    r = np.corrcoef(logit(acc_id), logit(acc_shift))[0, 1]
    assert (round(b1, 3), round(b0, 3), round(r, 3)) == (0.751, -1.597, 0.994)
    assert abs(b1 - 0.76) < 0.01 and abs(b0 + 1.49) < 0.11 and r > 0.99
    baseline = accuracy.testbed_baseline()
    np.testing.assert_allclose(baseline.fit(), (b1, b0, r), atol=1e-12)
    caption = robustness_caption([RobustnessRow("m", 0.6, 0.4, 0.1, 0.76, -1.49)], baseline, paper_shifts=False)
    assert caption.startswith("Fig. 1: ACC(I) vs ACC(S) on logit axes. Grey: 197 baseline models")
    assert "refitted on them, the line is b1 = 0.751, b0 = -1.597 (r = 0.994), the paper's b1 = 0.76" in caption
    assert "not comparable with the grey ones" in caption
    assert "not comparable" not in robustness_caption([RobustnessRow("m", 0.6, 0.4, 0.1, 0.76, -1.49)], baseline,
                                                      paper_shifts=True)


def test_the_packaged_testbed_is_the_vendored_one_cell_for_cell(reference_dir):
    """``robustsig/resources/imagenet_testbed.csv`` (package data, listed in pyproject) holds the vendored testbed
    accuracies verbatim, with each model's type."""
    packaged = resources.files("robustsig").joinpath("resources", "imagenet_testbed.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(packaged)))
    folder = reference_dir / "imagenet-testbed"
    with open(folder / "robustness_top1s_er_columns.csv") as handle:
        vendored = list(csv.DictReader(handle))
    with open(folder / "model_types_derived.csv") as handle:
        types = {row["model"]: row["model_type"] for row in csv.DictReader(handle)}
    assert [{k: v for k, v in row.items() if k != "model_type"} for row in rows] == vendored
    assert [row["model_type"] for row in rows] == [types[row["model"]] for row in vendored]
    pyproject = (reference_dir.parents[2] / "pyproject.toml").read_text()
    assert '"resources/*.csv"' in pyproject and '"resources/*.md"' in pyproject
    readme = resources.files("robustsig").joinpath("resources", "README.md").read_text(encoding="utf-8")
    assert "`imagenet_testbed.csv`" in readme and "commit 0170eec6" in readme


def test_importance_and_pruning_panels(results, tmp_path):
    figure = importance_figure(MODELS, results.read(ImportanceRow))
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["RN50 / openai", "RN50 / yfcc15m", "ViT-B-32 / openai"]
    first = figure.axes[0]
    assert first.get_yscale() == "log" and len(first.lines) == 3  # zero-shot, finetuned, supervised
    assert first.lines[0].get_ydata()[0] == pytest.approx(0.5)  # the privileged direction of rn50-oa-zs ranks first
    saved(figure, tmp_path, "importance")
    pruning = results.read(PruningRow)
    accuracy = curve_figure(MODELS, pruning, "val")
    assert [len(ax.lines) for ax in accuracy.axes if ax.get_visible()] == [6, 4, 2]  # models x orders
    line = accuracy.axes[2].lines[0]
    assert list(line.get_xdata()) == [0.0, 0.5, 0.9]
    np.testing.assert_allclose(line.get_ydata(), [63.3, 63.3 * 0.85, 63.3 * 0.73])
    er = curve_figure(MODELS, pruning, "val", metric="er")
    np.testing.assert_allclose(er.axes[2].lines[0].get_ydata(), [12.34, 12.34 * 0.85, 12.34 * 0.73])
    saved(er, tmp_path, "pruning_er")
    with pytest.raises(rs.InputError, match="metric: expected 'accuracy' or 'er'"):
        curve_figure(MODELS, pruning, "val", metric="loss")


def test_venn_diagrams_for_two_and_three_sets(tmp_path):
    figure = venn_figure({"A": {"a", "b", "c"}, "B": {"c", "d"}, "C": {"e"}}, "three")
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"A", "B", "C", "2", "1"} <= texts  # region counts: A only 2, A&B 1, B only 1, C only 1
    saved(figure, tmp_path, "venn3")
    two = venn_figure({"A": {"a"}, "B": {"a", "b"}}, "two")
    assert sorted(text.get_text() for text in two.axes[0].texts if text.get_text().isdigit()) == ["0", "1", "1"]


def test_more_than_three_sets_fall_back_to_an_upset_chart(tmp_path):
    sets = {"A": {"a", "b", "c", "d"}, "B": {"c", "d", "e"}, "C": {"d", "f"}, "D": {"g"}}
    figure = venn_figure(sets, "four")
    bars, dots = figure.axes
    heights = [patch.get_height() for patch in bars.patches]
    assert heights == [2, 1, 1, 1, 1, 1]  # A only {a, b}; then {c}: A&B, {d}: A&B&C, {e}, {f}, {g}
    FigureCanvasAgg(figure).draw()
    assert [label.get_text() for label in dots.get_yticklabels()] == ["A (4)", "B (3)", "C (2)", "D (1)"]
    assert saved(figure, tmp_path, "upset")[0] > 0
    empty = venn_figure({"A": set(), "B": set()}, "none")
    assert empty.axes[0].get_title() == "none: no concepts encoded"
    with pytest.raises(rs.InputError, match="at least one set"):
        venn_figure({}, "nothing")


def test_cka_heatmap_and_depth_curves(results, tmp_path):
    rows = results.read(CkaRow)
    heatmap = cka_heatmap_figure(rows, "rn50-oa-zs", "rn50-oa-ft")  # the first dataset: val
    grid = np.asarray(heatmap.axes[0].images[0].get_array())
    expected = [[1.0 - 0.1 * abs(i - j) - 0.05 * i for j in range(3)] for i in range(3)]
    np.testing.assert_allclose(grid, expected)
    assert "on val (minibatch)" in heatmap.axes[0].get_title()
    sketch = cka_heatmap_figure(rows, "rn50-oa-zs", "rn50-oa-ft", "sketch")
    np.testing.assert_allclose(np.asarray(sketch.axes[0].images[0].get_array()), np.asarray(expected) - 0.2)
    saved(heatmap, tmp_path, "cka_heatmap")
    depth = cka_depth_figure(rows, "val")
    panels = [ax for ax in depth.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["rn50-oa-zs vs rn50-oa-ft", "vit-oa-zs vs rn50-oa-zs"]
    for ax, id_curve in zip(panels, ([1.0, 0.95, 0.9], [0.5, 0.6])):
        shifts, id_line = ax.lines
        assert id_line.get_color() == "tab:orange" and shifts.get_color() == "tab:blue"
        np.testing.assert_allclose(id_line.get_ydata(), id_curve)
        np.testing.assert_allclose(shifts.get_ydata(), np.asarray(id_curve) - 0.3)  # mean of sketch and v2
        band = ax.collections[0].get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose([band.min(), band.max()], [min(id_curve) - 0.4, max(id_curve) - 0.2])  # ± 0.1
    np.testing.assert_allclose(panels[0].lines[1].get_xdata(), [0.0, 0.5, 1.0])
    assert "minibatch estimator" in depth.get_suptitle()
    saved(depth, tmp_path, "cka_depth")
    with pytest.raises(rs.InputError, match="no CKA rows for the pair"):
        cka_heatmap_figure(rows, "a", "b")
    # unbiased CKA below 0 (near independence) is drawn, not cut at the axis or the colour scale
    negative = [CkaRow("a", "b", layer, layer, value, "val", "minibatch")
                for layer, value in (("l0", -0.09), ("l1", 0.4), ("h", 0.8))]
    assert cka_heatmap_figure(negative, "a", "b").axes[0].images[0].get_clim() == (-0.09, 1.0)
    low, high = [ax for ax in cka_depth_figure(negative).axes if ax.get_visible()][0].get_ylim()
    assert low < -0.09 and high == 1.02
    ragged = [CkaRow("a", "b", "l1", "m1", 0.5, "val", "pooled"), CkaRow("a", "b", "l1", "m2", 0.4, "val", "pooled"),
              CkaRow("a", "b", "l2", "m1", 0.3, "val", "pooled")]
    with pytest.raises(rs.InputError, match="no CKA pair has corresponding layers"):
        cka_depth_figure(ragged)


def test_wiseft_panels_follow_the_computed_metrics(results, tmp_path):
    full = wiseft_figure(results.read(WiseFtRow))
    panels = [ax.get_ylabel() for ax in full.axes]
    assert panels == ["accuracy (%)", "ER (%)", "kurtosis", "unique concepts"]
    np.testing.assert_allclose(full.axes[1].lines[0].get_ydata(), [8.0, 3.0, -2.0])
    saved(full, tmp_path, "wiseft")
    partial = wiseft_figure([WiseFtRow("p", a, 0.5 + a / 4, None, None, 3 + a, None) for a in (0.0, 1.0)])
    assert [ax.get_ylabel() for ax in partial.axes] == ["accuracy (%)", "kurtosis"]
    assert len(partial.axes[0].lines) == 1  # no shift accuracy: no dashed line
    np.testing.assert_allclose(partial.axes[1].lines[0].get_ydata(), [3.0, 4.0])


def test_threshold_sweep_panels(results, tmp_path):
    figure = concept_thresholds_figure(results.read(ModelRow), results.read(ConceptThresholdRow), "singular")
    assert [ax.get_ylabel() for ax in figure.axes] == ["unique concepts (eq. 5)",
                                                      "polysemanticity (mean over all directions)"]
    rows = [row for row in results.read(ConceptThresholdRow) if row.model == "rn50-oa-zs"]
    line = figure.axes[0].lines[0]
    assert line.get_label() == "rn50-oa-zs"
    np.testing.assert_allclose(line.get_xdata(), [0.85, 0.9, 0.95])  # sorted by threshold
    np.testing.assert_allclose(line.get_ydata(), [r.unique_concepts for r in sorted(rows, key=lambda r: r.threshold)])
    assert "the paper's one-sided AP" in figure._suptitle.get_text()
    saved(figure, tmp_path, "thresholds")
    with pytest.raises(rs.InputError, match="no row of concept_thresholds.csv in the neuron basis"):
        concept_thresholds_figure([], results.read(ConceptThresholdRow), "neuron")


def test_no_figure_of_a_report_cuts_a_title_or_a_legend(tmp_path, monkeypatch):
    """Every figure the report draws keeps its titles and legends inside the image (a one-panel figure is narrow;
    a long suptitle such as the low-rank model's ER panel's used to be cut at both edges)."""
    from robustsig.report import page as page_module

    seen = []
    real = figures.save_figure

    def checked(figure, directory, stem):
        paths = real(figure, directory, stem)
        seen.append((stem, figures.cut_texts(figure)))
        return paths

    monkeypatch.setattr(page_module.figures, "save_figure", checked)
    files = rs.build_report(write_results(tmp_path / "results").root, tmp_path / "report" / "report.html")
    assert len(seen) == len(files.figures) // 2 > 10
    assert [(stem, cut) for stem, cut in seen if cut] == []


def test_a_title_wider_than_its_figure_is_wrapped_and_a_cut_is_seen():
    rows = [PruningRow("rn50-oa-zs", "importance", f, "val", 0.5, 0.1) for f in (0.0, 0.1, 0.25)]
    figure = curve_figure(MODELS[:1], rows, "val", "er", title="Low-rank encoder",
                          xlabel="fraction of each map's rank pruned")
    assert figures.cut_texts(figure) == ["Low-rank encoder: effective robustness (%)"]
    figures.fit_texts(figure)
    assert figures.cut_texts(figure) == []
    assert figure._suptitle.get_text().count("\n") == 1


def test_log_axes_label_ticks_as_plain_numbers():
    from robustsig.study.analyses.layer_kurtosis import LayerKurtosisRow, layer_kurtosis_figure

    rows = [LayerKurtosisRow("rn50-oa-zs", "val", f"block{i}", i / 3, kurtosis, 0, "mean", 64)
            for i, kurtosis in enumerate((3.2, 4.5, 6.0, 8.9))]
    figure = layer_kurtosis_figure(MODELS, rows, "val")
    FigureCanvasAgg(figure).draw()
    ax = figure.axes[0]
    labels = [tick.get_text() for tick in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if tick.get_text()]
    assert labels and all("10^" not in label and "times" not in label for label in labels)
    assert {"3", "5"} <= set(labels)  # a decade at most: the minor ticks 2, 5 (x 10^k) carry labels


def test_a_caption_names_only_the_line_styles_drawn():
    rows = [PruningRow("a", order, 0.0, "val", 0.5, None) for order in ("importance", "singular")]
    assert figures.order_styles(rows, {"singular": "singular value", "importance": "importance"}) == (
        "solid: singular value; dashed: importance")
