"""Safe checkpoint reading, robustsig classifier checkpoints, and loading plain state dicts into specs."""

from __future__ import annotations

import collections
import json
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import robustsig as rs
from robustsig.models.checkpoint import Checkpoint, load_into, read_checkpoint, restore_classifier, save_classifier


class Custom:
    def __init__(self):
        self.weight = torch.zeros(2)


def test_pickle_with_a_custom_class_is_refused(tmp_path):
    torch.save({"model": Custom()}, tmp_path / "custom.pt")
    with pytest.raises(rs.UnsafeCheckpointError, match=r"needs the Python object '.*Custom'.*state_dict"):
        read_checkpoint(tmp_path / "custom.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled model
    with pytest.raises(rs.UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        read_checkpoint(tmp_path / "module.pt")
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "ok.pt")
    with pytest.raises(rs.UnsafeCheckpointError):  # through the loader too, whatever the family
        rs.load_classifier(f"timm:resnet18@{tmp_path / 'custom.pt'}", device="cpu")


def test_torchscript_archive_is_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated; the files still exist in the wild
        traced = torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2))
    traced.save(str(tmp_path / "RN50.pt"))
    with pytest.raises(rs.UnsafeCheckpointError, match="TorchScript archive.*torch.jit.load"):
        read_checkpoint(tmp_path / "RN50.pt")


def test_unreadable_files_are_input_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(rs.InputError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(rs.InputError, match="cannot read safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(rs.InputError, match="is a folder"):
        read_checkpoint(tmp_path)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pt")
    with pytest.raises(rs.InputError, match=r"non-tensor entries \['epoch', 'lr'\]"):
        read_checkpoint(tmp_path / "no_tensors.pt")


def test_safetensors_and_weights_only_pickles_round_trip(tmp_path):
    state = collections.OrderedDict(w=torch.randn(3, 4), b=torch.arange(3), half=torch.randn(2).half())
    save_file(dict(state), str(tmp_path / "a.safetensors"))
    torch.save(state, tmp_path / "b.pt")
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "c.pth")
    save_file(dict(state), str(tmp_path / "d.bin"))  # safetensors under another suffix: sniffed by content
    for name in ("a.safetensors", "b.pt", "c.pth", "d.bin"):
        ckpt = read_checkpoint(tmp_path / name)
        assert not ckpt.is_classifier
        assert ckpt.state_dict.keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(ckpt.state_dict[key], value) and ckpt.state_dict[key].dtype == value.dtype


@pytest.fixture
def resnet18():
    with pytest.warns(UserWarning, match="randomly initialised"):
        return rs.load_classifier("timm:resnet18", device="cpu", classnames=None)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_classifier_loads_back_identically(resnet18, tmp_path, suffix):
    with torch.no_grad():
        resnet18.head.weight.mul_(-1.0)
    path = save_classifier(resnet18, tmp_path / f"sub/ft{suffix}")
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    ckpt = read_checkpoint(path)
    assert ckpt.is_classifier
    assert ckpt.meta["family"] == "timm" and ckpt.meta["arch"] == "resnet18" and ckpt.meta["spec"] == "timm:resnet18"
    assert ckpt.meta["fingerprint"] == resnet18.fingerprint() and len(ckpt.meta["classnames"]) == 1000
    json.dumps(ckpt.meta)  # plain JSON

    back = rs.load_classifier(f"timm:resnet18@{path}", device="cpu")
    assert back.fingerprint() == resnet18.fingerprint()
    assert back.classnames == resnet18.classnames and back.layers == resnet18.layers
    assert back.meta["random_init"] is False and back.meta["base_spec"] == "timm:resnet18"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(back(x), resnet18(x), rtol=0, atol=0)


def test_classifier_checkpoint_with_its_own_classes(tmp_path):
    with pytest.warns(UserWarning):
        clf = rs.load_classifier("timm:resnet18", device="cpu")
    small = rs.Classifier(clf.encoder, nn.Linear(512, 3), preprocess=clf.preprocess, classnames=["a", "b", "c"],
                          taps=clf.taps, meta=clf.meta)
    path = save_classifier(small, tmp_path / "three.safetensors")
    back = rs.load_classifier(f"timm:resnet18@{path}", device="cpu")
    assert back.classnames == ["a", "b", "c"] and back.W.shape == (3, 512)
    renamed = rs.load_classifier(f"timm:resnet18@{path}", device="cpu", classnames=["x", "y", "z"])
    assert renamed.classnames == ["x", "y", "z"] and renamed.fingerprint() == small.fingerprint()
    with pytest.raises(rs.InputError, match="templates only apply to zero-shot heads"):
        rs.load_classifier(f"timm:resnet18@{path}", device="cpu", templates=["a {}"])
    with pytest.raises(rs.InputError, match=r"robustsig checkpoint of timm:resnet18.*'timm:resnet18@"):
        rs.load_classifier(f"torchvision:resnet18@{path}", device="cpu")


def test_plain_state_dicts_load_into_specs(tmp_path):
    from torchvision import models

    torch.manual_seed(5)
    model = models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "r18.pt")
    clf = rs.load_classifier(f"torchvision:resnet18@{tmp_path / 'r18.pt'}", device="cpu")
    assert clf.W.shape == (10, 512) and clf.classnames == [f"class{i}" for i in range(10)]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), model(x), rtol=0, atol=0)
    # the wrong architecture: the error names the first mismatching key
    with pytest.raises(rs.InputError, match=r"missing from the file, first 'layer1\.2\.conv1\.weight'"):
        rs.load_classifier(f"torchvision:resnet34@{tmp_path / 'r18.pt'}", device="cpu")


def test_load_into_names_shape_mismatches():
    with pytest.raises(rs.InputError, match=r"first '0\.weight': file \(3, 2\) vs model \(4, 2\)"):
        load_into(nn.Sequential(nn.Linear(2, 4)), {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4)}, "x")


def test_save_classifier_needs_a_rebuildable_architecture(tmp_path):
    clf = rs.Classifier(nn.Flatten(), nn.Linear(12, 2), preprocess=lambda im: im, classnames=["a", "b"])
    with pytest.raises(rs.InputError, match="rebuildable architecture"):
        save_classifier(clf, tmp_path / "x.safetensors")
    with pytest.raises(rs.InputError, match=".safetensors or .pt"):
        save_classifier(clf, tmp_path / "x.npz")


def test_a_head_bias_in_the_file_is_given_to_an_architecture_built_without_one():
    """A finetune with wise-ft's bias (or a Wise-FT mix with one) of a head its architecture builds bias-free loads
    with the bias, logits ``W h + b``; a file without a bias loads bias-free as before."""
    def bias_free() -> rs.Classifier:
        return rs.Classifier(nn.Flatten(), nn.Linear(12, 2, bias=False), preprocess=lambda im: im,
                             classnames=["a", "b"])

    weight, bias = torch.randn(2, 12), torch.tensor([0.5, -2.0])
    back = restore_classifier(bias_free(), Checkpoint("ft.safetensors", {"head.weight": weight, "head.bias": bias}))
    assert torch.equal(back.W, weight) and torch.equal(back.b, bias) and back.b.requires_grad
    x = torch.randn(3, 3, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(back(x), x.flatten(1) @ weight.T + bias, rtol=0, atol=0)
    old = restore_classifier(bias_free(), Checkpoint("old.safetensors", {"head.weight": weight}))
    assert old.b is None and "head.bias" not in old.state_dict() and torch.equal(old.W, weight)
