"""The study config: readable errors, the paper preset, path checks, --only, and the `study` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import robustsig as rs
from robustsig.cli import main
from robustsig.study import registry
from robustsig.study.config import StudyConfig, load_study_config, select, spec_weights_path, validate_study_config
from robustsig.study.presets import preset_yaml
from robustsig.study.results import DatasetRow, ModelRow, Results, study_rows


def minimal(**overrides) -> dict:
    config = {
        "output_dir": "out", "store_dir": "store",
        "models": [{"name": "zs", "spec": "openclip:RN50@openai", "backbone": "RN50", "pretraining": "openai",
                    "kind": "zero-shot"},
                   {"name": "ft", "spec": "openclip:RN50@ckpt/ft.safetensors", "backbone": "RN50",
                    "pretraining": "openai", "kind": "finetuned"}],
        "datasets": {"id": {"kind": "imagenet", "root": "data/val"},
                     "shift": [{"kind": "imagenet-r", "root": "data/r"}],
                     "broden": {"root": "data/broden"}},
        "analyses": {"accuracy": None, "kurtosis": None, "concepts": {"threshold": 0.8},
                     "cka": {"pairs": [{"model_a": "zs", "model_b": "ft", "layers": "all"}]},
                     "wiseft": {"pairs": [{"zero_shot": "zs", "finetuned": "ft"}], "alphas": [0, 0.5, 1]}},
    }
    config.update(overrides)
    return config


def problems(data: dict) -> list[str]:
    with pytest.raises(rs.InputError) as caught:
        validate_study_config(data, source="study.yaml")
    message = str(caught.value)
    assert "pydantic" not in message and "type=" not in message  # no raw pydantic dump
    first, *lines = message.splitlines()
    assert first == f"study.yaml is not a valid study config ({len(lines)} problem{'s' if len(lines) > 1 else ''}):"
    return [line.removeprefix("  - ") for line in lines]


def test_field_errors_name_the_key_path_and_the_expected_value():
    data = minimal(workers=-1, device="gpu", store_dir="")
    data["models"][0] = {**data["models"][0], "kind": "fine-tuned", "clasnames": "names.txt"}
    data["models"][1] = {**data["models"][1], "name": "has space", "spec": "opencl:RN50"}
    del data["datasets"]["id"]["root"]
    data["analyses"] = {"kurtosiss": None,
                        "pruning": {"fractions": [0.1, 1.2], "orders": ["singular", "singular"]}}
    assert problems(data) == [
        "store_dir: expected a path; got an empty string",
        "device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got 'gpu'",
        "workers: expected greater than or equal to 0; got -1",
        "models[0].kind: expected 'zero-shot', 'finetuned' or 'supervised'; got 'fine-tuned'",
        "models[0].clasnames: unknown key; expected one of: name, spec, backbone, pretraining, kind, classnames, "
        "templates (did you mean 'classnames'?)",
        "models[1].name: expected a name of letters, digits and . _ + @ - (no spaces or slashes) starting with a "
        "letter or digit; got 'has space'",
        "models[1].spec: expected a model spec SCHEME:NAME[@WEIGHTS] with SCHEME one of openclip, timm, "
        "torchvision, hf, bundled (e.g. 'openclip:ViT-B-32@openai'); got 'opencl:RN50'",
        "datasets.id.root: required key is missing; expected the dataset's root folder",
        "analyses.pruning.fractions: expected fractions in [0, 1); got [1.2]",
        "analyses.pruning.orders: expected distinct values; repeated: singular",
        f"analyses.kurtosiss: unknown key; expected one of: {', '.join(registry.names())} (did you mean "
        "'kurtosis'?)",
    ]


def test_cross_reference_errors_are_listed_together():
    data = minimal()
    data["models"].append({**data["models"][0], "name": "kurtosis"})
    data["datasets"]["shift"].append({"kind": "imagenet-r", "root": "data/r2"})
    del data["datasets"]["broden"]
    data["analyses"]["cka"]["pairs"].append({"model_a": "zs", "model_b": "zss"})
    data["analyses"]["wiseft"]["pairs"].append({"name": "p", "zero_shot": "ft", "finetuned": "ft"})
    data["analyses"]["kurtosis"] = {"dataset": "imagenet-v2"}
    assert problems(data) == [
        f"models[2].name: expected a name that is not an analysis name ({', '.join(registry.names())}), so --only "
        "can tell them apart; got 'kurtosis'",
        "models[2]: expected a distinct (backbone, pretraining, kind) per model, the cell of the paper's tables; "
        "('RN50', 'openai', 'zero-shot') is also models[0] (change pretraining to tell them apart)",
        "datasets.shift[1].name: expected a unique dataset name; 'imagenet-r' is also datasets.shift[0] "
        "(set `name:` on one of them)",
        "analyses.kurtosis.dataset: expected the name of an evaluation dataset (one of imagenet, imagenet-r) "
        "(did you mean 'imagenet-r'?); got 'imagenet-v2'",
        "datasets.broden: required by analyses.concepts; expected {root: /path/to/broden1_224}",
        "analyses.cka.pairs[1].model_b: expected the name of a model of the study (did you mean 'zs'?); got 'zss'",
        "datasets.broden: required by analyses.wiseft.concepts; expected {root: /path/to/broden1_224}",
        "analyses.wiseft.pairs[1]: expected two different models; got 'ft' twice",
    ]


def test_defaults_sections_and_baseline():
    config = validate_study_config(minimal())
    assert config.enabled_analyses() == ["accuracy", "kurtosis", "concepts", "cka", "wiseft"]
    assert config.analyses.concepts.threshold == 0.8 and config.analyses.concepts.bases == ["singular", "neuron"]
    assert config.analyses.cka.pairs[0].layers is None  # "all"
    assert config.analyses.wiseft.pairs[0].name == "zs"
    assert (config.baseline.b1, config.baseline.b0) == (0.76, -1.49)
    assert config.datasets.id.name == "imagenet" and config.batch_size == 256 and config.autocast == "none"
    off = validate_study_config(minimal(analyses={"accuracy": {"enabled": False}, "kurtosis": None}))
    assert off.enabled_analyses() == ["kurtosis"]
    assert problems(minimal(analyses={"accuracy": {"enabled": False}})) == [
        f"analyses: expected at least one enabled analysis among {', '.join(registry.names())}"]
    assert problems(minimal(baseline={"b1": 1.0, "fit_csv": "testbed.csv"})) == [
        "baseline: expected either b1 and b0 (a fixed line) or fit_csv (refit from baseline accuracies), not both"]
    assert problems(minimal(baseline={"b0": -1.0})) == ["baseline: expected both b1 and b0; only b0 is given"]


def test_relative_paths_are_read_from_the_config_folder(tmp_path):
    path = tmp_path / "conf" / "study.yaml"
    path.parent.mkdir()
    data = minimal()
    data["models"].append({"name": "hf", "spec": "hf:./local-model", "backbone": "ViT", "pretraining": "x",
                           "kind": "supervised", "classnames": "~/names.txt"})
    path.write_text(yaml.safe_dump(data))
    config = load_study_config(path)
    base = path.parent
    assert config.output_dir == base / "out" and config.results_dir == base / "out" / "results"
    assert config.models[1].spec == f"openclip:RN50@{base / 'ckpt' / 'ft.safetensors'}"
    assert config.models[2].spec == f"hf:{base / 'local-model'}"
    assert config.models[2].classnames == Path("~/names.txt").expanduser()
    assert config.datasets.shift[0].root == base / "data" / "r"
    missing = {item.key: item.path for item in config.check_paths()}
    assert missing == {"models[1].spec": base / "ckpt" / "ft.safetensors", "models[2].spec": base / "local-model",
                       "models[2].classnames": Path("~/names.txt").expanduser(),
                       "datasets.id.root": base / "data" / "val", "datasets.shift[0].root": base / "data" / "r",
                       "datasets.broden.root": base / "data" / "broden"}
    for folder in ("data/val", "data/r", "data/broden", "local-model", "ckpt"):
        (base / folder).mkdir(parents=True)
    (base / "ckpt" / "ft.safetensors").write_bytes(b"")
    assert [item.key for item in config.check_paths()] == ["models[2].classnames"]


@pytest.mark.parametrize("spec, weights", [
    ("openclip:ViT-B-32@openai", None),
    ("openclip:ViT-B-32@/ckpt/ft.safetensors", "/ckpt/ft.safetensors"),
    ("openclip:RN50@finetuned.pt", "finetuned.pt"),
    ("openclip:ViT-B-32@hf-hub:org/model", None),
    ("openclip:ViT-B-32@local-dir:/models/x", "/models/x"),
    ("torchvision:vit_b_16@IMAGENET1K_V1", None),
    ("bundled:mobilenet_v2", None),
    ("hf:./my-model", "./my-model"),
    ("hf:google/vit-base-patch16-224", None),
])
def test_spec_weights_path(spec, weights):
    assert spec_weights_path(spec) == weights


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n  - oops")
    with pytest.raises(rs.InputError, match=r"bad.yaml is not valid YAML \(line 2, column 3\): while parsing a "
                                            r"flow node, expected the node content, but found '-'$"):
        load_study_config(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("output_dir: a\noutput_dir: b\n")
    with pytest.raises(rs.InputError, match="repeated key 'output_dir'"):
        load_study_config(twice)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(rs.InputError, match="expected a mapping of study keys"):
        load_study_config(listing)
    with pytest.raises(rs.InputError, match="does not exist; create one with `robustsig study init"):
        load_study_config(tmp_path / "absent.yaml")
    code = tmp_path / "code.yaml"
    code.write_text("output_dir: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(rs.InputError, match="not valid YAML"):
        load_study_config(code)


PAPER_ZERO_SHOT = {
    "openclip:RN50@openai", "openclip:RN50@yfcc15m", "openclip:RN50@cc12m",
    "openclip:RN101@openai", "openclip:RN101@yfcc15m",
    "openclip:ViT-B-16@openai", "openclip:ViT-B-16@laion400m_e32", "openclip:ViT-B-16@laion2b_s34b_b88k",
    "openclip:ViT-B-16@datacomp_l_s1b_b8k",
    "openclip:ViT-B-32@openai", "openclip:ViT-B-32@laion400m_e32", "openclip:ViT-B-32@laion2b_s34b_b79k",
}


def test_paper_preset_lists_the_pool_and_validates(tmp_path):
    text = preset_yaml("paper")
    assert "# FILL IN" in text
    path = tmp_path / "study.yaml"
    path.write_text(text)
    config = load_study_config(path)
    by_kind = {kind: [m for m in config.models if m.kind == kind] for kind in ("zero-shot", "finetuned", "supervised")}
    assert len(by_kind["zero-shot"]) == 12 and {m.spec for m in by_kind["zero-shot"]} == PAPER_ZERO_SHOT
    assert {(m.backbone, m.pretraining) for m in by_kind["finetuned"]} == \
        {(m.backbone, m.pretraining) for m in by_kind["zero-shot"]}
    for model in by_kind["finetuned"]:
        assert model.spec == (f"openclip:{model.backbone}@/path/to/finetuned/{model.backbone}_{model.pretraining}"
                              ".safetensors")
    assert {m.spec for m in by_kind["supervised"]} == {
        "openclip:RN50@/path/to/supervised/RN50_imagenet.safetensors",
        "openclip:RN101@/path/to/supervised/RN101_imagenet.safetensors",
        "torchvision:vit_b_16@IMAGENET1K_V1", "torchvision:vit_b_32@IMAGENET1K_V1"}
    assert [d.kind for d in config.datasets.evaluation()] == ["imagenet", "imagenet-v2", "imagenet-r",
                                                              "imagenet-sketch", "objectnet", "imagenet-a"]
    assert config.datasets.broden is not None
    assert config.enabled_analyses() == ["accuracy", "kurtosis", "importance", "pruning", "concepts", "cka", "wiseft",
                                         "predict_er"]
    assert len(config.analyses.cka.pairs) == 12 and len(config.analyses.wiseft.pairs) == 12
    concepts = config.analyses.concepts
    # the paper's one-sided AP, with the reason and the sign convention that makes it reproducible
    assert (concepts.threshold, concepts.orientation, concepts.thresholds) == (0.9, "positive",
                                                                               [0.8, 0.85, 0.9, 0.95])
    assert "orientation: positive = the paper's" in text and "largest-magnitude entry is positive" in text
    missing = config.check_paths()
    assert len(missing) == 12 + 2 + 6 + 1 and all(item.placeholder for item in missing)
    with pytest.raises(rs.DataError) as caught:
        config.require_paths()
    assert str(caught.value).count("(placeholder)") == 21 and "datasets.broden.root" in str(caught.value)


def test_only_selects_analyses_and_models():
    config = validate_study_config(minimal())
    only_kurtosis = select(config, ["kurtosis"])
    assert only_kurtosis.enabled_analyses() == ["kurtosis"] and only_kurtosis.model_names() == ["zs", "ft"]
    one_model = select(config, ["zs,kurtosis", "cka"])
    assert one_model.model_names() == ["zs"]
    assert one_model.enabled_analyses() == ["kurtosis"]  # the CKA pair needs ft, so it is dropped
    assert select(config, ["zs", "ft"]).enabled_analyses() == config.enabled_analyses()
    with pytest.raises(rs.InputError, match=r"'kurtosys' is neither an analysis .* \(did you mean 'kurtosis'\?\)"):
        select(config, ["kurtosys"])


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    out, err = capsys.readouterr()
    return caught.value.code or 0, out, err


def test_study_init_and_validate_commands(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    code, out, _ = run_cli(["study", "init", "--preset", "paper", "--out", str(study)], capsys)
    assert code == 0 and study.read_text() == preset_yaml("paper")
    assert "28 models (12 zero-shot, 12 finetuned, 4 supervised)" in out and "fill in the 21 paths" in out
    code, _, err = run_cli(["study", "init", "--out", str(study)], capsys)
    assert code == 2 and "already exists; pass --force" in err
    code, _, err = run_cli(["study", "validate", str(study)], capsys)
    assert code == 2 and "21 path(s) named in the study config do not exist" in err
    assert "models[12].spec: /path/to/finetuned/RN50_openai.safetensors does not exist (placeholder)" in err
    code, out, _ = run_cli(["study", "validate", str(study), "--structure-only"], capsys)
    assert code == 0 and "structure valid" in out
    code, out, _ = run_cli(["study", "validate", str(study), "--json"], capsys)
    document = json.loads(out)
    assert code == 1 and document["valid"] is False and len(document["missing_paths"]) == 21
    study.write_text(study.read_text().replace("kind: zero-shot", "kind: zeroshot", 1))
    code, _, err = run_cli(["study", "validate", str(study)], capsys)
    assert code == 2 and "models[0].kind: expected 'zero-shot', 'finetuned' or 'supervised'; got 'zeroshot'" in err


def test_lookups_and_the_pool_rows_of_a_study():
    config = validate_study_config(minimal())
    assert config.model("ft").kind == "finetuned" and config.model_names() == ["zs", "ft"]
    with pytest.raises(rs.InputError, match=r"no model named 'x' in the study; expected one of \['zs', 'ft'\]"):
        config.model("x")
    assert config.dataset("imagenet-r").root == Path("data/r") and config.dataset("broden").kind == "broden"
    with pytest.raises(rs.InputError, match="no dataset named 'v2'"):
        config.dataset("v2")
    models, datasets = study_rows(config)
    assert models == [ModelRow("zs", "openclip:RN50@openai", "RN50", "openai", "zero-shot"),
                      ModelRow("ft", "openclip:RN50@ckpt/ft.safetensors", "RN50", "openai", "finetuned")]
    assert datasets == [DatasetRow("imagenet", "imagenet", "id", "data/val"),
                        DatasetRow("imagenet-r", "imagenet-r", "shift", "data/r"),
                        DatasetRow("broden", "broden", "concepts", "data/broden")]
    assert (rs.StudyConfig, rs.load_study_config, rs.Results) == (StudyConfig, load_study_config, Results)
    assert rs.build_report.__module__ == "robustsig.report.html"


def test_to_dict_validates_back_to_the_same_config(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(preset_yaml("paper"))
    config = load_study_config(path)
    data = config.to_dict()
    assert validate_study_config(json.loads(json.dumps(data))) == config
    assert "privileged_ratio" not in data["analyses"]["importance"]  # unset optional keys are left out
    selected = select(config, ["ViT-B-32-openai-zs", "ViT-B-32-openai-ft", "cka,wiseft,concepts"])
    assert selected.enabled_analyses() == ["concepts", "cka", "wiseft"]
    assert [(p.model_a, p.model_b) for p in selected.analyses.cka.pairs] == [("ViT-B-32-openai-zs",
                                                                               "ViT-B-32-openai-ft")]
    assert [p.name for p in selected.analyses.wiseft.pairs] == ["ViT-B-32-openai"]


def test_the_paper_pool_is_in_open_clips_published_results(reference_dir):
    """Every zero-shot model of the preset is a (model, pretrained) pair of open_clip's published results (the
    DataComp ViT-B-16 is the 63.1% datacomp_l_s1b_b8k), and from those published accuracies each has a positive
    effective robustness on the paper's line (eq. 1 and the paper's five shift sets, written out here)."""
    import csv

    import numpy as np

    with open(reference_dir / "open_clip" / "openclip_results.csv", newline="") as handle:
        published = {(row["name"], row["pretrained"]): row for row in csv.DictReader(handle)}
    data = yaml.safe_load(preset_yaml("paper"))
    zero_shot = [m["spec"].removeprefix("openclip:").split("@") for m in data["models"] if m["kind"] == "zero-shot"]
    assert len(zero_shot) == 12 and all(tuple(pair) in published for pair in zero_shot)
    assert float(published[("ViT-B-16", "datacomp_l_s1b_b8k")]["ImageNet 1k"]) == pytest.approx(0.631)

    def logit(p):
        return np.log(p / (1 - p))

    for arch, tag in zero_shot:
        row = published[(arch, tag)]
        acc_id = float(row["ImageNet 1k"])
        acc_shift = np.mean([float(row[c]) for c in ("ImageNet v2", "ImageNet-R", "ImageNet Sketch", "ObjectNet",
                                                     "ImageNet-A")])
        er = acc_shift - 1 / (1 + np.exp(-(0.76 * logit(acc_id) - 1.49)))
        assert er > 0, (arch, tag, er)


def test_concept_orientation_and_threshold_sweep_are_validated():
    config = validate_study_config(minimal())
    assert (config.analyses.concepts.orientation, config.analyses.concepts.thresholds) == ("positive",
                                                                                           [0.8, 0.85, 0.9, 0.95])
    data = minimal()
    data["analyses"]["concepts"] = {"orientation": "negative", "thresholds": [0.8, 1.5, 0.8]}
    assert problems(data) == ["analyses.concepts.orientation: expected 'positive' or 'both'; got 'negative'",
                              "analyses.concepts.thresholds[1]: expected less than or equal to 1; got 1.5"]
    data["analyses"]["concepts"] = {"thresholds": [0.8, 0.9, 0.8]}
    assert problems(data) == ["analyses.concepts.thresholds: expected distinct values; repeated: 0.8"]
