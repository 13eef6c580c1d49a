"""The paper's table layouts, checked against layouts written out by hand, in CSV, Markdown and LaTeX."""

from __future__ import annotations

import pytest

import robustsig as rs
from robustsig.report import tables
from robustsig.study.analyses.accuracy import (AccuracyRow, RobustnessRow, accuracy_table, dataset_accuracy_table,
                                               shift_sets_note)
from robustsig.study.analyses.concepts.summary import ConceptRow, ConceptTopRow, concept_top_table, concepts_table
from robustsig.study.analyses.kurtosis import KurtosisRow, kurtosis_table
from robustsig.study.analyses.wiseft import WiseFtRow, wiseft_table
from robustsig.study.results import ModelRow

from report_data import MODELS, write_results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("tables") / "results")


def test_a_model_whose_er_is_undefined_is_shown_with_its_accuracy(results):
    """ACC(I) of 0 or 1 (a random-init control) leaves eq. 1 undefined and the model without a robustness row: Table
    1 still lists it, its ER said undefined, not left out."""
    robustness = [row for row in results.read(RobustnessRow) if row.model != "rn50-sup"]
    table = accuracy_table(MODELS, robustness, id_accuracy={"rn50-sup": 0.0, "rn50-oa-zs": 0.598})
    rows = {row[:2]: row for row in table.rows}
    assert rows[("RN50", "imagenet-1k")][2:] == (None, None, None, None, "0.0", "undefined")
    assert rows[("RN50", "openai")][2:4] == ("59.8", "+8.1")  # a model with a row shows its ER whatever id_accuracy says
    assert "ER undefined: ACC(I) is 0 or 1, where eq. 1's logit is infinite." in table.caption
    assert "undefined" not in accuracy_table(MODELS, robustness).caption


def test_accuracy_table_in_the_paper_layout(results):
    table = accuracy_table(MODELS, results.read(RobustnessRow))
    assert tables.to_csv(table) == (
        "Backbone,Pretraining,Zero-shot ACC (%),Zero-shot ER (%),Finetuned ACC (%),Finetuned ER (%),"
        "Supervised ACC (%),Supervised ER (%)\n"
        "RN50,openai,59.8,+8.1,76.2,-1.6,,\n"
        "RN50,yfcc15m,31.8,+2.0,,,,\n"
        "RN50,imagenet-1k,,,,,75.1,-4.2\n"
        "ViT-B-32,openai,63.3,+12.3,,,,\n")
    assert tables.to_markdown(table) == (
        "| Backbone | Pretraining | Zero-shot ACC (%) | Zero-shot ER (%) | Finetuned ACC (%) | Finetuned ER (%) | "
        "Supervised ACC (%) | Supervised ER (%) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
        "| RN50 | openai | 59.8 | +8.1 | 76.2 | -1.6 | – | – |\n"
        "|  | yfcc15m | 31.8 | +2.0 | – | – | – | – |\n"
        "|  | imagenet-1k | – | – | – | – | 75.1 | -4.2 |\n"
        "| ViT-B-32 | openai | 63.3 | +12.3 | – | – | – | – |")
    latex = tables.to_latex(table).splitlines()
    assert latex[:2] == [r"\begin{table}[t]", r"\centering"]
    # the paper's Tables 4 (ACC) and 1 (ER), named as such
    assert latex[2].startswith(r"\caption{Accuracy (Table 4) and effective robustness (Table 1). ACC: top-1 accuracy")
    assert "(eq. 1, b1 = 0.76, b0 = -1.49), in percent (the paper's Table 1).}" in latex[2]
    assert latex[3:] == [
        r"\label{tab:accuracy}",
        r"\begin{tabular}{llrrrrrr}",
        r"\toprule",
        r" &  & \multicolumn{2}{c}{Zero-shot} & \multicolumn{2}{c}{Finetuned} & \multicolumn{2}{c}{Supervised} \\",
        r"\cmidrule(lr){3-4} \cmidrule(lr){5-6} \cmidrule(lr){7-8}",
        r"Backbone & Pretraining & ACC (\%) & ER (\%) & ACC (\%) & ER (\%) & ACC (\%) & ER (\%) \\",
        r"\midrule",
        r"RN50 & openai & 59.8 & +8.1 & 76.2 & -1.6 & -- & -- \\",
        r" & yfcc15m & 31.8 & +2.0 & -- & -- & -- & -- \\",
        r" & imagenet-1k & -- & -- & -- & -- & 75.1 & -4.2 \\",
        r"ViT-B-32 & openai & 63.3 & +12.3 & -- & -- & -- & -- \\",
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}"]


def test_kurtosis_and_concept_tables(results):
    kurtosis = kurtosis_table(MODELS, results.read(KurtosisRow), dataset="val")
    assert tables.to_csv(kurtosis) == (
        "Backbone,Pretraining,Zero-shot Kurtosis,Finetuned Kurtosis,Supervised Kurtosis\n"
        "RN50,openai,41.3,7.0,\n"
        "RN50,yfcc15m,19.5,,\n"
        "RN50,imagenet-1k,,,4.0\n"
        "ViT-B-32,openai,12.3,,\n")
    concepts = concepts_table(MODELS, results.read(ConceptRow), basis="singular")
    assert tables.to_markdown(concepts) == (
        "| Backbone | Pretraining | Zero-shot Unique concepts | Zero-shot Polysemanticity | "
        "Zero-shot Polysemanticity (active) | Finetuned Unique concepts | Finetuned Polysemanticity | "
        "Finetuned Polysemanticity (active) | Supervised Unique concepts | Supervised Polysemanticity | "
        "Supervised Polysemanticity (active) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| RN50 | openai | 4 | 1.25 | 2.50 | 2 | 1.25 | 2.50 | – | – | – |\n"
        "|  | yfcc15m | 1 | 1.25 | 2.50 | – | – | – | – | – | – |\n"
        "|  | imagenet-1k | – | – | – | – | – | – | 2 | 1.25 | 2.50 |\n"
        "| ViT-B-32 | openai | 3 | 1.25 | 2.50 | – | – | – | – | – | – |")
    # the paper's one-sided AP by default, named as such with its table numbers and sign convention
    assert concepts.title == "Concepts, singular basis, the paper's one-sided AP (Tables 3 and 6)"
    assert "the paper's definition, mean concepts per direction over all directions probed" in concepts.caption
    assert "largest-magnitude entry of each v_i is positive" in concepts.caption
    assert "The study's derived steps (top concepts, Venn sets, threshold figure, significance) use this" in \
        concepts.caption
    neuron = concepts_table(MODELS, results.read(ConceptRow), basis="neuron")
    assert [row[2] for row in neuron.rows] == ["5", "2", None, "4"] and neuron.name == "concepts_neuron"
    assert neuron.title == "Concepts, neuron basis, the paper's one-sided AP (Table 7)"
    # the both variant: its own columns of concepts.csv, its own table and name, never called the paper's
    both = concepts_table(MODELS, results.read(ConceptRow), basis="singular", orientation="both")
    assert both.name == "concepts_singular_both" and both.title == ("Concepts, singular basis, variant both: "
                                                                    "max(AP(s), AP(-s))")
    assert [row[2:5] for row in both.rows][0] == ("6", "2.50", "5.00")
    assert "not the paper's" in both.caption and "The study's derived steps use the other orientation" in both.caption


def test_rows_and_kinds_without_values_are_left_out():
    models = [ModelRow("a", "timm:x", "ResNet", "in1k", "supervised"), ModelRow("b", "timm:y", "ViT", "in21k",
                                                                                  "supervised")]
    table = kurtosis_table(models, [KurtosisRow("b", "val", 3.04, 10, 4), KurtosisRow("a", "other", 9.0, 10, 4)],
                                  dataset="val")
    assert tables.to_csv(table) == "Backbone,Pretraining,Supervised Kurtosis\nViT,in21k,3.0\n"
    assert tables.to_latex(table).splitlines()[4:9] == [
        r"\begin{tabular}{llr}", r"\toprule", r" &  & \multicolumn{1}{c}{Supervised} \\", r"\cmidrule(lr){3-3}",
        r"Backbone & Pretraining & Kurtosis \\"]


def test_two_models_in_one_cell_are_refused():
    models = [ModelRow("a", "timm:x", "RN50", "openai", "zero-shot"), ModelRow("b", "timm:y", "RN50", "openai",
                                                                                "zero-shot")]
    with pytest.raises(rs.DataError, match="models 'a' and 'b' have the same backbone, pretraining and kind"):
        kurtosis_table(models, [], dataset="val")


def test_long_tables_escape_names(results):
    top = concept_top_table(results.read(ConceptTopRow), "positive")
    assert top.title == "Top concepts of the most privileged direction (Table 5)"
    assert top.caption.endswith("AP orientation: the paper's one-sided AP of h . v_i.")
    assert tables.to_csv(top) == ("Model,Basis,Direction,Top-1,Top-2\n"
                                  "rn50-oa-zs,singular,0,<script>alert(1)</script> (0.97),sky (0.93)\n"
                                  "vit-oa-zs,singular,3,50%_a&b (0.91),\n")
    assert tables.to_markdown(top).splitlines()[2:] == [
        r"| rn50-oa-zs | singular | 0 | \<script\>alert(1)\</script\> (0.97) | sky (0.93) |",
        r"| vit-oa-zs | singular | 3 | 50%_a&b (0.91) | – |"]
    assert tables.to_latex(top).splitlines()[-5:-3] == [
        r"rn50-oa-zs & singular & 0 & \textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{} (0.97) "
        r"& sky (0.93) \\",
        r"vit-oa-zs & singular & 3 & 50\%\_a\&b (0.91) & -- \\"]
    by_dataset = dataset_accuracy_table(results.read(AccuracyRow), ["sketch", "val"])
    assert tables.to_csv(by_dataset).splitlines()[:2] == ["Model,sketch,val", "rn50-oa-zs,33.1,59.8"]
    wiseft = wiseft_table([WiseFtRow("p|q", 0.5, 0.5, None, None, 3.25, None)])
    assert tables.to_markdown(wiseft).splitlines()[2] == r"| p\|q | 0.5 | 50.0 | – | – | 3.2 | – |"


def test_latex_and_markdown_escaping():
    assert tables.latex_escape(r"a\b&c%d$e#f_g{h}i~j^k<l>") == (r"a\textbackslash{}b\&c\%d\$e\#f\_g\{h\}i"
                                                                r"\textasciitilde{}j\textasciicircum{}k"
                                                                r"\textless{}l\textgreater{}")
    assert tables.markdown_escape("a|b*c`d[e]<f>\\") == r"a\|b\*c\`d\[e\]\<f\>\\"


def test_write_table_writes_three_formats(tmp_path, results):
    table = kurtosis_table(MODELS, results.read(KurtosisRow), dataset="val")
    paths = tables.write_table(table, tmp_path / "tables")
    assert [path.name for path in paths] == ["kurtosis.csv", "kurtosis.md", "kurtosis.tex"]
    assert paths[0].read_text() == tables.to_csv(table)
    assert paths[1].read_text() == tables.to_markdown(table) + "\n"
    assert paths[2].read_text() == tables.to_latex(table) + "\n"


def test_the_shift_sets_note_says_what_acc_s_averaged_over():
    paper = {name: name for name in ("imagenet-v2", "imagenet-r", "imagenet-sketch", "objectnet", "imagenet-a")}
    assert shift_sets_note({"shift_sets": paper, "paper_shift_sets": True, "missing_classes": {}}) == (
        "ACC(S) is the mean over 5 shift set(s): imagenet-v2 (imagenet-v2), imagenet-r (imagenet-r), imagenet-sketch "
        "(imagenet-sketch), objectnet (objectnet), imagenet-a (imagenet-a), the paper's five kinds.")
    own = shift_sets_note({"shift_sets": {"cartoon": "folder"}, "paper_shift_sets": False,
                                  "missing_classes": {"r": [f"n{i}" for i in range(12)]}})
    assert "cartoon (folder); these are not the paper's five shift sets" in own
    assert own.endswith("r, 12 missing (n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, ...).")
    assert shift_sets_note({"shift_sets": ["old", "list"]}) == ""  # results of an older run: no claim
    table = accuracy_table(MODELS, [], shift_note=own)
    assert table.caption.endswith(own)
