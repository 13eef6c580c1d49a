"""timm, torchvision and Hugging Face models (random init): encoder + head reproduce the original forward."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

import robustsig as rs


def original_and_classifier(spec: str, build):
    """The library's own model and robustsig's classifier, from the same seed (so the same weights)."""
    torch.manual_seed(1)
    model = build().eval()
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="randomly initialised"):
        clf = rs.load_classifier(spec, device="cpu")
    return model, clf


@pytest.mark.parametrize("name, h_width, first_taps, tap_widths", [
    ("resnet18", 512, ["act1", "layer1", "layer2", "layer3", "layer4"], [64, 64, 128, 256, 512]),
    ("vit_tiny_patch16_224", 192, [f"block{i}" for i in range(12)], [192] * 12),
    ("convnext_atto", 320, ["stage0", "stage1", "stage2", "stage3"], [40, 80, 160, 320]),
])
def test_timm_split_equals_forward(name, h_width, first_taps, tap_widths):
    import timm

    model, clf = original_and_classifier(f"timm:{name}", lambda: timm.create_model(name, pretrained=False))
    assert clf.W.shape == (1000, h_width) and clf.classnames[967] == "espresso"
    assert clf.layers == first_taps
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        h, logits, layers = clf.forward_with_layers(x, clf.layers)
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(h, model.forward_head(model.forward_features(x), pre_logits=True), rtol=0, atol=0)
    assert [v.shape for v in layers.values()] == [(2, w) for w in tap_widths]
    image = Image.new("RGB", (300, 260), color=(10, 200, 30))
    assert clf.preprocess(image).shape == (3, 224, 224)
    torch.testing.assert_close(pickle.loads(pickle.dumps(clf.preprocess))(image), clf.preprocess(image))


def test_timm_swin_stages_are_channels_last():
    import timm

    from robustsig.models.anatomy import probe_taps
    from robustsig.models.timm_models import timm_tap_paths

    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    taps = probe_taps(model, timm_tap_paths(model), (224, 224), cls_token=False)
    assert list(taps) == ["layer0", "layer1", "layer2", "layer3"]
    assert all(tap.layout == "spatial" and tap.channels_last for tap in taps.values())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        stage = model.layers[0](model.patch_embed(x))  # (N, H, W, C)
    from robustsig.models.classifier import pool_activation

    torch.testing.assert_close(pool_activation(stage, taps["layer0"]), stage.mean(dim=(1, 2)))


@pytest.mark.parametrize("name, h_width, taps, tap_widths", [
    ("resnet18", 512, ["stem", "layer1", "layer2", "layer3", "layer4"], [64, 64, 128, 256, 512]),
    ("mobilenet_v3_small", 1024, [f"features{i}" for i in range(13)], None),
])
def test_torchvision_split_equals_forward(name, h_width, taps, tap_widths):
    from torchvision import models

    model, clf = original_and_classifier(f"torchvision:{name}", lambda: models.get_model(name))
    assert clf.W.shape == (1000, h_width) and clf.layers == taps
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        h, logits, layers = clf.forward_with_layers(x, clf.layers)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    if tap_widths:
        assert [v.shape for v in layers.values()] == [(2, w) for w in tap_widths]
        torch.testing.assert_close(layers["layer4"], model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x)))))))).mean(dim=(2, 3)))


def test_torchvision_vit_taps_read_the_class_token():
    from torchvision import models

    model, clf = original_and_classifier("torchvision:vit_b_16", lambda: models.get_model("vit_b_16"))
    assert clf.layers == [f"block{i}" for i in range(12)]
    assert all(tap.layout == "tokens" and tap.cls_token for tap in clf.taps.values())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, logits, layers = clf.forward_with_layers(x, ["block11"])
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
        tokens = model.encoder.layers(model.encoder.dropout(
            torch.cat([model.class_token.expand(1, -1, -1), model._process_input(x)], dim=1)
            + model.encoder.pos_embedding))
    torch.testing.assert_close(layers["block11"], tokens[:, 0])


def test_torchvision_errors():
    with pytest.raises(rs.InputError, match=r"unknown torchvision classification model 'resnet19' \(did you mean"):
        rs.load_classifier("torchvision:resnet19", device="cpu")
    with pytest.raises(rs.InputError, match="not weights of resnet18"):
        rs.load_classifier("torchvision:resnet18@ResNet50_Weights.IMAGENET1K_V2", device="cpu")


def test_torchvision_enum_weights_not_cached(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(rs.InputError, match=r"resnet18-f37072fd\.pth is not there and downloads are off"):
        rs.load_classifier("torchvision:resnet18@IMAGENET1K_V1", device="cpu", allow_download=False)


def test_timm_errors():
    with pytest.raises(rs.InputError, match=r"unknown timm model 'resnet181' \(did you mean: resnet18"):
        rs.load_classifier("timm:resnet181", device="cpu")
    with pytest.raises(rs.InputError, match="single linear head"):
        rs.load_classifier("timm:deit_tiny_distilled_patch16_224", device="cpu")


def tiny_hf_vit(folder, num_labels=5):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                       intermediate_size=64, num_labels=num_labels,
                       id2label={i: f"thing {i}" for i in range(num_labels)},
                       label2id={f"thing {i}": i for i in range(num_labels)})
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def test_hf_vit_split_equals_hf_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_hf_vit(tmp_path / "vit")
    clf = rs.load_classifier(f"hf:{tmp_path / 'vit'}", device="cpu")
    assert clf.classnames == [f"thing {i}" for i in range(5)]
    assert clf.W.shape == (5, 32) and clf.layers == ["block0", "block1", "block2"]
    image = Image.new("RGB", (50, 40), color=(200, 30, 90))
    x = torch.stack([clf.preprocess(image), torch.randn(3, 32, 32)])
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(pickle.loads(pickle.dumps(clf.preprocess))(image), x[0], rtol=0, atol=0)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        h, logits, layers = clf.forward_with_layers(x, clf.layers)
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(layers["block1"], out.hidden_states[2][:, 0])  # hidden_states[0]: embeddings
    assert h.shape == (2, 32)


def test_hf_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(rs.InputError, match="no such folder"):
        rs.load_classifier(f"hf:{tmp_path / 'missing'}", device="cpu")
    with pytest.raises(rs.InputError, match="Only the local Hugging Face cache was searched"):
        rs.load_classifier("hf:robustsig-tests/no-such-model", device="cpu")
    with pytest.raises(rs.InputError, match="3 class names given for a head with 5 outputs"):
        tiny_hf_vit(tmp_path / "vit")
        rs.load_classifier(f"hf:{tmp_path / 'vit'}", device="cpu", classnames=["a", "b", "c"])
