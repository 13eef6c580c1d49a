"""`robustsig extract SPEC KIND:ROOT --out DIR`: the real dataset registry and model factory behind the command
(one test stands in a tiny model for the factory, to check the options without a large network)."""

from __future__ import annotations

import json

import pytest
import skimage.data
from PIL import Image
from typer.testing import CliRunner

import robustsig as rs
import robustsig.models.factory
from robustsig.cli import app

from extract_helpers import image_folder, tiny_classifier


@pytest.fixture
def tiny_model(monkeypatch):
    real = robustsig.models.factory.load_classifier

    def load_classifier(spec, **kwargs):
        return tiny_classifier() if spec == "test:tiny" else real(spec, **kwargs)

    monkeypatch.setattr(robustsig.models.factory, "load_classifier", load_classifier)


def test_extract_command_writes_a_store(tmp_path, tiny_model):
    image_folder(tmp_path / "images", 7, corrupt=(2,))
    out = tmp_path / "store"
    argv = ["extract", "test:tiny", f"folder:{tmp_path / 'images'}", "--out", str(out), "--layers", "conv1,conv2",
            "--batch-size", "3", "--workers", "0", "--topk", "2"]
    result = CliRunner().invoke(app, argv + ["--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rows"] == 6 and document["summary"]["skipped"] == 1
    assert document["skipped"][0]["path"].endswith("img0002.jpg")
    assert set(document["keys"]) >= {"h", "topk_values", "topk_indices", "conv1", "conv2"}
    store = rs.ActivationStore(out)
    assert store.manifest["key"]["logits_topk"] == 2 and store.layers == ["conv1", "conv2"]
    assert store.read("labels").tolist() == [0, 0, 1, 1, 3, 4]  # class folders in order; class2 held only the corrupt file
    table = CliRunner().invoke(app, argv)
    assert table.exit_code == 0 and "images/s" in table.stdout and str(out.resolve()) in table.stdout
    # a dataset option reaches the dataset: strict decoding turns the corrupt file into an error naming it
    strict = CliRunner().invoke(app, argv[:5] + ["--out", str(tmp_path / "strict"), "-O", "strict=true"])
    assert isinstance(strict.exception, rs.CorruptImageError) and "img0002.jpg" in str(strict.exception)


def test_extract_command_errors_name_the_input(tmp_path, tiny_model):
    image_folder(tmp_path / "x", 3)
    folder = f"folder:{tmp_path / 'x'}"
    for argv, message in [(["extract", "test:tiny", "photos", "--out", str(tmp_path / "s")], "is not KIND:ROOT"),
                          (["extract", "nope:x", folder, "--out", str(tmp_path / "s")], "nope"),
                          (["extract", "test:tiny", folder, "--out", str(tmp_path / "s"), "--dtype", "int8"],
                           "dtype must be one of"),
                          (["extract", "test:tiny", folder, "--out", str(tmp_path / "s"), "-O", "colour=red"],
                           "has no option 'colour'"),
                          (["extract", "test:tiny", folder, "--out", str(tmp_path / "s"), "-O", "strict"],
                           "is not KEY=VALUE")]:
        result = CliRunner().invoke(app, argv)
        assert isinstance(result.exception, rs.InputError) and message in str(result.exception), result.output


def test_real_mobilenet_through_folder_store_and_logits(tmp_path):
    """The path users take: a folder of photos -> `robustsig extract bundled:mobilenet_v2` -> stored logits."""
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "coffee.jpg")
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "chelsea.png")
    photos = tmp_path / "photos"
    for name, source in (("cup", "coffee.jpg"), ("cat", "chelsea.png")):
        (photos / name).mkdir(parents=True)
        (tmp_path / source).rename(photos / name / source)
    result = CliRunner().invoke(app, ["extract", "bundled:mobilenet_v2", f"folder:{photos}", "--out",
                                      str(tmp_path / "store"), "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    store = rs.ActivationStore(tmp_path / "store")
    logits, labels = store.read("logits"), store.read("labels")
    assert store.read("h").shape == (2, 1280) and logits.shape == (2, 1000)
    by_class = dict(zip(labels.tolist(), logits.argmax(1).tolist()))  # folder labels: cat = 0, cup = 1
    assert by_class[1] == 967  # espresso
    assert 281 <= by_class[0] <= 285  # a domestic cat


def test_extract_command_says_what_changed(tmp_path, tiny_model, monkeypatch):
    import os

    import robustsig._contents

    monkeypatch.setattr(robustsig._contents, "RACY_NS", 0)  # files written just now count as settled
    from imagefiles import write_image

    root = tmp_path / "images"
    image_folder(root, 6)
    argv = ["extract", "test:tiny", f"folder:{root}", "--out", str(tmp_path / "store"), "--batch-size", "3",
            "--workers", "0"]
    assert CliRunner().invoke(app, argv + ["--json"]).exit_code == 0
    write_image(root / "class0" / "extra.png", seed=9)
    (root / "class1" / "img0001.png").unlink()
    result = CliRunner().invoke(app, argv + ["--json"])
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["check"]
    assert check["status"] == "update"
    assert {k: check["changes"][k] for k in ("added", "removed", "changed")} == {"added": 1, "removed": 1,
                                                                                 "changed": 0}
    assert check["changes"]["examples"] == {"added": ["class0/extra.png"], "removed": ["class1/img0001.png"]}
    for path in root.rglob("*.*"):
        os.utime(path)
    touched = CliRunner().invoke(app, argv)
    assert touched.exit_code == 0
    assert "reused the store: 6 image(s) read to check their bytes: only the stat data of 6 changed" in touched.stderr
    forced = json.loads(CliRunner().invoke(app, argv + ["--json", "--rehash"]).stdout)["check"]
    assert forced["status"] == "reused" and forced["files"]["hashed"] == 6
