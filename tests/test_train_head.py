"""The head of a model trained from scratch (recipe D.2): ``linear`` by default (bias, raw embedding), the
``normalized-linear`` option (bias-free, L2-normalised embedding), each checked on a real training run of a
random-init CLIP ResNet (open_clip's ModifiedResNet with its attention pool, at 32 px), recorded in recipe.yaml and
the checkpoint, loaded back with the same ``h``; a resume with another head is refused, bad heads are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import robustsig as rs
from robustsig.train.heads import head_kind
from robustsig.train.loop import train_classifier
from robustsig.train.recipes import load_recipe
from robustsig.train.start import scratch_start
from robustsig.train.state import load_train_state, save_train_state

from cli_helpers import run_cli
from train_helpers import cli, register_clip, tiny_classifier, write_colour_folder

pytestmark = [pytest.mark.filterwarnings("ignore:.*randomly initialised", "ignore:.*Grad strides do not match"),
              pytest.mark.usefixtures("one_thread")]
ARCH = "openclip:rs-tiny-rn"
TINY_RN = {"embed_dim": 16, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32, "head_width": 64},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
"""CLIP's modified ResNet (3-conv stem, anti-aliased strides, attention pool to a 16-d embedding), tiny."""
RUN = ["--epochs", "2", "--lr-milestones", "1", "--batch-size", "6", "--warmup-steps", "1", "--workers", "0",
       "--device", "cpu", "--json"]
EXPECTED = {"linear": (True, False), "normalized-linear": (False, True)}
"""head -> (has a bias, h is L2-normalised)."""


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def tiny_rn(tmp_path_factory) -> Path:
    """Registers ``rs-tiny-rn`` with open_clip; returns a folder holding a CLIP weights file of it and templates."""
    return register_clip(tmp_path_factory.mktemp("rn"), "rs-tiny-rn", TINY_RN, seed=5).parent


@pytest.fixture(scope="module")
def trained(colours, tiny_rn, tmp_path_factory):
    """One training run per head: the default (no --head) and --head normalized-linear."""
    runs = {}
    for head, option in (("linear", []), ("normalized-linear", ["--head", "normalized-linear"])):
        out = tmp_path_factory.mktemp(head)
        code, stdout, stderr = cli("train", ARCH, "--data", f"folder:{colours}", "--out", str(out), *option, *RUN)
        assert code == 0, stderr
        runs[head] = (out, json.loads(stdout))
    return runs


@pytest.mark.parametrize("head", list(EXPECTED))
def test_the_head_is_trained_recorded_and_loaded_back(trained, colours, head):
    has_bias, normalised = EXPECTED[head]
    out, summary = trained[head]
    assert summary["recipe"]["head"] == head and summary["recipe"]["name"] == "supervised"
    assert yaml.safe_load((out / "recipe.yaml").read_text())["head"] == head
    assert load_recipe("supervised", out / "recipe.yaml").to_dict() == summary["recipe"]
    state = load_train_state(out / "checkpoint.pt")
    assert state.recipe["head"] == head and state.position.step == 8
    assert ("head.bias" in state.model) is has_bias
    assert state.model["head.weight"].shape == (3, TINY_RN["embed_dim"])

    loaded = rs.load_classifier(summary["spec"], device="cpu")
    assert head_kind(loaded) == head and (loaded.b is not None) is has_bias
    assert loaded.meta["build"]["normalize"] is normalised
    if has_bias:  # trained, not left at its initial values
        start = scratch_start(ARCH, rs.open_dataset("folder", colours), device="cpu", seed=0)
        assert not torch.equal(start.b, loaded.b)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        embedding = loaded.encoder.visual(x)  # open_clip's image tower: attention pool -> 16-d
        h = loaded.encode(x)
        logits = loaded(x)
    norms = embedding.double().pow(2).sum(dim=1).sqrt()
    assert (norms - 1).abs().min() > 1e-2  # the raw embedding is not unit length by itself
    torch.testing.assert_close(h, embedding / norms[:, None].float() if normalised else embedding)
    expected = h @ loaded.W.T + (loaded.b if has_bias else 0)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)


def test_a_resume_with_another_head_is_refused(trained, colours, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained["linear"][0], out)
    before = (out / "checkpoint.pt").read_bytes()
    code, stdout, stderr = cli("train", ARCH, "--data", f"folder:{colours}", "--out", str(out), "--head",
                               "normalized-linear", *RUN)
    assert code == 2 and not stdout and "Traceback" not in stderr
    assert "recipe head: 'linear' in the checkpoint, 'normalized-linear' now" in stderr and "--restart" in stderr
    assert (out / "checkpoint.pt").read_bytes() == before
    assert yaml.safe_load((out / "recipe.yaml").read_text())["head"] == "linear"

    code, stdout, stderr = cli("train", ARCH, "--data", f"folder:{colours}", "--out", str(out), "--head",
                               "normalized-linear", "--restart", *RUN)
    assert code == 0, stderr
    assert yaml.safe_load((out / "recipe.yaml").read_text())["head"] == "normalized-linear"
    assert "head.bias" not in load_train_state(out / "checkpoint.pt").model

    # a checkpoint written before the head was a recipe key does not say which head it trained: refused too
    state = load_train_state(out / "checkpoint.pt")
    del state.recipe["head"]
    save_train_state(state, out / "checkpoint.pt")
    code, _, stderr = cli("train", ARCH, "--data", f"folder:{colours}", "--out", str(out), "--head",
                          "normalized-linear", *RUN)
    assert code == 2 and "recipe head: None in the checkpoint, 'normalized-linear' now" in stderr


def test_other_families_keep_their_own_linear_head(colours):
    dataset = rs.open_dataset("folder", colours)
    clf = scratch_start("timm:test_resnet", dataset, device="cpu", seed=0)
    assert head_kind(clf) == "linear" and clf.b is not None and clf.head.out_features == 3
    assert head_kind(tiny_classifier()) == "linear"


@pytest.mark.parametrize("args, message", [
    (["train", ARCH, "--head", "cosine"],
     "head: expected one of linear, normalized-linear, wiseft, or null; got 'cosine'"),
    (["train", "timm:test_resnet", "--head", "normalized-linear"],
     "head 'normalized-linear' is for OpenCLIP architectures"),
    (["train", ARCH, "--recipe", "finetune", "--schedule", "constant"],
     "head 'wiseft': expected one of linear, normalized-linear for a model trained from scratch"),
    (["finetune", "{weights}", "--templates", "{templates}", "--recipe", "{head_recipe}"],
     "the recipe's head is 'linear', but this classifier has 'normalized-linear' (a bias-free linear head on the "
     "L2-normalised embedding)"),
])
def test_a_bad_head_is_named(colours, tiny_rn, tmp_path, capsys, args, message):
    (tmp_path / "head.yaml").write_text("head: linear\n")
    fill = {"{weights}": f"{ARCH}@{tiny_rn / 'rs-tiny-rn.safetensors'}", "{templates}": str(tiny_rn / "templates.txt"),
            "{head_recipe}": str(tmp_path / "head.yaml")}
    code, stdout, stderr = run_cli(capsys, *[fill.get(a, a) for a in args], "--data", f"folder:{colours}",
                                   "--out", str(tmp_path / "out"), *RUN)
    assert code == 2 and message in stderr and "Traceback" not in stderr and not stdout
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_the_training_api_refuses_a_recipe_naming_another_head(colours, tmp_path):
    recipe = load_recipe("supervised", head="normalized-linear", epochs=1, batch_size=4, schedule="constant")
    with pytest.raises(rs.InputError, match=r"the recipe's head is 'normalized-linear', but this classifier has "
                                            r"'linear' \(a linear head with bias on the raw embedding\)"):
        train_classifier(tiny_classifier(), rs.open_dataset("folder", colours), recipe, tmp_path, workers=0)
    assert not list(tmp_path.iterdir())
