"""NoCLIP (App. F, Table 8, Fig. 10): the paper preset's slot, and a small study where the finetuned test ViT plays
NoCLIP against the zero-shot one. Table 8's numbers are checked against the stores (numpy and scipy oracles) and
against the other analyses' tables; Fig. 10 against importance.csv."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import oracles
import robustsig as rs
from robustsig.runner import run_study
from robustsig.study.analyses.concepts.summary import ConceptRow
from robustsig.study.analyses.importance import ImportanceRow, PrivilegedRow
from robustsig.study.analyses.noclip import NoClipRow, compared_models, noclip_figure
from robustsig.study.config import load_study_config, validate_study_config
from robustsig.study.presets import NOCLIP, preset_yaml
from robustsig.study.results import ModelRow

from study_helpers import build_world, study_data, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


def uncomment_noclip(text: str) -> str:
    """The preset with its NoCLIP slot uncommented as a user would: the model entry and the analysis section."""
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line.strip().startswith(("# - name: ViT-B-16-noclip", "# noclip:")):
            inside = True
        elif not line.strip().startswith("#"):
            inside = False
        out.append(line.replace("# ", "", 1) if inside else line)
    return "\n".join(out) + "\n"


def test_the_paper_preset_has_the_noclip_slot_commented_out(tmp_path):
    text = preset_yaml("paper")
    plain = yaml.safe_load(text)
    assert "noclip" not in plain["analyses"] and NOCLIP[0] not in [m["name"] for m in plain["models"]]
    path = tmp_path / "study.yaml"
    path.write_text(uncomment_noclip(text))
    config = load_study_config(path)
    entry = config.model(NOCLIP[0])
    assert (entry.backbone, entry.pretraining, entry.kind) == ("ViT-B-16", "yfcc15m-simclr", "finetuned")
    assert entry.spec == "openclip:ViT-B-16@/path/to/noclip/ViT-B-16_yfcc15m_simclr.safetensors"
    assert len(config.models) == 29 and config.analyses.noclip.models == [NOCLIP[0]]
    assert config.enabled_analyses().index("noclip") == config.enabled_analyses().index("cka") + 1
    # Fig. 10 compares it with the zero-shot ViT-B-16 models (App. F: it stands for the YFCC-15M one)
    assert compared_models(config) == ["ViT-B-16-openai-zs", "ViT-B-16-laion400m_e32-zs",
                                       "ViT-B-16-laion2b_s34b_b88k-zs", "ViT-B-16-datacomp_l_s1b_b8k-zs"]
    assert [m.placeholder for m in config.check_paths()].count(True) == 22  # its checkpoint is one more to fill in


def test_the_section_names_models_of_the_study(tmp_path):
    data = study_data(tmp_path, noclip={"models": ["ft"], "compare": ["zs", "ft", "zss"]})
    with pytest.raises(rs.InputError) as caught:
        validate_study_config(data, base_dir=tmp_path)
    message = str(caught.value)
    assert "analyses.noclip.compare[2]: expected the name of a model of the study (did you mean 'zs'?); got 'zss'" \
        in message
    assert "analyses.noclip.compare: expected models other than NoCLIP's; got ['ft']" in message
    data = study_data(tmp_path, noclip={"models": []})
    with pytest.raises(rs.InputError, match="analyses.noclip.models"):
        validate_study_config(data, base_dir=tmp_path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """zs (zero-shot) and ft (finetuned, playing NoCLIP) of the tiny ViT, and the random-init ConvNeXt as a
    zero-shot model of another backbone (left out of the default comparison)."""
    root = build_world(tmp_path_factory.mktemp("noclip"))
    data = study_data(root)
    data["models"] = [model for model in data["models"] if model["name"] in ("zs", "ft", "ctrl")]
    data["models"][2].update(kind="zero-shot", backbone="convnext")
    data["analyses"] = {"accuracy": None, "kurtosis": None, "importance": {"privileged_ratio": 3.0},
                        "concepts": {"threshold": 0.8, "min_positives": 4, "bases": ["singular"], "permutations": 0,
                                     "thresholds": [0.8]},
                        "noclip": {"models": ["ft"]}}
    path = write_config(root, data)
    summary = run_study(path, progress=False)
    assert summary.ok, [step for step in summary.steps if step.status != "done"]
    config = load_study_config(path)
    return config, rs.Results(config.results_dir), summary


def test_table_8_holds_the_stores_numbers_of_noclip_and_the_zero_shot_model(study):
    config, results, summary = study
    rows = results.read(NoClipRow)
    assert [(row.model, row.role) for row in rows] == [("ft", "noclip"), ("zs", "compared")]
    concepts = {row.model: row.unique_concepts for row in results.read(ConceptRow) if row.basis == "singular"}
    privileged = {row.model: row for row in results.read(PrivilegedRow)}
    for row in rows:
        stores = {name: rs.ActivationStore(config.store_dir / row.model / name)
                  for name in ("photos", "shift-a", "shift-b")}
        acc = {name: oracles.top1(s.read("logits"), s.read("labels")) for name, s in stores.items()}
        assert row.acc_id == pytest.approx(acc["photos"], abs=1e-15)
        assert row.er == pytest.approx(oracles.effective_robustness(acc["photos"], (acc["shift-a"] + acc["shift-b"]) / 2),
                                       abs=1e-12)
        h = stores["photos"].read("h")
        assert row.kurtosis == pytest.approx(oracles.activation_kurtosis(h), rel=1e-9)
        importance = oracles.direction_importance(stores["photos"].read("W"), h)
        assert row.privileged == len(oracles.privileged(importance, 3.0)) == privileged[row.model].num_privileged
        assert row.top_ratio == pytest.approx(float(importance.max() / importance.mean()), rel=1e-6)
        assert row.unique_concepts == concepts[row.model]
    assert "noclip" in summary.ran()
    parameters = results.provenance()["tables"]["noclip"]["parameters"]
    assert parameters["id_set"] == parameters["kurtosis_dataset"] == "photos" and parameters["empty"] == []
    assert parameters["concepts"] == "singular basis, threshold 0.8" and parameters["compare"] == ["zs"]


def test_the_report_shows_table_8_and_fig_10(study):
    config, results, summary = study
    page = summary.report.read_text()
    assert '<section id="noclip">' in page and "Table 8: NoCLIP and the models it is compared with" in page
    assert (config.report_dir / "figures" / "fig10_noclip.png").is_file()
    table = (config.report_dir / "tables" / "noclip.csv").read_text().splitlines()
    assert table[0] == "Model,Role,ACC(I) (%),ER (%),Kurtosis,Unique concepts,Privileged,Top ratio"
    assert [line.split(",")[:2] for line in table[1:]] == [["ft", "noclip"], ["zs", "compared"]]
    # Fig. 10: NoCLIP's ranked importances in black, the compared model's beside them, labelled by pretraining
    models = results.read(ModelRow)
    figure = noclip_figure(models, results.read(NoClipRow), results.read(ImportanceRow))
    ax = figure.axes[0]
    noclip, compared = ax.lines
    expected = np.sort([row.importance for row in results.read(ImportanceRow) if row.model == "ft"])[::-1]
    np.testing.assert_allclose(noclip.get_ydata(), np.maximum(expected, 1e-12))
    assert noclip.get_color() == "black" and noclip.get_label() == "NoCLIP: synthetic (ft)"
    assert compared.get_label() == "synthetic (zs)"


def test_a_rerun_reuses_table_8_and_a_new_comparison_recomputes_it(study):
    config, results, _ = study
    path = config.output_dir.parent / "study.yaml"
    data = yaml.safe_load(path.read_text())
    again = run_study(path, progress=False)
    assert "noclip" not in again.ran()
    data["analyses"]["noclip"]["compare"] = ["zs", "ctrl"]
    changed = run_study(write_config(path.parent, data, "compare.yaml"), progress=False)
    assert changed.ran() == ["noclip"]
    assert [(row.model, row.role) for row in results.read(NoClipRow)] == [("ft", "noclip"), ("zs", "compared"),
                                                                          ("ctrl", "compared")]


def test_columns_without_rows_stay_empty_and_the_report_says_so(tmp_path):
    """A pool where the concepts and importance analyses did not run: Table 8 keeps ACC, ER and kurtosis, names the
    empty columns, and the section says Fig. 10 needs importance."""
    from types import SimpleNamespace

    from robustsig.report.page import Page
    from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
    from robustsig.study.analyses.kurtosis import KurtosisRow
    from robustsig.study.analyses.noclip import NoClip, NoClipTask

    results = rs.Results(tmp_path / "results")
    results.write(AccuracyRow, [AccuracyRow("nc", "val", 0.35, 100), AccuracyRow("nc", "v2", 0.3, 100),
                                AccuracyRow("zs", "val", 0.6, 100)])
    results.write(RobustnessRow, [RobustnessRow("nc", 0.35, 0.2, 0.04, 0.76, -1.49)])
    results.write(KurtosisRow, [KurtosisRow("nc", "val", 3.4, 100, 768), KurtosisRow("zs", "val", 41.0, 100, 512)])
    ctx = SimpleNamespace(results=results, config=SimpleNamespace(datasets=SimpleNamespace(id=SimpleNamespace(
        name="val"))))
    summary = NoClipTask(["nc"], ["zs"], [], ()).compute(ctx)
    assert results.read(NoClipRow) == [NoClipRow("nc", "noclip", 0.35, 0.04, 3.4, None, None, None),
                                       NoClipRow("zs", "compared", 0.6, None, 41.0, None, None, None)]
    assert summary.startswith("nc: ACC(I) 35.0%, ER +4.0, kurtosis 3.4, - unique concepts")
    assert "(no unique concepts, privileged directions: their analyses have no rows" in summary
    models = [ModelRow("nc", "s", "ViT-B-16", "yfcc15m-simclr", "finetuned"),
              ModelRow("zs", "s", "ViT-B-16", "openai", "zero-shot")]
    html = NoClip().report(Page(results, tmp_path / "report" / "report.html", None), models)
    assert "Empty: unique concepts, privileged directions (their analyses have no rows for these models)." in html
    assert "Fig. 10 needs the importance analysis" in html and "<figure>" not in html
