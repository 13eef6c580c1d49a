"""The low-rank model of a whole encoder: exactness (fraction 0, full-rank factors, eq. 4 by hand on the maps' own
inputs), budgets, and every family (OpenCLIP ViT and ModifiedResNet, torchvision, timm, the bundled CNNs)."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustsig as rs
from robustsig.extraction.calibrate import accuracies, calibrate_linear_maps
from robustsig.extraction.lowrank import low_rank_curve
from robustsig.metrics.directions import head_svd
from robustsig.metrics.lowrank import MapShape, kept_directions, low_rank_factors
from robustsig.models.classifier import Classifier
from robustsig.models.linear_maps import FactorisedMap, LinearMap, explicit_attention, find_linear_maps
from robustsig.models.lowrank import low_rank_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_helpers import Tensorize, image_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def clip_classifier(kind: str) -> Classifier:
    """A small random-init OpenCLIP image tower (real architecture classes) with a random head."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    from robustsig.models.openclip import CLIPImageEncoder

    if kind == "vit":
        visual, size = VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_ratio=4.0,
                                         output_dim=32), 32
    else:
        visual, size = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=4, image_size=64, width=16), 64
    return Classifier(CLIPImageEncoder(visual).eval(), nn.Linear(32, 5), preprocess=Tensorize(size),
                      classnames=list("abcde"), meta={"spec": f"test:clip-{kind}"}).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("images"), 10)


@pytest.fixture(scope="module", params=["vit", "rn"])
def clip(request, folder):
    clf = clip_classifier(request.param)
    return clf, calibrate_linear_maps(clf, folder, batch_size=4, progress=False)


def batch_of(clf: Classifier, folder, n: int = 4) -> torch.Tensor:
    from PIL import Image

    return torch.stack([clf.preprocess(Image.open(path).convert("RGB")) for path, _ in folder.samples[:n]])


def eq4_by_hand(W: torch.Tensor, h: torch.Tensor) -> np.ndarray:
    """Eq. 4 written out with numpy: s_i / sum_j s_j * mean_n |cos(v_i, h_n)|."""
    W, h = W.double().numpy(), h.double().numpy()
    _, s, Vt = np.linalg.svd(W, full_matrices=False)
    cos = (h @ Vt.T) / np.linalg.norm(h, axis=1, keepdims=True)
    return s / s.sum() * np.abs(cos).mean(axis=0)


def test_explicit_attention_gives_the_same_logits(clip, folder):
    clf, _ = clip
    x = batch_of(clf, folder)
    twin = copy.deepcopy(clf)
    replaced = explicit_attention(twin.encoder)
    assert replaced and not any(isinstance(m, nn.MultiheadAttention) for m in twin.modules())
    with torch.no_grad():
        torch.testing.assert_close(twin(x), clf(x), rtol=0, atol=1e-5)


def test_fraction_zero_gives_the_original_logits(clip, folder):
    clf, cal = clip
    x = batch_of(clf, folder)
    for order in ("importance", "singular", "random"):
        low = low_rank_classifier(clf, cal, 0.0, order)
        with torch.no_grad():
            assert (low(x) - clf(x)).abs().max() <= 1e-5
        assert low.meta["lowrank"]["factorised"] == {}
        assert low.meta["lowrank"]["parameters"] == low.meta["lowrank"]["parameters_original"]


def test_full_rank_factorisation_reproduces_w():
    torch.manual_seed(1)
    for linear_map, module in [(LinearMap("fc", "linear", MapShape(7, 5, True)), nn.Linear(5, 7)),
                               (LinearMap("pw", "conv1x1", MapShape(6, 9, False), (2, 2)),
                                nn.Conv2d(9, 6, 1, stride=2, bias=False))]:
        W = linear_map.weight(module)
        svd = head_svd(W)
        first, second = low_rank_factors(svd, torch.arange(svd.rank))
        torch.testing.assert_close(second @ first, W.double(), rtol=0, atol=1e-12)
        layer = FactorisedMap.like(linear_map, svd.rank)
        with torch.no_grad():
            layer.first.weight.copy_(first.reshape(layer.first.weight.shape))
            layer.second.weight.copy_(second.reshape(layer.second.weight.shape))
            if module.bias is not None:
                layer.second.bias.copy_(module.bias)
            x = torch.randn(3, 5) if linear_map.kind == "linear" else torch.randn(2, 9, 8, 8)
            torch.testing.assert_close(layer(x), module(x), rtol=0, atol=1e-5)


def test_forced_factors_at_full_rank_reproduce_the_model(clip, folder):
    """Every map replaced by two maps of full rank (dense=False with a zero budget is a no-op, so the factors are
    built by hand through the same replacement): the logits do not move."""
    from robustsig.models.linear_maps import replace_map

    clf, cal = clip
    x = batch_of(clf, folder)
    twin = copy.deepcopy(clf)
    explicit_attention(twin.encoder)
    for path, linear_map in cal.maps.items():
        svd = cal.svds[path]
        first, second = low_rank_factors(svd, torch.arange(svd.rank))
        assert replace_map(twin.encoder, linear_map, first, second, dense=False)
    assert sum(isinstance(m, FactorisedMap) for m in twin.modules()) == len(cal.maps)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), clf(x), rtol=0, atol=1e-4)


def test_importance_equals_eq4_on_the_maps_own_inputs(clip, folder):
    clf, cal = clip
    images = batch_of(clf, folder, n=10)
    captured: dict[str, list[torch.Tensor]] = {}

    def run(model: Classifier, paths: list[str]) -> None:
        def grab(path):
            def hook(_module, inputs):
                x = inputs[0]
                rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if x.ndim == 4 else x.reshape(-1, x.shape[-1])
                captured.setdefault(path, []).append(rows.detach())
            return hook
        hooks = [model.encoder.get_submodule(path).register_forward_pre_hook(grab(path)) for path in paths]
        with torch.no_grad():
            model(images)
        for hook in hooks:
            hook.remove()

    visual = clf.encoder.visual
    if hasattr(visual, "transformer"):
        # MLP fc1/fc2 are called as modules in the original model: hooks read their inputs
        run(clf, [f"visual.transformer.resblocks.{i}.mlp.{name}" for i in range(2) for name in ("c_fc", "c_proj")])
        # the attention output projection of block 0 is not (nn.MultiheadAttention hands its weight to a function):
        # its input is what the attention returns when out_proj is the identity
        identity = copy.deepcopy(clf)
        attn = identity.encoder.visual.transformer.resblocks[0].attn
        with torch.no_grad():
            attn.out_proj.weight.copy_(torch.eye(64))
            attn.out_proj.bias.zero_()
        hook = attn.register_forward_hook(lambda m, i, o: captured.setdefault(
            "visual.transformer.resblocks.0.attn.out_proj", []).append(o[0].detach().reshape(-1, 64)))
        with torch.no_grad():
            identity(images)
        hook.remove()
        assert len(captured) == 5
    else:  # 1x1 convolutions (downsample convolutions follow an average pool, so stride 1)
        run(clf, ["visual.layer1.0.conv1", "visual.layer2.0.conv3", "visual.layer4.0.downsample.0"])
        assert len(captured) == 3
    for path, rows in captured.items():
        W = clf.encoder.get_submodule(path).weight.detach()
        h = torch.cat(rows)
        assert cal.rows[path] * cal.images == h.shape[0]
        np.testing.assert_allclose(cal.importance[path].numpy(), eq4_by_hand(W.reshape(W.shape[0], -1), h),
                                   rtol=1e-5, atol=1e-9)


def test_attention_pool_query_and_output_read_only_the_pooled_token(folder):
    clf = clip_classifier("rn")
    cal = calibrate_linear_maps(clf, folder, images=3, batch_size=2, progress=False)
    assert cal.images == 3
    assert cal.rows["visual.attnpool.q_proj"] == 1 and cal.rows["visual.attnpool.c_proj"] == 1
    assert cal.rows["visual.attnpool.k_proj"] == 5  # 2x2 positions + the mean token


def test_calibration_streams_batches_to_the_same_importance(folder):
    clf = clip_classifier("vit")
    one = calibrate_linear_maps(clf, folder, batch_size=10, progress=False)
    many = calibrate_linear_maps(clf, folder, batch_size=3, progress=False)
    for path in one.maps:
        torch.testing.assert_close(one.importance[path], many.importance[path], rtol=1e-6, atol=1e-12)


def test_rank_budget_keeps_the_most_important_directions(clip):
    clf, cal = clip
    shapes = {path: m.shape for path, m in cal.maps.items()}
    for fraction in (0.25, 0.5, 0.8):
        kept = kept_directions(cal.svds, shapes, fraction, "importance", importance=cal.importance)
        singular = kept_directions(cal.svds, shapes, fraction, "singular")
        for path, svd in cal.svds.items():
            k = svd.rank - int(np.floor(fraction * svd.rank + 1e-9))
            assert kept[path].numel() == k
            top = set(cal.importance[path].argsort(descending=True)[:k].tolist())
            assert set(kept[path].tolist()) == top
            assert singular[path].tolist() == list(range(k))


def test_parameter_budget_meets_its_target_and_grows_with_the_fraction(clip):
    clf, cal = clip
    shapes = {path: m.shape for path, m in cal.maps.items()}
    total = sum(shape.parameters() for shape in shapes.values())
    previous = total + 1
    for fraction in (0.0, 0.3, 0.6, 0.9):
        for order in ("importance", "singular", "random"):
            kept = kept_directions(cal.svds, shapes, fraction, order, "parameters", importance=cal.importance, seed=3)
            held = sum(shapes[p].parameters(int(kept[p].numel())) for p in shapes)
            assert held <= (1 - fraction) * total + 1e-6
            if order == "importance":
                assert held < previous
                previous = held
    low = low_rank_classifier(clf, cal, 0.6, "importance", "parameters")
    saved = low.meta["lowrank"]["parameters_original"] - low.meta["lowrank"]["parameters"]
    assert saved >= 0.6 * total - 1


def test_budget_errors(clip):
    _, cal = clip
    shapes = {path: m.shape for path, m in cal.maps.items()}
    with pytest.raises(rs.InputError, match="fractions must lie in"):
        kept_directions(cal.svds, shapes, 1.5)
    with pytest.raises(rs.InputError, match="budget must be one of rank, parameters"):
        kept_directions(cal.svds, shapes, 0.5, budget="flops")
    with pytest.raises(rs.InputError, match="needs the importance of every map"):
        kept_directions(cal.svds, shapes, 0.5, "importance")


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18", "timm:efficientnet_b0",
                                  "timm:vit_tiny_patch16_224", "bundled:efficientnet_lite0",
                                  "bundled:squeezenet1_1"])
def test_families_fraction_zero_and_half(spec, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = rs.load_classifier(spec, device="cpu")
    cal = calibrate_linear_maps(clf, folder, images=2, batch_size=2, progress=False)
    kinds = {m.kind for m in cal.maps.values()}
    assert kinds >= ({"linear"} if "vit" in spec else {"conv1x1"})
    x = batch_of(clf, folder, n=2)
    with torch.no_grad():
        reference = clf(x)
        assert (low_rank_classifier(clf, cal, 0.0)(x) - reference).abs().max() <= 1e-5
        half = low_rank_classifier(clf, cal, 0.5, "singular", dense=False)
        assert half.meta["lowrank"]["factorised"]
        assert half.meta["lowrank"]["parameters"] < half.meta["lowrank"]["parameters_original"]
        assert torch.isfinite(half(x)).all()


def test_saved_low_rank_model_loads_back_by_spec(tmp_path, folder):
    clf = rs.load_classifier("bundled:mobilenet_v2", device="cpu")
    cal = calibrate_linear_maps(clf, folder, images=4, batch_size=4, progress=False)
    low = low_rank_classifier(clf, cal, 0.7, "importance")
    assert low.meta["lowrank"]["factorised"]
    path = rs.save_classifier(low, tmp_path / "low.safetensors")
    again = rs.load_classifier(f"bundled:mobilenet_v2@{path}", device="cpu")
    assert again.fingerprint() == low.fingerprint()
    assert again.meta["lowrank"]["factorised"] == low.meta["lowrank"]["factorised"]
    x = batch_of(clf, folder, n=2)
    with torch.no_grad():
        torch.testing.assert_close(again(x), low(x), rtol=0, atol=0)


def test_curve_scores_with_the_datasets_rule_and_dedupes_fraction_zero(folder):
    clf = clip_classifier("vit")
    cal = calibrate_linear_maps(clf, folder, progress=False)
    table = low_rank_curve(clf, cal, {"id": folder, "shift": folder}, id_name="id", shift_names=["shift"],
                           fractions=[0.0, 0.5], orders=["importance", "singular"], progress=False)
    assert table["order"].tolist() == ["importance", "importance", "singular", "singular"]
    # fraction 0: the original model's accuracy, through the study's scoring
    with torch.no_grad():
        logits = clf(batch_of(clf, folder, n=10))
    expected = rs.accuracy(logits, folder)
    assert table["accuracy"][0] == table["accuracy"][2] == pytest.approx(expected)
    assert table["parameter_fraction"][0] == 1.0 and table["parameter_fraction"][1] < 1.0
    assert table["flop_fraction"][1] < 1.0
    low = low_rank_classifier(clf, cal, 0.5, "singular")
    assert table["acc:id"][3] == accuracies({"x": low}, folder, progress=False)["x"]


def test_curve_evaluates_each_order_on_its_own_model(folder, monkeypatch):
    """Two orders at one fraction keep as many directions per map but different ones: each is its own model
    (a curve that deduplicated by ranks alone scored the singular order with the importance order's model)."""
    import robustsig.extraction.lowrank as lowrank_module

    clf = clip_classifier("vit")
    cal = calibrate_linear_maps(clf, folder, progress=False)
    seen = {}
    real = lowrank_module.accuracies

    def spy(variants, dataset, **kwargs):
        seen.update(variants)
        return real(variants, dataset, **kwargs)

    monkeypatch.setattr(lowrank_module, "accuracies", spy)
    low_rank_curve(clf, cal, {"id": folder}, id_name="id", shift_names=[], fractions=[0.0, 0.5],
                   orders=["importance", "singular"], progress=False)
    assert len(seen) == 3  # the original (fraction 0 of both orders) and one model per order at 0.5
    x = batch_of(clf, folder, n=4)
    with torch.no_grad():
        by_order = {order: low_rank_classifier(clf, cal, 0.5, order)(x) for order in ("importance", "singular")}
        evaluated = {ident: model(x) for ident, model in seen.items()}
    assert not torch.equal(by_order["importance"], by_order["singular"])  # the orders keep different directions
    assert any(torch.equal(logits, by_order["singular"]) for logits in evaluated.values())
    assert any(torch.equal(logits, by_order["importance"]) for logits in evaluated.values())


def test_cli_json_per_fraction_and_saved_model(tmp_path, capsys, folder):
    import json

    from cli_helpers import run_cli

    out = tmp_path / "low.safetensors"
    code, stdout, stderr = run_cli(capsys, "lowrank", "bundled:mobilenet_v2", f"folder:{folder.root}",
                                   "--shift", f"folder:{folder.root}", "--fractions", "0,0.5", "--order",
                                   "importance,singular", "--calibration", "4", "--batch-size", "5", "--save",
                                   str(out), "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    rows = doc["fractions"]
    assert [(r["order"], r["fraction"]) for r in rows] == [("importance", 0.0), ("importance", 0.5),
                                                           ("singular", 0.0), ("singular", 0.5)]
    assert all({"fraction", "accuracy", "parameters", "er", "flops"} <= set(r) for r in rows)
    assert rows[0]["parameters"] == doc["parameters_original"] > rows[1]["parameters"]
    assert rows[0]["accuracy"] == rows[2]["accuracy"]
    again = rs.load_classifier(f"bundled:mobilenet_v2@{doc['saved']}", device="cpu")
    assert again.meta["lowrank"]["fraction"] == 0.5 and again.meta["lowrank"]["order"] == "importance"
    code, _, stderr = run_cli(capsys, "lowrank", "bundled:mobilenet_v2", f"folder:{folder.root}", "--order", "size")
    assert code == 2 and "--order must be one or more of singular, importance, random" in stderr
