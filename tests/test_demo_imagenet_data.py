"""Real ImageNet data from packages: foolbox's 20 validation photos with their labels (files only)."""

from __future__ import annotations

import doctest
import importlib.util
import sys

import pytest
from PIL import Image

from robustsig.demo import imagenet_val
from robustsig.demo.imagenet_val import imagenet_val_photos, load_imagenet_val_photos
from robustsig.errors import DataError


# --- foolbox's ImageNet validation photos ---------------------------------------------------------------------
def test_twenty_photos_with_the_labels_their_names_carry():
    photos = imagenet_val_photos()
    assert len(photos) == 20
    assert [p.path.name[:11] for p in photos] == [f"imagenet_{i:02d}" for i in range(20)]
    assert [p.label for p in photos] == [int(p.path.stem.split("_")[2]) for p in photos]
    assert all(0 <= p.label < 1000 for p in photos)
    assert [p.label for p in photos][:3] == [243, 559, 438]  # bull mastiff, folding chair, beer bottle
    loaded = load_imagenet_val_photos()
    assert [label for _, label in loaded] == [p.label for p in photos]
    assert all(image.mode == "RGB" and min(image.size) >= 224 for image, _ in loaded)
    assert "foolbox" not in sys.modules  # the files are read, the package never runs
    assert doctest.testmod(imagenet_val).failed == 0


def _fake_foolbox(tmp_path, monkeypatch, names):
    data = tmp_path / "foolbox" / "data"
    data.mkdir(parents=True)
    (tmp_path / "foolbox" / "__init__.py").write_text("raise RuntimeError('foolbox must not be imported')\n")
    for name in names:
        Image.new("RGB", (32, 32)).save(data / name)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_fake_foolbox_of_good_names_is_read_without_running_it(tmp_path, monkeypatch):
    _fake_foolbox(tmp_path, monkeypatch, [f"imagenet_{i:02d}_{i * 7}.jpg" for i in range(20)])
    assert [p.label for p in imagenet_val_photos()] == [i * 7 for i in range(20)]


@pytest.mark.parametrize("names, message", [
    ([f"imagenet_{i:02d}_1.jpg" for i in range(19)], "holds 19 ImageNet photos"),
    ([f"imagenet_{i:02d}_{1000 if i == 3 else 1}.jpg" for i in range(20)], "imagenet_03_1000.jpg: not named"),
    ([f"imagenet_{i:02d}_{'x' if i == 5 else 1}.jpg" for i in range(20)], "imagenet_05_x.jpg: not named"),
])
def test_a_damaged_foolbox_folder_is_refused(tmp_path, monkeypatch, names, message):
    _fake_foolbox(tmp_path, monkeypatch, names)
    with pytest.raises(DataError, match=message):
        imagenet_val_photos()


def test_missing_foolbox_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "foolbox" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps foolbox==3\.3\.4"):
        imagenet_val_photos()
