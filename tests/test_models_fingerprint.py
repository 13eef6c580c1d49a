"""A classifier's pinned fingerprint: computed once, dropped by any change of its weights."""

from __future__ import annotations

import torch


def test_pinned_fingerprint_follows_every_change():
    from robustsig.models.classifier import Classifier

    clf = Classifier(torch.nn.Sequential(torch.nn.Linear(3, 4)), torch.nn.Linear(4, 2), preprocess=lambda im: im,
                     classnames=["a", "b"])
    first = clf.pin_fingerprint()
    assert clf.fingerprint() == first
    with torch.no_grad():
        clf.head.weight.mul_(2.0)  # in place: the version counter moves
    changed = clf.fingerprint()
    assert changed != first
    with torch.no_grad():
        clf.head.weight.div_(2.0)  # exact in binary floating point
    assert clf.fingerprint() == first  # the same values digest alike again
    clf.pin_fingerprint()
    clf.encoder[0].weight = torch.nn.Parameter(clf.encoder[0].weight.detach() * 2)  # replaced: a new storage
    assert clf.fingerprint() != first


def test_a_pool_models_identity_is_the_bytes_of_its_files_not_their_paths(tmp_path):
    """What the study ledger checks a store against without loading the model: a local checkpoint and class-name
    file are named by their bytes, so a moved or copied study folder keeps the identity and a changed byte does
    not."""
    import shutil

    from robustsig.study.config import ModelEntry
    from robustsig.study.subjects import model_identity

    def entry(root):
        return ModelEntry(name="ft", spec=f"timm:resnet18@{root / 'ft.safetensors'}", backbone="r18",
                          pretraining="x", kind="finetuned", classnames=root / "classes.txt")

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ft.safetensors").write_bytes(b"weights")
    (tmp_path / "a" / "classes.txt").write_text("cat\ndog\n")
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy2)
    before = model_identity(entry(tmp_path / "a"))
    assert model_identity(entry(tmp_path / "b")) == before and str(tmp_path) not in str(before)
    (tmp_path / "b" / "classes.txt").write_text("cat\ndoe\n")
    assert model_identity(entry(tmp_path / "b"))["files"] != before["files"]
    (tmp_path / "a" / "ft.safetensors").write_bytes(b"weightz")
    assert model_identity(entry(tmp_path / "a"))["spec"] != before["spec"]
