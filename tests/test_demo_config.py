"""The demo's study config validates and names only what exists (paths, layers, finetuned and Wise-FT models loaded
with ``bundled:ARCH@PATH``); the default pool has 14 models in their weight-sharing groups; the real packaged
MobileNetV2 scores the ImageNet photos far above chance and the sketches lower."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

import robustsig as rs
from robustsig.demo import demo_config
from robustsig.demo.config import POOLS, PRETRAINED, RANDOM_SPEC, layers_at_depths
from robustsig.data.base import image_loader
from robustsig.study.analyses.cka import planned
from robustsig.study.config import load_study_config, validate_study_config

from demo_helpers import small_demo  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Stand-ins for the finetuned and Wise-FT models: the real SqueezeNet with a changed head, saved."""
    clf = rs.load_classifier("bundled:squeezenet1_1")
    with torch.no_grad():
        clf.head.weight.mul_(0.5)
    folder = tmp_path_factory.mktemp("ft")
    rs.save_classifier(clf, folder / "model.safetensors")
    rs.save_classifier(clf, folder / "wiseft.safetensors")
    return folder


def _config(data, out, finetuned, pool=POOLS["tiny"], **extra):
    return demo_config(data, out, pool=pool,
                       finetuned={base: finetuned / "model.safetensors" for base in pool.finetuned},
                       interpolated={(base, alpha): finetuned / "wiseft.safetensors" for base in pool.finetuned
                                     for alpha in pool.alphas}, **extra)


def test_the_default_pool_has_ten_or_more_models_in_weight_sharing_groups(small_demo, finetuned, tmp_path):
    config = validate_study_config(_config(small_demo, tmp_path / "study", finetuned, POOLS["default"]))
    assert config.model_names() == [
        "mobilenet_v2", "mobilenet_v2-ft", "mobilenet_v2-wiseft-0.25", "mobilenet_v2-wiseft-0.5",
        "mobilenet_v2-wiseft-0.75", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
        "squeezenet1_1", "squeezenet1_1-ft", "squeezenet1_1-wiseft-0.25", "squeezenet1_1-wiseft-0.5",
        "squeezenet1_1-wiseft-0.75", "mobilenet_v2-random"]
    real = [m.name for m in config.models if m.pretraining == "imagenet-1k" and m.kind == "zero-shot"]
    assert real == list(PRETRAINED) and len(real) == 5
    assert config.analyses.predict_er.groups == [
        ["mobilenet_v2", "mobilenet_v2-ft", "mobilenet_v2-wiseft-0.25", "mobilenet_v2-wiseft-0.5",
         "mobilenet_v2-wiseft-0.75"],
        ["squeezenet1_1", "squeezenet1_1-ft", "squeezenet1_1-wiseft-0.25", "squeezenet1_1-wiseft-0.5",
         "squeezenet1_1-wiseft-0.75"]]
    assert [(p.zero_shot, p.finetuned) for p in config.analyses.wiseft.pairs] == [
        ("mobilenet_v2", "mobilenet_v2-ft"), ("squeezenet1_1", "squeezenet1_1-ft")]
    assert config.analyses.wiseft.alphas == [0.0, 0.5, 1.0]  # the 0.25 and 0.75 models are pool models only
    # the cheap settings the demo relies on: layers on the id set only, CKA on the id set, low rank on the id set
    assert config.analyses.layer_kurtosis.datasets == ["photos"] and config.analyses.cka.dataset == "photos"
    assert config.analyses.lowrank.models == ["squeezenet1_1"] and config.analyses.lowrank.datasets == ["photos"]
    assert (config.analyses.concepts.orientation, config.analyses.concepts.min_positives) == ("positive", 5)


def test_demo_config_validates_and_names_existing_paths(small_demo, finetuned, tmp_path):
    data = _config(small_demo, tmp_path / "study", finetuned, description="what the data is")
    config = validate_study_config(data)
    assert config.description == "what the data is"
    assert config.model("squeezenet1_1-ft").spec == f"bundled:squeezenet1_1@{finetuned / 'model.safetensors'}"
    assert [(m.name, m.kind, m.pretraining) for m in config.models] == [
        ("squeezenet1_1", "zero-shot", "imagenet-1k"), ("squeezenet1_1-ft", "finetuned", "imagenet-1k"),
        ("squeezenet1_1-wiseft-0.5", "finetuned", "wise-ft 0.5"), ("mobilenet_v2", "zero-shot", "imagenet-1k"),
        ("mobilenet_v2-random", "zero-shot", "random-init")]
    assert config.check_paths() == []
    # CKA on the id set from the stored layers: zero-shot vs finetuned, and across architectures
    assert config.analyses.cka.estimator == "pooled"
    assert [(pair.model_b, dataset) for pair, dataset in planned(config)] == [
        ("squeezenet1_1-ft", "photos"), ("mobilenet_v2", "photos")]
    assert config.enabled_analyses() == ["accuracy", "kurtosis", "importance", "pruning", "concepts", "atlas", "cka",
                                         "wiseft", "layer_kurtosis", "lowrank", "predict_er"]
    assert [d.name for d in config.datasets.evaluation()] == ["photos", "sketch", "cartoon", "noise", "blur",
                                                             "weather", "digital"]
    assert all(d.options == {"class_map": str(small_demo.class_map_path)} for d in config.datasets.evaluation())
    assert config.datasets.broden.root == small_demo.concepts_root
    assert config.output_dir == tmp_path / "study" and config.store_dir == tmp_path / "study" / "store"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert load_study_config(tmp_path / "demo.yaml") == config  # the config round-trips through YAML
    for entry in config.datasets.evaluation():  # every set opens with the options the study passes
        assert len(rs.open_dataset(entry.kind, entry.root, **entry.options)) == small_demo.counts[entry.name]


def test_every_pool_models_layers_are_its_taps():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-init control's warning
        for name, model in PRETRAINED.items():
            assert list(model.layers) == rs.load_classifier(model.spec).layers, name
        assert rs.load_classifier(RANDOM_SPEC).layers == list(PRETRAINED["mobilenet_v2"].layers)
    assert layers_at_depths(PRETRAINED["mobilenet_v2"].layers, [0.0, 0.5, 1.0]) == ["features0", "features9",
                                                                                     "features18"]
    assert layers_at_depths(PRETRAINED["efficientnet_lite0"].layers, [0.0, 0.2, 1.0]) == ["block0", "block3",
                                                                                           "block15"]


def accuracy_on(clf, root, class_map):
    ds = rs.open_dataset("folder", root, class_map=class_map, transform=clf.preprocess)
    logits, labels = [], []
    with torch.inference_mode():
        for _, images, batch_labels, _ in image_loader(ds, batch_size=16, num_workers=0):
            logits.append(clf(images))
            labels.append(batch_labels)
    return rs.accuracy(torch.cat(logits), ds, labels=torch.cat(labels))


def test_real_mobilenet_scores_the_photos_and_drops_on_sketches(small_demo):
    clf = rs.load_classifier("bundled:mobilenet_v2").eval()
    on_photos = accuracy_on(clf, small_demo.id_root, small_demo.class_map_path)
    on_sketches = accuracy_on(clf, small_demo.shift_roots["sketch"], small_demo.class_map_path)
    # chance: a top-1 among 1,000 classes lands on the photo's one class with probability 0.001
    assert on_photos > 0.6
    assert on_sketches < on_photos - 0.2
