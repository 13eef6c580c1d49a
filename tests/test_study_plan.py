"""The study plan without running it: the DAG's order and needs, which stores hold layers (decided on the whole
config, whatever --only selects), Wise-FT end points sharing the pool models' stores; the CKA layer matching and
estimators; the ledger; when a store of another key still serves."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.study.analyses.cka import match_layers, with_h
from robustsig.study.analyses.cka.estimators import _bounds, layer_cka
from robustsig.study.analyses.cka.tasks import _layer_names
from robustsig.study.config import select, validate_study_config
from robustsig.study.ledger import Ledger, provenance_digest
from robustsig.study.registry import build_plan
from robustsig.study.stores import ExtractTask, _covers

from study_helpers import study_data


@pytest.fixture
def config(tmp_path):
    return validate_study_config(study_data(tmp_path), base_dir=tmp_path)


def ids(tasks) -> list[str]:
    return [task.id for task in tasks]


def test_the_plan_is_a_topological_order_model_by_model(config):
    tasks = build_plan(config, config)
    position = {task.id: i for i, task in enumerate(tasks)}
    assert len(position) == len(tasks)
    for task in tasks:
        assert all(position[need] < position[task.id] for need in task.needs), task.id
    # a model's extractions and analyses come before the next model's
    owners = [task.id.split(":")[1] for task in tasks if task.id.split(":")[0] not in ("venn", "predict_er")]
    first = {model: owners.index(model) for model in ("zs", "ft", "ctrl", "mnv2")}
    assert first["zs"] < first["ft"] < first["ctrl"] < first["mnv2"]
    assert all(owner == "zs" for owner in owners[:first["ft"]])
    # Broden is extracted for the AP steps only; every AP step reads its subject's Broden store
    broden = [task for task in tasks if isinstance(task, ExtractTask) and task.dataset == "broden"]
    assert {task.subject.name for task in broden} == {"zs", "ft", "ctrl", "mnv2", "zs@alpha=0.5"}
    for task in tasks:
        if task.tag == "concept_ap":
            assert task.needs == (f"extract:{task.subject.name}:broden",)
    # the Wise-FT end points are the pool models: their stores are shared, only alpha 0.5 has its own
    wiseft = next(task for task in tasks if task.tag == "wiseft")
    assert {"extract:zs:photos", "extract:ft:shift-b", "extract:zs@alpha=0.5:photos",
            "concept_ap:zs@alpha=0.5:singular", "concept_ap:ft:singular"} <= set(wiseft.needs)
    # the paper's CKA (minibatch) runs both models itself, on the id set and every shift set: no layers stored
    # the only layers stored are the ones layer_kurtosis asks for (every tap of zs on the id set)
    assert {task.id: task.layers for task in tasks if isinstance(task, ExtractTask) and task.layers} == {
        "extract:zs:photos": "all"}
    cka = [task for task in tasks if task.tag == "cka"]
    assert [(task.id, task.needs) for task in cka] == [(f"cka:zs:{b}:{d}", ()) for d in ("photos", "shift-a", "shift-b")
                                                       for b in ("ctrl", "ft")]
    assert position[cka[0].id] > max(position[task.id] for task in tasks
                                     if task.tag == "extract" and "@" not in task.subject.name)  # after the models


def test_the_pooled_estimator_stores_layers_on_every_cka_dataset(tmp_path):
    data = study_data(tmp_path)
    data["analyses"]["cka"]["estimator"] = "pooled"
    config = validate_study_config(data, base_dir=tmp_path)
    tasks = build_plan(config, config)
    layers = {(task.subject.name, task.dataset): task.layers for task in tasks if isinstance(task, ExtractTask)}
    for name in ("photos", "shift-a", "shift-b"):
        assert layers[("zs", name)] == layers[("ctrl", name)] == layers[("ft", name)] == "all"
    assert layers[("mnv2", "photos")] == layers[("zs@alpha=0.5", "photos")] == ()
    cka = {task.id: task.needs for task in tasks if task.tag == "cka"}
    assert cka["cka:zs:ft:shift-a"] == ("extract:zs:shift-a", "extract:ft:shift-a")
    kurtosis = select(config, ["kurtosis"])
    assert build_plan(config, kurtosis)[0].layers == "all"  # the CKA store of zs keeps its layers under --only
    assert build_plan(kurtosis, kurtosis)[0].layers == ()
    data["analyses"]["cka"]["pairs"][0]["dataset"] = "shift-b"  # a pair on one dataset only
    config = validate_study_config(data, base_dir=tmp_path)
    tasks = build_plan(config, config)
    assert [task.id for task in tasks if task.tag == "cka"] == [
        "cka:zs:ft:photos", "cka:zs:ft:shift-a", "cka:zs:ctrl:shift-b", "cka:zs:ft:shift-b"]
    assert {(task.subject.name, task.dataset) for task in tasks
            if isinstance(task, ExtractTask) and task.layers == "all"} == {
        ("zs", "photos"), ("ft", "photos"), ("zs", "shift-a"), ("ft", "shift-a"), ("zs", "shift-b"), ("ft", "shift-b"),
        ("ctrl", "shift-b")}
    data["analyses"]["cka"]["pairs"][0]["dataset"] = "shift-c"
    with pytest.raises(rs.InputError, match=r"analyses.cka.pairs\[0\].dataset: expected the name of an evaluation"):
        validate_study_config(data, base_dir=tmp_path)
    data["analyses"]["cka"]["pairs"][0]["dataset"] = None
    data["analyses"]["cka"]["estimator"] = "minibatch"
    data["analyses"]["cka"]["kernel"] = "rbf"
    with pytest.raises(rs.InputError, match="needs estimator: pooled"):
        validate_study_config(data, base_dir=tmp_path)


def test_a_selection_keeps_the_stores_of_the_whole_config(config):
    kurtosis = select(config, ["kurtosis"])
    tasks = build_plan(config, kurtosis)
    assert ids(tasks) == [f"{kind}:{model}{suffix}" for model in ("zs", "ft", "ctrl", "mnv2")
                          for kind, suffix in (("extract", ":photos"), ("kurtosis", ""))]
    two = select(config, ["concepts,zs", "ft"])
    venn = build_plan(config, two)[-1]
    assert venn.id == "venn" and venn.groups == [("tiny-vit / synthetic", ["zs", "ft"])]
    assert venn.needs == ("concepts:zs", "concepts:ft")


def test_custom_layers_and_datasets(tmp_path):
    data = study_data(tmp_path, kurtosis={"dataset": "shift-b"},
                      cka={"pairs": [{"model_a": "zs", "model_b": "ctrl", "layers": ["block1"],
                                      "layers_b": ["stage0", "stage3"]},
                                     {"model_a": "zs", "model_b": "ft", "layers": ["block4", "block1"]}],
                           "dataset": "shift-a", "pooling": "mean", "estimator": "pooled"},
                      layer_kurtosis={"enabled": False})
    config = validate_study_config(data, base_dir=tmp_path)
    tasks = {task.id: task for task in build_plan(config, config)}
    assert tasks["extract:zs:shift-a"].layers == ("block1", "block4")
    assert tasks["extract:ctrl:shift-a"].layers == ("stage0", "stage3")
    assert tasks["extract:ft:shift-a"].layers == ("block4", "block1")
    assert tasks["extract:zs:shift-a"].pooling == "mean" and tasks["extract:zs:photos"].layers == ()
    assert tasks["kurtosis:zs"].needs == ("extract:zs:shift-b",)


def test_match_layers_in_order_by_relative_depth_or_all_pairs():
    a, b = ["a0", "a1", "a2", "a3"], ["b0", "b1"]
    assert match_layers(a, ["b0", "b1", "b2", "b3"], False) == [("a0", "b0"), ("a1", "b1"), ("a2", "b2"), ("a3", "b3")]
    assert match_layers(a, b, False) == [("a0", "b0"), ("a3", "b1")]
    assert match_layers(b, a, False) == [("b0", "a0"), ("b1", "a3")]
    assert match_layers(["a0", "a1", "a2"], ["b0", "b1", "b2", "b3", "b4", "b5", "b6"], False) == [
        ("a0", "b0"), ("a1", "b3"), ("a2", "b6")]
    assert match_layers(a, b, True) == [(x, y) for x in a for y in b]


def test_h_is_the_last_point_of_every_curve_and_is_matched_with_h():
    assert with_h(["b0", "h", "b1"]) == with_h(["b0", "b1"]) == ["b0", "b1", "h"]
    # the taps by relative depth among themselves, h with h (never a tap with h, whatever the counts)
    assert match_layers(["a0", "a1", "a2", "a3", "h"], ["b0", "b1", "h"], False) == [("a0", "b0"), ("a3", "b1"),
                                                                                        ("h", "h")]
    assert match_layers(["b0", "b1", "h"], ["a0", "a1", "a2", "a3", "h"], False) == [("b0", "a0"), ("b1", "a3"),
                                                                                        ("h", "h")]
    assert match_layers(["h"], ["b0", "b1", "h"], False) == [("h", "h")]  # a model without layer taps
    assert match_layers(["a0", "h"], ["b0", "h"], True) == [("a0", "b0"), ("a0", "h"), ("h", "b0"), ("h", "h")]
    # the layers a step compares: those asked (default: every tap), then h; a tap may not take h's name
    assert _layer_names("m", None, ["b0", "b1"]) == ["b0", "b1", "h"]
    assert _layer_names("m", ["b1", "h", "b0"], ["b0", "b1"]) == ["b1", "b0", "h"]
    assert _layer_names("m", None, []) == ["h"]
    with pytest.raises(rs.InputError, match="has no layer \\['b9'\\]"):
        _layer_names("m", ["b9"], ["b0"])
    with pytest.raises(rs.InputError, match="a layer tap named 'h'"):
        _layer_names("m", None, ["b0", "h"])


def test_the_pooled_estimator_never_asks_a_store_for_a_layer_named_h(tmp_path):
    data = study_data(tmp_path, cka={"pairs": [{"model_a": "zs", "model_b": "ft", "layers": ["block4", "h"]}],
                                     "dataset": "shift-a", "estimator": "pooled"}, layer_kurtosis={"enabled": False})
    tasks = {task.id: task for task in build_plan(*[validate_study_config(data, base_dir=tmp_path)] * 2)}
    assert tasks["extract:zs:shift-a"].layers == tasks["extract:ft:shift-a"].layers == ("block4",)


def test_minibatch_bounds_never_leave_a_batch_too_small_for_the_unbiased_estimator():
    assert _bounds(10, 4) == [(0, 4), (4, 10)]
    assert _bounds(12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert _bounds(3, 4) == [(0, 3)]
    assert _bounds(515, 256) == [(0, 256), (256, 515)]
    assert _bounds(517, 256) == [(0, 256), (256, 512), (512, 517)]


class ArrayStore:
    """The part of ActivationStore that layer_cka reads, over in-memory layers."""

    def __init__(self, **layers: torch.Tensor) -> None:
        self.layers = layers
        self.num_rows = next(iter(layers.values())).shape[0]
        self.manifest = {"tensors": {name: {"shape": list(t.shape)} for name, t in layers.items()}}

    def read(self, key: str, rows: slice) -> torch.Tensor:
        return self.layers[key][rows]


def test_layer_cka_streams_the_linear_kernel_exactly_and_rbf_by_minibatches():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=generator, dtype=torch.float64)
    a = ArrayStore(l0=x, l1=torch.tanh(x @ torch.randn(12, 7, generator=generator, dtype=torch.float64)))
    b = ArrayStore(m0=x[:, :5] ** 2, m1=x + 0.1 * torch.randn(300, 12, generator=generator, dtype=torch.float64))
    pairs = match_layers(["l0", "l1"], ["m0", "m1"], cross=True)
    for unbiased in (False, True):
        linear = layer_cka(a, b, pairs, "linear", unbiased)
        for la, lb in pairs:
            assert linear[(la, lb)] == pytest.approx(rs.cka(a.layers[la], b.layers[lb], unbiased=unbiased), abs=1e-12)
    rbf = layer_cka(a, b, pairs, "rbf", False)
    for la, lb in pairs:
        expected = rs.MinibatchCKA("rbf")
        for start, stop in ((0, 256), (256, 300)):
            expected.update(a.layers[la][start:stop], b.layers[lb][start:stop])
        assert rbf[(la, lb)] == pytest.approx(expected.compute(), abs=1e-12)
    assert rbf[("l0", "m1")] > 0.9 > rbf[("l0", "m0")]


def test_the_ledger_records_steps_atomically_and_sets_a_broken_one_aside(tmp_path):
    ledger = Ledger(tmp_path)
    digest = provenance_digest({"store": "abc", "threshold": 0.9})
    assert digest == provenance_digest({"threshold": 0.9, "store": "abc"})  # key order does not matter
    ledger.mark("concepts:zs", digest, {"store": "abc", "threshold": 0.9})
    ledger.mark_store("zs/photos", "k1", {"spec": "timm:test_vit"})
    again = Ledger(tmp_path)
    assert again.finished("concepts:zs", digest) and not again.finished("concepts:zs", provenance_digest({}))
    assert again.store("zs/photos") == {"digest": "k1", "identity": {"spec": "timm:test_vit"}}
    assert again.problem is None and not list(Path(tmp_path).glob(".*tmp"))
    (tmp_path / "ledger.json").write_text("{not json")
    broken = Ledger(tmp_path)
    assert "is not a readable ledger" in broken.problem and broken.digest("concepts:zs") is None


def test_a_store_with_more_layers_serves_a_store_with_fewer():
    key = {"model": {"spec": "s", "fingerprint": "f"}, "dataset": {"files_digest": "d"}, "layers": ["b0"],
           "pooling": "auto", "dtype": "float32", "autocast": None, "logits_topk": None, "preprocess": "p"}
    assert _covers(key, key)
    assert _covers({**key, "layers": ["b0", "b1"]}, key)
    assert _covers({**key, "layers": ["b0"]}, {**key, "layers": [], "pooling": None})
    assert not _covers({**key, "layers": ["b1"]}, key)
    assert not _covers({**key, "layers": ["b0", "b1"], "pooling": "mean"}, key)
    assert not _covers({**key, "model": {"spec": "s", "fingerprint": "g"}}, key)
    assert not _covers(None, key)


@pytest.mark.parametrize("name", ["ledger", "baseline", "analyses.cka.options", "results"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"robustsig.study.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_concept_ap_runs_on_the_study_device_when_it_is_a_gpu():
    from robustsig.study.analyses.concepts.ap import ap_device

    assert ap_device("cpu") == torch.device("cpu")
    assert ap_device(None) == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")  # auto
    if not torch.cuda.is_available():
        with pytest.raises(rs.InputError, match="no CUDA GPU"):
            ap_device("cuda")


class _Scaled:
    """A preprocess: the image (a tensor here) times ``factor``; its repr tells two preprocessings apart."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.factor

    def __repr__(self) -> str:
        return f"Scaled({self.factor})"


class _Images(torch.utils.data.Dataset):
    """10 images, the one at position 1 undecodable (None), preprocessed by the loader (``transform`` None)."""

    transform = None

    def __init__(self) -> None:
        self.images = torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(9))

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return (None if i == 1 else self.images[i]), 0

    def describe(self) -> dict:
        return {"kind": "test"}


def _tiny(preprocess, seed: int) -> rs.Classifier:
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(64, 5, bias=False))
    return rs.Classifier(encoder, torch.nn.Linear(5, 2), preprocess=preprocess, classnames=["a", "b"],
                         taps={"conv": rs.LayerTap("0", "spatial"), "relu": rs.LayerTap("1", "spatial"),
                               "fc": rs.LayerTap("3", "vector")})


def test_the_paired_pass_feeds_both_models_the_same_minibatches():
    from robustsig.study.analyses.cka.estimators import paired_cka

    from cka_oracle import torch_cka_compare

    data = _Images()
    a, b = _tiny(_Scaled(1.0), 0), _tiny(_Scaled(2.0), 0)  # the same weights, two preprocessings (two loaders)
    same = paired_cka(a, b, data, ["conv", "relu", "fc"], ["conv", "relu", "fc"], minibatch=4)
    # minibatches [0, 4) with 3 decodable images and [8, 10) are left out (fewer than 4); [4, 8) is used
    assert (same.images, same.left_out) == (4, 5)
    torch.testing.assert_close(same.values.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    other = _tiny(_Scaled(1.0), 1)
    result = paired_cka(a, other, data, ["conv", "fc"], ["relu", "conv", "fc"], minibatch=5)
    assert (result.images, result.left_out) == (9, 0)
    features = {}
    for name, clf in (("a", a), ("b", other)):
        out = []
        hooks = [clf.encoder.get_submodule(m).register_forward_hook(lambda _m, _i, o: out.append(o))
                 for m in {"a": ("0", "3"), "b": ("1", "0", "3")}[name]]
        with torch.no_grad():
            for positions in ([0, 2, 3, 4], [5, 6, 7, 8, 9]):
                clf.encoder(data.images[positions])
        for hook in hooks:
            hook.remove()
        k = 2 if name == "a" else 3
        features[name] = [out[i:i + k] for i in range(0, len(out), k)]
    # hooks fire in module order: model b's taps are asked as relu, conv, fc
    features["b"] = [[batch[1], batch[0], batch[2]] for batch in features["b"]]
    expected = torch_cka_compare(features["a"], features["b"])
    assert float((result.values - expected).abs().max()) <= 1e-5


def test_significance_units_group_the_rows_of_one_image_file():
    """Rows whose image files hold the same bytes (an index listing an image twice, a copy under another name) are
    one exchangeable unit of the permutation test; an unreadable file is a unit of its own; without files, rows with
    identical scores are grouped (the metric's "auto")."""
    from types import SimpleNamespace

    from robustsig.study.analyses.concepts.significance import content_units

    digests = ["a", "b", "a", None, "c", None]  # dataset positions 0..5; 0 and 2 are one image, 3 and 5 unreadable
    store = SimpleNamespace(read=lambda key: torch.tensor([5, 4, 3, 2, 1, 0]))  # store row r holds position 5 - r
    dataset = SimpleNamespace(listing=lambda: SimpleNamespace(digests=digests))
    members = [(None, np.array([3, 5, 1, 0]), None), (None, np.array([0, 2]), None)]  # positions 2, 0, 4, 5; 5, 3
    units = content_units(store, dataset, members)
    assert units[0][0] == units[0][1] and len(set(units[0].tolist())) == 3  # positions 2 and 0: one unit
    assert units[1][0] != units[1][1]  # two unreadable files are not one unit
    assert content_units(store, SimpleNamespace(), members) == "auto"
