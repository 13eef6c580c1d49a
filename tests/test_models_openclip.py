"""OpenCLIP classifiers built offline with random weights: widths, layer taps, CLIP's own zero-shot logits,
checkpoints (plain open_clip and robustsig), and the error for a named tag that is not cached."""

from __future__ import annotations

import copy
import json
import math
import pickle

import huggingface_hub.constants
import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from PIL import Image
from skimage import data

import robustsig as rs
from robustsig.models.checkpoint import save_classifier

NAMES = ["cat", "dog", "espresso"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
# arch -> (h width, pooled width of every layer tap, in tap order)
ARCHS = {
    "ViT-B-32": (512, {f"block{i}": 768 for i in range(12)}),
    "RN50": (1024, {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def random_clip(arch: str, seed: int = 0) -> torch.nn.Module:
    """The model load_classifier builds for 'openclip:ARCH' after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return open_clip.create_model(arch, pretrained_image=False, pretrained_text=False, load_weights=False).eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def built(request, tmp_path_factory):
    """(arch, h width, tap widths, classifier from load_classifier, the same open_clip model with its text tower)."""
    arch = request.param
    width, tap_widths = ARCHS[arch]
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised"):
        clf = rs.load_classifier(f"openclip:{arch}", device="cpu", classnames=NAMES, templates=TEMPLATES,
                                 cache_dir=tmp_path_factory.mktemp("zeroshot"))
    return arch, width, tap_widths, clf, random_clip(arch, seed=0)


def test_random_init_clip_widths_and_layer_taps(built):
    arch, width, tap_widths, clf, _ = built
    assert clf.meta["random_init"] is True and clf.meta["family"] == "openclip" and clf.spec == f"openclip:{arch}"
    assert clf.W.shape == (len(NAMES), width) and clf.b is None
    assert clf.layers == list(tap_widths)

    image = Image.fromarray(data.coffee())
    x = torch.stack([clf.preprocess(image), clf.preprocess(image.rotate(90))])
    assert x.shape == (2, 3, 224, 224)
    torch.testing.assert_close(pickle.loads(pickle.dumps(clf.preprocess))(image), x[0], rtol=0, atol=0)
    with torch.no_grad():
        h, logits, layers = clf.forward_with_layers(x, clf.layers)
        torch.testing.assert_close(logits, clf.head(clf.encode(x)), rtol=0, atol=0)
    assert h.shape == (2, width)
    torch.testing.assert_close(h.double().norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert {name: tuple(v.shape) for name, v in layers.items()} == {n: (2, w) for n, w in tap_widths.items()}

    # pooling: the CLS token of a ViT block, the mean over space of a ResNet stage
    tap = clf.taps[clf.layers[-1]]
    captured = {}
    handle = clf.encoder.get_submodule(tap.module).register_forward_hook(lambda _m, _i, out: captured.update(out=out))
    with torch.no_grad():
        clf.encode(x)
    handle.remove()
    expected = captured["out"][:, 0] if tap.layout == "tokens" else captured["out"].mean(dim=(2, 3))
    torch.testing.assert_close(layers[clf.layers[-1]], expected)


@pytest.mark.slow
def test_logits_equal_open_clips_zero_shot_computation(built):
    arch, _, _, clf, model = built
    visual = {f"encoder.visual.{k}": v for k, v in model.visual.state_dict().items()}
    encoder_state = {k: v for k, v in clf.state_dict().items() if k.startswith("encoder.")}
    assert encoder_state.keys() == visual.keys()
    assert all(torch.equal(encoder_state[k], visual[k]) for k in visual)  # same seed, same weights

    x = torch.randn(3, 3, 224, 224)
    tokenizer = open_clip.get_tokenizer(arch)
    with torch.no_grad():
        text = open_clip.build_zero_shot_classifier(model, tokenizer, NAMES, TEMPLATES)
        expected = model.logit_scale.exp() * model.encode_image(x, normalize=True) @ text
        torch.testing.assert_close(clf(x), expected, rtol=1e-4, atol=1e-4)
    assert math.isclose(clf.W.double().norm(dim=1).mean().item(), model.logit_scale.exp().item(), rel_tol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("built", ["ViT-B-32"], indirect=True)
def test_open_clip_checkpoint_and_robustsig_checkpoint_load(built, tmp_path):
    arch, _, _, clf, model = built
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 2, "state_dict": state}, tmp_path / "epoch_2.pt")  # open_clip's training format
    plain = rs.load_classifier(f"openclip:{arch}@{tmp_path / 'epoch_2.pt'}", device="cpu", classnames=NAMES,
                               templates=TEMPLATES, use_cache=False)
    assert plain.meta["random_init"] is False
    assert plain.fingerprint() == clf.fingerprint()  # same image tower, same zero-shot head

    # a finetuned classifier saved by robustsig loads back without its text tower, bit for bit
    finetuned = copy.deepcopy(clf)
    with torch.no_grad():
        finetuned.head.weight.mul_(0.5)
        finetuned.encoder.visual.proj.add_(0.01)
    path = save_classifier(finetuned, tmp_path / "ft.safetensors")
    back = rs.load_classifier(f"openclip:{arch}@{path}", device="cpu")
    assert back.fingerprint() == finetuned.fingerprint()
    assert back.classnames == NAMES and back.meta["base_spec"] == clf.spec and back.layers == clf.layers
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(back(x), finetuned(x), rtol=0, atol=0)
    assert back.preprocess(Image.fromarray(data.chelsea())).shape == (3, 224, 224)


def test_named_tag_that_is_not_cached_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(rs.InputError, match=r"ViT-B-32@laion2b_s34b_b79k.*not in the Hugging Face cache"):
        rs.load_classifier("openclip:ViT-B-32@laion2b_s34b_b79k", device="cpu")
    # downloads allowed but no network: one quick probe, then the same kind of error (no library retries)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("robustsig.models.fetch.unreachable", lambda url, timeout=5.0: "cannot reach the hub")
    with pytest.raises(rs.InputError, match="cannot reach the hub"):
        rs.load_classifier("openclip:RN50@openai", device="cpu", allow_download=True)


@pytest.mark.parametrize("spec, message", [
    ("openclip:ViT-B-33", r"unknown OpenCLIP architecture 'ViT-B-33' \(did you mean: ViT-B-32"),
    ("openclip:ViT-B-32@laion9000", "neither a pretrained tag of OpenCLIP ViT-B-32 nor a file.*laion400m_e32"),
    ("openclip:ViT-B-32@/no/such/ft.safetensors", "'/no/such/ft.safetensors' is not found"),
    ("openclip:local-dir:/no/such/dir", "has no open_clip_config.json"),
])
def test_clear_errors(spec, message):
    with pytest.raises(rs.InputError, match=message):
        rs.load_classifier(spec, device="cpu")


def test_local_dir_source_loads_config_weights_and_preprocessing(tmp_path):
    """``openclip:local-dir:DIR`` (open_clip's save format: open_clip_config.json + weights), on a tiny config."""
    from safetensors.torch import save_file

    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"layers": 2, "width": 32, "patch_size": 8, "image_size": 32, "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": preprocess_cfg}))
    torch.manual_seed(7)
    model = open_clip.CLIP(**{**model_cfg, "vision_cfg": CLIPVisionCfg(**model_cfg["vision_cfg"]),
                              "text_cfg": CLIPTextCfg(**model_cfg["text_cfg"])}).eval()
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))

    clf = rs.load_classifier(f"openclip:local-dir:{folder}", device="cpu", classnames=NAMES, templates=TEMPLATES,
                             use_cache=False)
    assert clf.spec == f"openclip:local-dir:{folder}" and clf.meta["random_init"] is False
    assert clf.W.shape == (3, 16) and clf.layers == ["block0", "block1"]
    normalize = clf.preprocess.transforms[-1]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.25, 0.25, 0.25)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text = open_clip.build_zero_shot_classifier(model, open_clip.get_tokenizer("ViT-B-32"), NAMES, TEMPLATES)
        expected = model.logit_scale.exp() * model.encode_image(x, normalize=True) @ text
        torch.testing.assert_close(clf(x), expected, rtol=1e-4, atol=1e-4)
