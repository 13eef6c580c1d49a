"""Model spec strings: parsing, canonical form, and the errors for bad specs."""

from __future__ import annotations

import os

import pytest

import robustsig as rs
from robustsig.models.fetch import downloads_allowed
from robustsig.models.spec import ModelSpec


@pytest.mark.parametrize("text, family, name, weights, kind, canonical", [
    ("openclip:ViT-B-32@openai", "openclip", "ViT-B-32", "openai", "tag", "openclip:ViT-B-32@openai"),
    ("open_clip:ViT-B/32@LAION2B-S34B-B79K", "openclip", "ViT-B-32", "laion2b_s34b_b79k", "tag",
     "openclip:ViT-B-32@laion2b_s34b_b79k"),
    ("openclip:RN50", "openclip", "RN50", None, "none", "openclip:RN50"),
    ("openclip:ViT-B-16@/ckpt/ft.safetensors", "openclip", "ViT-B-16", "/ckpt/ft.safetensors", "path",
     "openclip:ViT-B-16@/ckpt/ft.safetensors"),
    ("openclip:hf-hub:laion/CLIP-ViT-B-32", "openclip", "", "hf-hub:laion/CLIP-ViT-B-32", "hub",
     "openclip:hf-hub:laion/CLIP-ViT-B-32"),
    ("openclip:ViT-B-32@hf-hub:org/repo", "openclip", "ViT-B-32", "hf-hub:org/repo", "hub",
     "openclip:ViT-B-32@hf-hub:org/repo"),
    ("timm:resnet50", "timm", "resnet50", None, "none", "timm:resnet50"),
    ("timm: vit_tiny_patch16_224 @ /w/vit.pt", "timm", "vit_tiny_patch16_224", "/w/vit.pt", "path",
     "timm:vit_tiny_patch16_224@/w/vit.pt"),
    ("torchvision:ResNet50@IMAGENET1K_V2", "torchvision", "resnet50", "IMAGENET1K_V2", "tag",
     "torchvision:resnet50@IMAGENET1K_V2"),
    ("torchvision:vit_b_16@ViT_B_16_Weights.IMAGENET1K_V1", "torchvision", "vit_b_16",
     "ViT_B_16_Weights.IMAGENET1K_V1", "tag", "torchvision:vit_b_16@ViT_B_16_Weights.IMAGENET1K_V1"),
    ("hf:google/vit-base-patch16-224", "hf", "google/vit-base-patch16-224", None, "hub",
     "hf:google/vit-base-patch16-224"),
    ("bundled:MobileNet_V2", "bundled", "mobilenet_v2", None, "tag", "bundled:mobilenet_v2"),
])
def test_parse_and_canonical_form(text, family, name, weights, kind, canonical):
    spec = ModelSpec.parse(text)
    assert (spec.family, spec.name, spec.weights) == (family, name, weights)
    assert spec.weights_kind == kind
    assert spec.random_init == (kind == "none")
    assert str(spec) == canonical
    assert ModelSpec.parse(str(spec)) == spec  # the canonical form is a fixed point
    assert ModelSpec.parse(spec) is spec


def test_relative_weight_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = ModelSpec.parse("openclip:ViT-B-32@ft.pt")
    assert spec.weights == os.path.join(str(tmp_path), "ft.pt")
    assert spec.weights_kind == "path"
    assert ModelSpec.parse("timm:resnet18@./w/r.safetensors").weights == str(tmp_path / "w" / "r.safetensors")
    assert ModelSpec.parse("openclip:ViT-B-32@local-dir:./clipdir").weights == f"local-dir:{tmp_path / 'clipdir'}"
    assert ModelSpec.parse("openclip:ViT-B-32@hf-hub:org/repo").architecture == ModelSpec("openclip", "ViT-B-32")


@pytest.mark.parametrize("text, message", [
    ("resnet50", "FAMILY:NAME"),
    ("openclp:ViT-B-32", "did you mean: openclip"),
    ("keras:resnet", "expected one of openclip, timm, torchvision, hf, bundled"),
    ("bundled:mobilenet_v3", "did you mean: mobilenet_v2"),
    ("bundled:mobilenet_v2@imagenet", "local checkpoint file"),
    ("timm:resnet50@a1_in1k", "local checkpoint file"),
    ("openclip:@openai", "no OpenCLIP architecture"),
    ("openclip:hf-hub:", "empty hf-hub: source"),
    ("torchvision:@IMAGENET1K_V1", "no torchvision model name"),
    ("timm:", "FAMILY:NAME"),
])
def test_bad_specs_say_what_is_expected(text, message):
    with pytest.raises(rs.InputError, match=message):
        ModelSpec.parse(text)


def test_spec_must_be_a_string():
    with pytest.raises(rs.InputError, match="must be a string"):
        ModelSpec.parse(42)


@pytest.mark.parametrize("env, allow, expected", [
    ({}, None, True),
    ({"HF_HUB_OFFLINE": "1"}, None, False),
    ({"ROBUSTSIG_OFFLINE": "true"}, None, False),
    ({"TRANSFORMERS_OFFLINE": "0"}, None, True),
    ({"HF_HUB_OFFLINE": "1"}, True, True),
    ({}, False, False),
])
def test_downloads_allowed(monkeypatch, env, allow, expected):
    for name in ("ROBUSTSIG_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert downloads_allowed(allow) is expected


def test_bad_device_is_an_input_error():
    import torch

    with pytest.raises(rs.InputError, match="unknown device 'gpu0'"):
        rs.load_classifier("bundled:mobilenet_v2", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(rs.InputError, match="no CUDA GPU"):
            rs.load_classifier("bundled:mobilenet_v2", device="cuda")
