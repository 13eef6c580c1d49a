"""Recipe D.1's head is wise-ft's: the zero-shot head of a (tiny, random-init) OpenCLIP ViT plus a trainable bias
started at 0, checked on real ``robustsig finetune`` runs: the bias is trained, recorded (``recipe.yaml``, the
training checkpoint, the model file), loaded back with logits ``W h + b``, and mixed by Wise-FT from 0 (the zero-shot
head's bias in wise-ft); the bias-free head stays a named option (``--head normalized-linear``), and a finetune made
before the bias (recipe ``head: null``) still loads and mixes as it did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import robustsig as rs
from robustsig.train.start import finetune_start
from robustsig.train.state import load_train_state

from cli_helpers import run_cli
from train_helpers import TINY_CLIP, cli, register_clip, write_colour_folder

pytestmark = [pytest.mark.filterwarnings("ignore:.*randomly initialised", "ignore:.*Grad strides do not match"),
              pytest.mark.usefixtures("one_thread")]
RUN = ["--epochs", "1", "--batch-size", "6", "--lr", "1e-3", "--warmup-steps", "1", "--workers", "0",
       "--device", "cpu", "--json"]
HEADS = {"wiseft": [], "normalized-linear": ["--head", "normalized-linear"], "old": ["--recipe", "{old}"]}
"""D.1's default, the named bias-free option, and a run as robustsig's D.1 made them before (recipe head: null)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    """The training folder, the tiny CLIP's spec and its templates, and an old D.1 recipe file."""
    root = tmp_path_factory.mktemp("wiseft-head")
    weights = register_clip(root, "rs-tiny-vit-ft", TINY_CLIP, seed=3, templates="a photo of a {}.\na {} thing.\n")
    old = root / "old.yaml"
    old.write_text("head: null\n")  # what a D.1 recipe.yaml said before its head had a bias
    return {"colours": str(write_colour_folder(root / "colours")), "spec": f"openclip:rs-tiny-vit-ft@{weights}",
            "templates": str(root / "templates.txt"), "old": str(old)}


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """One ``robustsig finetune`` run per head: its folder and JSON summary."""
    done = {}
    for name, option in HEADS.items():
        out = tmp_path_factory.mktemp(name)
        code, stdout, stderr = cli("finetune", setup["spec"], "--data", f"folder:{setup['colours']}", "--out",
                                   str(out), "--templates", setup["templates"],
                                   *[setup["old"] if a == "{old}" else a for a in option], *RUN)
        assert code == 0, stderr
        done[name] = (out, json.loads(stdout))
    return done


@pytest.fixture(scope="module")
def zero_shot(setup) -> rs.Classifier:
    dataset = rs.open_dataset("folder", setup["colours"])
    return rs.load_classifier(setup["spec"], device="cpu", classnames=dataset.classnames,
                              templates=setup["templates"])


def _recorded_heads(out: Path, summary: dict) -> list:
    """The head the run's JSON summary, recipe.yaml, training checkpoint and model file record."""
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        model_meta = json.loads(f.metadata()["robustsig"])
    return [summary["recipe"]["head"], yaml.safe_load((out / "recipe.yaml").read_text())["head"],
            load_train_state(out / "checkpoint.pt").recipe["head"], model_meta["meta"]["training"]["recipe"]["head"]]


def _logits_from_parts(clf: rs.Classifier, x: torch.Tensor) -> torch.Tensor:
    """``W (e / ||e||) + b`` in float64, from the image tower's raw output ``e`` and the head's tensors."""
    with torch.no_grad():
        embedding = clf.encoder.visual(x).double()
    h = embedding / embedding.pow(2).sum(dim=1, keepdim=True).sqrt()
    return h @ clf.W.detach().double().T + (0 if clf.b is None else clf.b.detach().double())


def test_finetune_starts_from_the_zero_shot_head_plus_a_zero_bias(setup, zero_shot):
    dataset = rs.open_dataset("folder", setup["colours"])
    start = finetune_start(setup["spec"], dataset, device="cpu", templates=setup["templates"])
    assert torch.equal(start.b, torch.zeros(3)) and start.b.requires_grad and start.W.requires_grad
    assert torch.equal(start.W, zero_shot.W)
    own = {k: v for k, v in start.state_dict().items() if k != "head.bias"}
    assert own.keys() == zero_shot.state_dict().keys()
    assert all(torch.equal(v, zero_shot.state_dict()[k]) for k, v in own.items())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(start(x), zero_shot(x), rtol=0, atol=1e-6)  # a zero bias changes no logit
    bias_free = finetune_start(setup["spec"], dataset, device="cpu", templates=setup["templates"],
                               head="normalized-linear")
    assert bias_free.fingerprint() == zero_shot.fingerprint()  # the zero-shot model itself


def test_d1_trains_the_bias_records_it_and_loads_it_back(runs, zero_shot):
    out, summary = runs["wiseft"]
    assert _recorded_heads(out, summary) == ["wiseft"] * 4 and summary["recipe"]["name"] == "finetune"
    state = load_train_state(out / "checkpoint.pt").model
    assert state["head.bias"].shape == (3,) and state["head.bias"].abs().max() > 1e-4  # trained away from 0
    loaded = rs.load_classifier(summary["spec"], device="cpu")
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert not torch.equal(loaded.W, zero_shot.W)  # the zero-shot weights were trained too
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits = loaded(x)
    torch.testing.assert_close(logits.double(), _logits_from_parts(loaded, x), rtol=1e-5, atol=1e-5)


def test_the_bias_free_head_is_a_named_option_and_another_head_is_another_run(setup, runs, tmp_path):
    out, summary = runs["normalized-linear"]
    assert _recorded_heads(out, summary) == ["normalized-linear"] * 4
    assert "head.bias" not in load_train_state(out / "checkpoint.pt").model
    loaded = rs.load_classifier(summary["spec"], device="cpu")
    assert loaded.b is None and "head.bias" not in loaded.state_dict()
    old = load_train_state(runs["old"][0] / "checkpoint.pt").model  # the option trains what D.1 trained before
    assert all(torch.equal(v, old[k]) for k, v in load_train_state(out / "checkpoint.pt").model.items())

    for run, now, option in (("wiseft", "'normalized-linear'", ["--head", "normalized-linear"]),
                             ("old", "'wiseft'", [])):  # an old run resumed with today's default is another run
        copy = tmp_path / run
        shutil.copytree(runs[run][0], copy)
        before = (copy / "checkpoint.pt").read_bytes()
        code, stdout, stderr = cli("finetune", setup["spec"], "--data", f"folder:{setup['colours']}", "--out",
                                   str(copy), "--templates", setup["templates"], *option, *RUN)
        was = repr(runs[run][1]["recipe"]["head"])
        assert code == 2 and not stdout and "Traceback" not in stderr
        assert f"recipe head: {was} in the checkpoint, {now} now" in stderr and "--restart" in stderr
        assert (copy / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["timm:test_convnext", "--head", "normalized-linear"],
     "head 'normalized-linear' is the bias-free zero-shot head of OpenCLIP models"),
    (["{spec}", "--head", "cosine"], "head: expected one of linear, normalized-linear, wiseft, or null; got 'cosine'"),
])
def test_a_head_a_finetune_cannot_train_is_named(setup, tmp_path, capsys, args, message):
    code, stdout, stderr = run_cli(capsys, "finetune", *[setup["spec"] if a == "{spec}" else a for a in args],
                                   "--data", f"folder:{setup['colours']}", "--out", str(tmp_path / "out"), *RUN)
    assert code == 2 and message in stderr and "Traceback" not in stderr and not stdout
    assert not (tmp_path / "out").exists()


def test_an_old_bias_free_finetune_still_loads_and_mixes_as_before(setup, runs, zero_shot, tmp_path):
    out, summary = runs["old"]
    assert _recorded_heads(out, summary) == [None] * 4
    copy = tmp_path / "old"
    shutil.copytree(out, copy)  # resumed with its own recipe.yaml: the same run, nothing left to train
    code, stdout, stderr = cli("finetune", setup["spec"], "--data", f"folder:{setup['colours']}", "--out", str(copy),
                               "--templates", setup["templates"], "--recipe", str(out / "recipe.yaml"), *RUN)
    assert code == 0, stderr
    assert json.loads(stdout)["resumed_from_step"] == summary["steps"] == 4
    state = load_train_state(out / "checkpoint.pt").model
    assert "head.bias" not in state
    old = rs.load_classifier(summary["spec"], device="cpu")
    assert old.b is None and all(torch.equal(old.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(old(x).double(), _logits_from_parts(old, x), rtol=1e-5, atol=1e-5)
    mixed = rs.interpolate(zero_shot, old, 0.5)
    assert mixed.b is None and mixed.state_dict().keys() == state.keys()
    theta0 = zero_shot.state_dict()
    for key, value in mixed.state_dict().items():
        torch.testing.assert_close(value, 0.5 * theta0[key] + 0.5 * state[key], rtol=1e-6, atol=1e-7)


def test_wiseft_mixes_the_bias_from_zero_and_reproduces_both_ends(setup, runs, zero_shot, tmp_path, capsys):
    finetuned_spec = runs["wiseft"][1]["spec"]
    finetuned = rs.load_classifier(finetuned_spec, device="cpu")
    theta0, theta1 = zero_shot.state_dict(), finetuned.state_dict()
    code, stdout, stderr = run_cli(capsys, "wiseft", setup["spec"], finetuned_spec, "--alphas", "0,0.5,1",
                                   "--templates", setup["templates"], "--out", str(tmp_path / "wiseft"), "--json")
    assert code == 0, stderr
    models = json.loads(stdout)["models"]
    assert [m["alpha"] for m in models] == [0.0, 0.5, 1.0]
    x = torch.randn(4, 3, 32, 32)
    for entry in models:
        alpha = entry["alpha"]
        with safe_open(entry["path"], framework="pt") as f:
            assert ("head.bias" in f.keys()) is (alpha != 0.0)  # the zero-shot end has no bias, as the model
        mixed = rs.load_classifier(entry["spec"], device="cpu")
        assert mixed.fingerprint() == rs.interpolate(zero_shot, finetuned, alpha).fingerprint()
        if alpha == 0.0:
            assert mixed.b is None and mixed.fingerprint() == zero_shot.fingerprint()
        elif alpha == 1.0:
            assert mixed.fingerprint() == finetuned.fingerprint()
        else:  # wise-ft: (1 - alpha) * zeros + alpha * b
            expected = (1 - alpha) * torch.zeros(3, dtype=torch.float64) + alpha * theta1["head.bias"].double()
            torch.testing.assert_close(mixed.b.detach().double(), expected, rtol=0, atol=1e-7)
            for key, value in mixed.state_dict().items():
                if key != "head.bias":
                    torch.testing.assert_close(value, (1 - alpha) * theta0[key] + alpha * theta1[key], rtol=1e-6,
                                               atol=1e-7)
        with torch.no_grad():
            logits = mixed(x)
        torch.testing.assert_close(logits.double(), _logits_from_parts(mixed, x), rtol=1e-5, atol=1e-5)
