"""The HTML report: every section, escaping, provenance, absent analyses, the `report` command, and the page as
headless Chromium renders it."""

from __future__ import annotations

import base64
import html
import json
import re

from pathlib import Path

import pytest

import robustsig as rs
from robustsig.cli import main
from robustsig.report.html import build_report
from robustsig.study import registry
from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.config import validate_study_config
from robustsig.study.results import ModelRow, Results

from browser import CHROMIUM, check_page
from report_data import ACCURACY, ER, MODELS, XSS, write_results

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                                             "(apt-get install -y chromium)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_results(root / "results")
    files = build_report(root / "results", root / "report" / "report.html", title=f"study {XSS}")
    return files, files.html.read_text(encoding="utf-8")


def test_every_section_table_and_figure_is_written(report):
    files, page = report
    assert files.sections == dict.fromkeys(registry.names(), True)
    assert "Not run" not in page
    stems = {path.stem for path in files.tables}
    assert stems == {"accuracy", "accuracy_by_dataset", "kurtosis", "privileged", "concepts_singular",
                     "concepts_singular_both", "concepts_neuron", "concepts_neuron_both", "concept_top", "wiseft",
                     "concept_significance_singular", "er_predictors", "er_tracking", "noclip"}
    assert sorted({path.suffix for path in files.tables}) == [".csv", ".md", ".tex"] and len(files.tables) == 42
    # a file is named after a paper figure only when it is that figure; the others are named by their content
    figure_stems = sorted({path.stem for path in files.figures})
    assert figure_stems == ["cka_heatmap_0", "concept_thresholds_singular", "er_tracking", "fig10_noclip",
                            "fig1_robustness", "fig2_importance", "fig5_cka_depth", "layer_kurtosis",
                            "lowrank_accuracy", "lowrank_er", "pruning_accuracy", "pruning_er", "signatures_vs_er",
                            "venn_neuron_0", "venn_neuron_1", "venn_singular_0", "venn_singular_1", "wiseft_sweeps"]
    # the figures are inlined: one data-URI image per figure, identical to the PNG written next to the page
    inlined = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    pngs = {path.read_bytes() for path in files.figures if path.suffix == ".png"}
    assert len(inlined) == len(pngs) == 18 and {base64.b64decode(data) for data in inlined} == pngs
    assert "<link" not in page and "src=\"http" not in page and "href=\"http" not in page  # self-contained
    # the CKA section names its estimator and datasets; Fig. 5 shows the id set and the shift sets' band
    assert "Estimator: minibatch (minibatch: the paper" in page and "Datasets: val, sketch, v2." in page
    assert "val (orange) and the mean ± std over the shift sets (blue)" in page
    assert "every layer of rn50-oa-ft, on val (not in the paper)." in page
    # the atlas: a grid per model, its names escaped (a row without a thumbnail file shows the image's name)
    assert page.count('<table class="atlas">') == len(MODELS) and "<img src=x" not in page
    assert html.escape("1<img src=x onerror=alert(1)>.jpg") in page


def test_captions_name_the_papers_figures_and_tables_only_where_they_are_them(report):
    _, page = report
    figcaptions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    titles = re.findall(r"<caption>(.*?)</caption>", page)
    assert sorted(c.split(":")[0] for c in figcaptions if re.match(r"Figs?\. \d", c)) == [
        "Fig. 1", "Fig. 10", "Figs. 2 and 7", "Figs. 5 and 6"]
    assert sorted(t for t in titles if re.search(r"\(Tables? \d", t)) == [
        "Accuracy (Table 4) and effective robustness (Table 1)", "Activation kurtosis (Table 2)",
        "Concepts, neuron basis, the paper&#x27;s one-sided AP (Table 7)",
        "Concepts, singular basis, the paper&#x27;s one-sided AP (Tables 3 and 6)",
        "Top concepts of the most privileged direction (Table 5)"]
    # the pruning ER figure is not the paper's Fig. 9 (its YFCC/CC12M panel), nor the heatmap its Fig. 6
    assert "Fig. 9:" not in page and "Fig. 6:" not in page and "Fig. 3/8" not in page and "Fig. 11-18:" not in page
    assert "the ER panels of the paper&#x27;s Figs. 3, 8 and 9" in page
    # the both variant is never called the paper's polysemanticity
    assert "Concepts, singular basis, variant both: max(AP(s), AP(-s))" in page
    assert "AP: the variant both, not the paper&#x27;s" in page


def test_the_page_points_to_the_reproduction_table(report):
    _, page = report
    line = ("<p class=\"caption\">Which output reproduces each table and figure of the paper, by which procedure, "
            "exactly or as a named variant: the reproduction table, section &quot;Reproducing the paper&quot; of "
            "docs/study.md in robustsig&#x27;s source.</p>")
    assert page.index(line) < page.index("<nav>")  # near the top, escaped, no external link
    docs = (Path(__file__).parents[1] / "docs" / "study.md").read_text(encoding="utf-8")
    assert "## Reproducing the paper" in docs


def test_numbers_tables_and_provenance_are_shown(report):
    _, page = report
    er = f"{100 * ER['vit-oa-zs']:+.1f}"
    assert f'<td class="num">{er}</td>' in page
    assert '<th colspan="2">Zero-shot</th><th colspan="2">Finetuned</th><th colspan="2">Supervised</th>' in page
    assert "<code>key-rn50-oa-zs-val</code>" in page and "b1 = 0.76, b0 = -1.49" in page
    assert "results/privileged.csv: no provenance recorded." in page
    assert "<td>torch</td><td>2.14.1</td>" in page  # the versions of the run
    assert "openclip:RN50@/ckpt/rn50_ft.safetensors" in page
    # what ACC(S) averaged over: a note above the table and its caption, as the study departs from the paper's S
    note = ("ACC(S) is the mean over 1 shift set(s): sketch (imagenet-sketch); these are not the paper&#x27;s five "
            "shift sets")
    assert page.count(note) == 2 and "sketch, 1 missing (n01440764)" in page


def test_every_string_is_escaped(report):
    _, page = report
    assert "<script" not in page.lower()
    escaped = html.escape(XSS)
    assert f"<title>study {escaped}</title>" in page
    assert f"{escaped} (0.97)" in page  # a concept name in the top-concepts table
    assert f"concept name = {escaped}" in page  # a provenance parameter
    assert f"note: {escaped}\n" in page  # the config dump
    # defence in depth: the page forbids every script
    assert ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">") in page


def test_absent_analyses_get_a_note_not_a_figure(tmp_path):
    results = Results(tmp_path / "results")
    results.write(ModelRow, MODELS[:2])
    results.write(AccuracyRow, [AccuracyRow(m.model, "val", ACCURACY[m.model][0], 100) for m in MODELS[:2]])
    config = {"analyses": {"accuracy": {}, "kurtosis": {"enabled": True}, "pruning": {"enabled": False}}}
    files = build_report(tmp_path / "results", tmp_path / "report.html", config=config)
    page = files.html.read_text()
    assert files.sections["accuracy"] and not files.sections["kurtosis"]
    assert "No results/robustness.csv: effective robustness needs shift sets" in page
    assert ("Not run: results/kurtosis.csv absent (although the study config enables it: the run did not finish "
            "it; rerun `robustsig study run` to complete it).") in page
    assert "Not run: results/pruning.csv absent (the pruning analysis was not part of this study)." in page
    assert ("Not run: results/importance.csv and results/privileged.csv absent (the importance analysis was not "
            "part of this study).") in page
    assert [path.stem for path in files.figures] == [] and page.count("<img") == 0


def test_the_pool_can_come_from_the_config(tmp_path):
    results = Results(tmp_path / "results")
    results.write(RobustnessRow, [RobustnessRow("zs", 0.6, 0.3, 0.05, 0.76, -1.49)])
    with pytest.raises(rs.DataError, match="models.csv is missing and no study config was given"):
        build_report(tmp_path / "results", tmp_path / "report.html")
    config = validate_study_config({
        "output_dir": "o", "store_dir": "s", "datasets": {"id": {"kind": "folder", "root": "d"}},
        "models": [{"name": "zs", "spec": "openclip:RN50@openai", "backbone": "RN50", "pretraining": "openai",
                    "kind": "zero-shot"}], "analyses": {"accuracy": None}})
    files = build_report(tmp_path / "results", tmp_path / "report.html", config=config)
    assert files.sections["accuracy"] and "+5.0" in files.html.read_text()
    with pytest.raises(rs.DataError, match="results folder .* does not exist"):
        build_report(tmp_path / "absent", tmp_path / "report.html")


def test_report_command(tmp_path, capsys):
    results = Results(tmp_path / "results")
    results.write(ModelRow, MODELS)
    results.write(AccuracyRow, [AccuracyRow(m.model, "val", ACCURACY[m.model][0], 100) for m in MODELS])
    with pytest.raises(SystemExit) as caught:
        main(["report", str(tmp_path / "results"), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert caught.value.code == 0 and document["html"] == str(tmp_path / "report" / "report.html")
    assert document["sections"] == {name: name == "accuracy" for name in registry.names()}
    assert [path.rsplit("/", 1)[1] for path in document["tables"]] == ["accuracy_by_dataset.csv",
                                                                       "accuracy_by_dataset.md",
                                                                       "accuracy_by_dataset.tex"]
    with pytest.raises(SystemExit) as caught:
        main(["report", str(tmp_path / "results"), "--out", str(tmp_path / "r.html"), "--title", "mine"])
    assert caught.value.code == 0 and "<title>mine</title>" in (tmp_path / "r.html").read_text()
    assert f"not run: {', '.join(registry.names()[1:])}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:
        main(["report", str(tmp_path / "nothing")])
    assert caught.value.code == 2 and "results folder" in capsys.readouterr().err


@pytest.mark.browser
@needs_chromium
def test_the_page_renders_in_chromium_without_errors(report):
    files, _ = report
    seen = check_page(files.html)
    assert seen.errors == [] and seen.dialogs == []
    assert len(seen.images) == 18  # every figure of the page, as inlined (test_every_section_table_and_figure_is_written)
    assert all(image["complete"] and image["width"] > 0 and image["height"] > 0 for image in seen.images)
    # at 1,400 px every figure is drawn whole, inside the page (none pushed past its right edge)
    assert 1300 < seen.page_width <= 1400  # the window, less its scrollbar
    assert all(0 <= image["left"] and image["right"] <= seen.page_width and image["shown_width"] > 0
               for image in seen.images)
    assert seen.scripts == 0 and seen.title == f"study {XSS}"
    assert f"{XSS} (0.97)" in seen.text  # the concept name is shown as text, not run


@pytest.mark.browser
@needs_chromium
def test_the_browser_check_sees_errors_and_broken_images(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
                    '<img src="data:image/png;base64,AAAA" alt="bad"><img src="missing.png" alt="missing">'
                    '<script>console.error("boom"); notDefined();</script></body></html>')
    seen = check_page(page)
    assert [image["width"] for image in seen.images] == [0, 0]
    assert "boom" in seen.errors and any("notDefined is not defined" in error for error in seen.errors)
    assert any("ERR_FILE_NOT_FOUND" in error for error in seen.errors)
    blocked = tmp_path / "blocked.html"
    blocked.write_text("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy"
                       "\" content=\"default-src 'none'\"></head><body><script>alert(1)</script></body></html>")
    assert any("Content Security Policy" in error for error in check_page(blocked).errors)
