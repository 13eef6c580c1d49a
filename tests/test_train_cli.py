"""``robustsig finetune``, ``robustsig train`` and ``robustsig wiseft`` end to end on real architectures (timm test
models at 32 px, a tiny OpenCLIP config) and real image folders: JSON summaries, checkpoints that load back with
the matching spec and give the same logits as the trained state, the zero-shot initialisation, Wise-FT weights
``(1 - a) theta0 + a theta1``, and errors that name the bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig.models.classifier import state_fingerprint
from robustsig.train.start import finetune_start, scratch_start
from robustsig.train.state import load_train_state

from cli_helpers import run_cli
from train_helpers import TINY_CLIP, register_clip, write_colour_folder

pytestmark = [pytest.mark.filterwarnings("ignore:.*randomly initialised", "ignore:.*Grad strides do not match"),
              pytest.mark.usefixtures("one_thread")]
FAST = ["--epochs", "1", "--batch-size", "6", "--lr", "1e-3", "--warmup-steps", "1", "--workers", "0",
        "--device", "cpu"]


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTSIG_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """An OpenCLIP architecture ``rs-tiny-clip`` (registered with open_clip) and a weights file: its spec."""
    weights = register_clip(tmp_path_factory.mktemp("clip"), "rs-tiny-clip", TINY_CLIP, seed=11,
                            templates="a photo of a {}.\na {} thing.\n")
    return f"openclip:rs-tiny-clip@{weights}"


def _same_logits(spec: str, state: dict[str, torch.Tensor], size: int = 32) -> None:
    """The classifier ``spec`` loads has exactly ``state`` and computes the same logits as ``state`` loaded into
    the same architecture."""
    loaded = rs.load_classifier(spec, device="cpu")
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    other = rs.load_classifier(spec, device="cpu")
    torch.nn.init.normal_(other.head.weight)  # disturb, then restore from the training checkpoint's state
    other.load_state_dict(state)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), other(x), rtol=0, atol=0)


def test_finetune_writes_a_model_that_loads_with_its_spec(colours, tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, stderr = run_cli(capsys, "finetune", "timm:test_convnext", "--data", f"folder:{colours}", "--out",
                               str(out), "--new-head", "--image-size", "32", "--checkpoint-every", "2", "--json",
                               *FAST)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["spec"] == f"timm:test_convnext@{(out / 'model.safetensors').resolve()}"
    assert (summary["steps"], summary["steps_per_epoch"], summary["epochs"], summary["world_size"]) == (4, 4, 1, 1)
    assert summary["recipe"]["name"] == "finetune" and summary["recipe"]["image_size"] == 32
    assert summary["recipe"]["lr"] == 1e-3 and summary["recipe"]["weight_decay"] == 0.1  # D.1 defaults kept
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.safetensors", "recipe.yaml",
                                                     "train_log.csv"]
    assert rs.load_recipe("finetune", out / "recipe.yaml").to_dict() == summary["recipe"]
    state = load_train_state(out / "checkpoint.pt").model
    _same_logits(summary["spec"], state)
    loaded = rs.load_classifier(summary["spec"], device="cpu")
    assert loaded.classnames == ["blue", "green", "red"] and loaded.meta["random_init"] is False
    assert loaded.meta["base_spec"] == f"finetune(timm:test_convnext, folder:{colours})"


def test_train_from_scratch_with_batchnorm(colours, tmp_path, capsys):
    out = tmp_path / "sup"
    code, stdout, stderr = run_cli(capsys, "train", "timm:test_resnet", "--data", f"folder:{colours}", "--out", str(out),
                               "--image-size", "32", "--epochs", "2", "--lr-milestones", "1", "--batch-size", "6",
                               "--warmup-steps", "2", "--workers", "0", "--device", "cpu")
    assert code == 0, stderr
    assert "train: 8 steps over 2 epochs on 1 process(es); last epoch loss" in stdout
    spec = f"timm:test_resnet@{(out / 'model.safetensors').resolve()}"
    assert f"(load it with '{spec}')" in stdout
    state = load_train_state(out / "checkpoint.pt")
    assert state.recipe["label_smoothing"] == 0.1 and state.recipe["hflip"] is True  # D.2 defaults
    batchnorm = [k for k in state.model if k.endswith("num_batches_tracked")]
    assert batchnorm and all(state.model[k].item() == 8 for k in batchnorm)  # trained in train mode, 8 steps
    _same_logits(spec, state.model)
    assert len((out / "train_log.csv").read_text().splitlines()) == 3  # header + one row per epoch


def test_scratch_openclip_gets_a_fresh_head_and_loads_back(colours, tiny_clip, tmp_path, capsys):
    dataset = rs.open_dataset("folder", colours)
    arch = "openclip:rs-tiny-clip"
    clf = scratch_start(arch, dataset, device="cpu", seed=0)
    assert clf.classnames == ["blue", "green", "red"] and clf.head.bias is not None  # D.2's linear head
    bound = 1 / clf.head.in_features ** 0.5  # nn.Linear's default init, not 100 x unit text embeddings
    assert clf.W.abs().max() <= bound and clf.b.abs().max() <= bound
    assert torch.equal(scratch_start(arch, dataset, device="cpu", seed=0).W, clf.W)  # seeded
    out = tmp_path / "clip-sup"
    code, stdout, stderr = run_cli(capsys, "train", arch, "--data", f"folder:{colours}", "--out", str(out), "--schedule",
                               "constant", "--json", *FAST)
    assert code == 0, stderr
    spec = json.loads(stdout)["spec"]
    assert spec == f"{arch}@{(out / 'model.safetensors').resolve()}"
    _same_logits(spec, load_train_state(out / "checkpoint.pt").model)


def test_finetune_starts_from_the_zero_shot_head_and_wiseft_mixes_the_weights(colours, tiny_clip, tmp_path, capsys):
    templates = str(Path(tiny_clip.split("@")[1]).parent / "templates.txt")
    dataset = rs.open_dataset("folder", colours)
    start = finetune_start(tiny_clip, dataset, device="cpu", templates=templates)
    zero_shot = rs.load_classifier(tiny_clip, device="cpu", classnames=dataset.classnames, templates=templates)
    # wise-ft's initialisation: encoder + zero-shot head + a bias of zeros (tests/test_train_wiseft_head.py)
    assert start.fingerprint() == state_fingerprint({**zero_shot.state_dict(), "head.bias": torch.zeros(3)})

    out = tmp_path / "clip-ft"
    code, stdout, stderr = run_cli(capsys, "finetune", tiny_clip, "--data", f"folder:{colours}", "--out", str(out),
                               "--templates", templates, "--json", *FAST)
    assert code == 0, stderr
    finetuned_spec = json.loads(stdout)["spec"]
    finetuned = rs.load_classifier(finetuned_spec, device="cpu")
    assert finetuned.fingerprint() != zero_shot.fingerprint()

    code, stdout, stderr = run_cli(capsys, "wiseft", tiny_clip, finetuned_spec, "--alphas", "0:1:0.25", "--templates",
                               templates, "--out", str(tmp_path / "wiseft"), "--json")
    assert code == 0, stderr
    models = json.loads(stdout)["models"]
    assert [m["alpha"] for m in models] == [0.0, 0.25, 0.5, 0.75, 1.0]
    theta0 = {**zero_shot.state_dict(), "head.bias": torch.zeros(3)}  # the zero-shot head's bias is 0, as wise-ft's
    theta1 = finetuned.state_dict()
    for entry in models:
        alpha = entry["alpha"]
        assert Path(entry["path"]).name == f"alpha_{alpha!r}.safetensors"
        mixed = rs.load_classifier(entry["spec"], device="cpu")
        assert mixed.classnames == ["blue", "green", "red"]
        assert mixed.meta["base_spec"] == f"wiseft({tiny_clip}, {finetuned_spec}, alpha={alpha:g})"
        for key, value in mixed.state_dict().items():
            torch.testing.assert_close(value, (1 - alpha) * theta0[key] + alpha * theta1[key], rtol=1e-6, atol=1e-7)
        if alpha in (0.0, 1.0):
            assert mixed.fingerprint() == (zero_shot if alpha == 0 else finetuned).fingerprint()
    code, stdout, _ = run_cli(capsys, "wiseft", tiny_clip, finetuned_spec, "--alphas", "0.5", "--templates", templates,
                          "--out", str(tmp_path / "table"))
    assert code == 0 and "alpha" in stdout and "alpha_0.5.safetensors" in stdout


@pytest.mark.parametrize("args, message", [
    (["finetune", "timm:test_convnext", "--data", "colours"], "is not KIND:ROOT"),
    (["finetune", "timm:test_convnext", "--data", "folder:/no/such/folder"], "/no/such/folder"),
    (["finetune", "timm:test_convnext", "--data", "folder:{colours}"], "has a head of 1000 outputs but the training "
                                                                      "set has 3 classes; pass --new-head"),
    (["finetune", "timm:test_convnext", "--data", "folder:{colours}", "--batch-size", "0"],
     "batch_size: expected an integer >= 1"),
    (["finetune", "timm:test_convnext", "--data", "folder:{colours}", "--recipe", "/no/recipe.yaml"],
     "recipe file '/no/recipe.yaml' not found"),
    (["finetune", "timm:test_convnext", "--data", "folder:{colours}", "--templates", "t.txt"],
     "classnames and templates build zero-shot heads of OpenCLIP models"),
    (["train", "timm:test_convnext@/w/model.safetensors", "--data", "folder:{colours}"],
     "training from scratch starts from random weights"),
    (["train", "hf:some/model", "--data", "folder:{colours}"], "Hugging Face models do not load back"),
    (["train", "timm:test_convnext", "--data", "folder:{colours}", "--epochs", "3"],
     "lr_milestones: expected strictly increasing epochs between 1 and epochs - 1 = 2"),
    (["wiseft", "timm:a", "timm:b", "--alphas", "0:1:0.3"], "STOP 1 is not START plus a whole number of steps"),
])
def test_errors_exit_2_and_name_the_bad_input(colours, capsys, args, message):
    code, stdout, stderr = run_cli(capsys, *[a.replace("{colours}", str(colours)) for a in args])
    assert code == 2 and message in stderr and "Traceback" not in stderr and not stdout


@pytest.mark.parametrize("command, options", [
    ("finetune", ["--data", "--recipe", "--batch-size", "--precision", "--checkpoint-every", "--new-head", "--json",
                  "--head"]),
    ("train", ["--data", "--lr-milestones", "--label-smoothing", "--crop-scale", "--restart", "--json", "--head"]),
    ("wiseft", ["--alphas", "--out", "--json"]),
])
def test_help(capsys, monkeypatch, command, options):
    monkeypatch.setenv("COLUMNS", "250")  # option names are not cut
    code, stdout, _ = run_cli(capsys, command, "--help")
    assert code == 0 and all(option in stdout for option in options)
    if command == "train":
        assert "--new-head" not in stdout and "D.2" in stdout and "normalized-linear" in stdout
    if command == "finetune":  # D.1's head is wise-ft's, the bias-free zero-shot head an option
        assert "D.1" in stdout and "wiseft" in stdout and "normalized-linear" in stdout


def test_an_imagenet_root_holding_val_is_not_trained_on(tmp_path, capsys):
    for split in ("train", "val"):
        write_colour_folder(tmp_path / "imagenet" / split, per_class=1, classes=("red",))
        (tmp_path / "imagenet" / split / "red").rename(tmp_path / "imagenet" / split / "n01440764")
    code, _, stderr = run_cli(capsys, "finetune", "timm:test_convnext", "--data", f"imagenet:{tmp_path / 'imagenet'}",
                              "-O", "allow_missing_classes=true")  # one class of the 1,000
    assert code == 2 and f"opened the validation folder {tmp_path / 'imagenet' / 'val'}" in stderr
    assert f"imagenet:{tmp_path / 'imagenet' / 'train'}" in stderr
