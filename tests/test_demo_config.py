"""The demo's study config validates and names only what exists (paths, layers, a Wise-FT pair of the real
MobileNetV2 and a finetuned copy loaded with ``bundled:mobilenet_v2@PATH``); the real packaged MobileNetV2 scores the
built in-distribution photos far above chance and the sketches lower."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

import robustsig as rs
from robustsig.demo import demo_config
from robustsig.demo.config import (EFFICIENTNET_LITE0_LAYERS, FINETUNED, MOBILENET_V2_LAYERS, demo_models,
                                   layers_at_depths)
from robustsig.data.base import image_loader
from robustsig.study.analyses.cka import planned
from robustsig.study.config import load_study_config, validate_study_config

from demo_helpers import small_demo  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A stand-in for the finetuned model: the real MobileNetV2 with a changed head, saved as a classifier."""
    clf = rs.load_classifier("bundled:mobilenet_v2")
    with torch.no_grad():
        clf.head.weight.mul_(0.5)
    path = tmp_path_factory.mktemp("ft") / "model.safetensors"
    rs.save_classifier(clf, path)
    return path


@pytest.fixture(scope="module")
def classifiers(finetuned):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-init control's warning
        return {m["name"]: rs.load_classifier(m["spec"]) for m in demo_models(finetuned)}


def test_demo_config_validates_and_names_existing_paths(small_demo, finetuned, tmp_path):
    data = demo_config(small_demo, tmp_path / "study", finetuned=finetuned, description="what the data is")
    config = validate_study_config(data)
    assert config.description == "what the data is"
    assert config.model(FINETUNED).spec == f"bundled:mobilenet_v2@{finetuned}"
    assert [(m.name, m.kind, m.pretraining) for m in config.models] == [
        ("mobilenet_v2", "zero-shot", "imagenet-1k"), ("mobilenet_v2-ft", "finetuned", "imagenet-1k"),
        ("mobilenet_v2-random", "zero-shot", "random-init"), ("efficientnet_lite0", "zero-shot", "imagenet-1k")]
    pair = config.analyses.wiseft.pairs[0]
    assert (pair.zero_shot, pair.finetuned) == ("mobilenet_v2", "mobilenet_v2-ft")
    assert config.analyses.wiseft.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert config.check_paths() == []
    cka = config.analyses.cka  # the paper's CKA, zero-shot vs finetuned on the id set and all five shift sets
    assert (cka.estimator, cka.minibatch) == ("minibatch", 16)
    assert [(pair.model_b, dataset) for pair, dataset in planned(config)] == [
        ("mobilenet_v2-ft", "photos"), ("efficientnet_lite0", "photos")] + [
        ("mobilenet_v2-ft", name) for name in ("sketch", "cartoon", "rephoto", "viewpoint", "occlusion")]
    assert config.enabled_analyses() == ["accuracy", "kurtosis", "importance", "pruning", "concepts", "atlas", "cka",
                                         "wiseft", "layer_kurtosis", "lowrank", "predict_er"]
    assert [d.name for d in config.datasets.evaluation()] == ["photos", "sketch", "cartoon", "rephoto", "viewpoint",
                                                             "occlusion"]
    assert all(d.options == {"class_map": str(small_demo.class_map_path)} for d in config.datasets.evaluation())
    assert config.datasets.broden.root == small_demo.concepts_root
    assert config.output_dir == tmp_path / "study" and config.store_dir == tmp_path / "study" / "store"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config.to_dict()))
    assert load_study_config(tmp_path / "demo.yaml") == config  # the config round-trips through YAML
    for entry in config.datasets.evaluation():  # every set opens with the options the study passes
        assert len(rs.open_dataset(entry.kind, entry.root, **entry.options)) == small_demo.counts[entry.name]


def test_layers_pairs_and_pool_exist(classifiers):
    assert (list(MOBILENET_V2_LAYERS) == classifiers["mobilenet_v2"].layers == classifiers["mobilenet_v2-random"].layers
            == classifiers["mobilenet_v2-ft"].layers)
    assert list(EFFICIENTNET_LITE0_LAYERS) == classifiers["efficientnet_lite0"].layers
    assert layers_at_depths(MOBILENET_V2_LAYERS, [0.0, 0.5, 1.0]) == ["features0", "features9", "features18"]
    assert layers_at_depths(EFFICIENTNET_LITE0_LAYERS, [0.0, 0.2, 1.0]) == ["block0", "block3", "block15"]
    real, tuned, control = (classifiers[name] for name in ("mobilenet_v2", "mobilenet_v2-ft", "mobilenet_v2-random"))
    assert control.meta["random_init"] and not real.meta["random_init"] and not tuned.meta["random_init"]
    assert torch.equal(tuned.W, real.W * 0.5) and torch.equal(tuned.encoder.features[0][0].weight,
                                                             real.encoder.features[0][0].weight)
    half = rs.interpolate(real, tuned, 0.5)
    assert torch.allclose(half.W, (real.W + tuned.W) / 2)


def accuracy_on(clf, root, class_map):
    ds = rs.open_dataset("folder", root, class_map=class_map, transform=clf.preprocess)
    logits, labels = [], []
    with torch.inference_mode():
        for _, images, batch_labels, _ in image_loader(ds, batch_size=16, num_workers=0):
            logits.append(clf(images))
            labels.append(batch_labels)
    return rs.accuracy(torch.cat(logits), ds, labels=torch.cat(labels))


def test_real_mobilenet_scores_the_photos_and_drops_on_sketches(small_demo, classifiers):
    clf = classifiers["mobilenet_v2"].eval()
    on_photos = accuracy_on(clf, small_demo.id_root, small_demo.class_map_path)
    on_sketches = accuracy_on(clf, small_demo.shift_roots["sketch"], small_demo.class_map_path)
    # chance: a top-1 among 1,000 classes lands in a class's 2-5 ids with probability < 0.005
    assert on_photos > 0.7
    assert on_sketches < on_photos - 0.2
