"""The demo's image operations: crops that keep their object, rotations with no empty corner, the concept images
(one square per photo at 32 px) and the shifts (size and mode kept, deterministic per seed, actually changing the
image; an ImageNet-C family draws one of its corruptions by the published code)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robustsig.demo import sources
from robustsig.demo.build import photo_view
from robustsig.demo.concept_set import concept_image
from robustsig.demo.crops import augmented_view, rotate_inscribed, sample_crop, visible_fraction
from robustsig.demo.imagenet_c import corrupt
from robustsig.demo.shifts import SHIFTS, cartoon, imagenet_c_family, pencil_sketch


def test_crops_keep_their_object():
    rng = np.random.default_rng(3)
    box = sources.PHOTOS["rocket"].objects["rocket"][0]  # a thin box: 55 x 285 in a 640 x 427 photo
    for _ in range(50):
        crop = sample_crop(rng, (640, 427), box, keep=0.6)
        assert visible_fraction(crop, box) >= 0.6
        assert 0.75 <= (crop[2] - crop[0]) / (crop[3] - crop[1]) <= 1.3
    photo = Image.new("RGB", (200, 100), (90, 90, 90))
    whole = photo_view(rng, photo, 64, whole=True)
    assert whole.size == (128, 64)  # the whole photo, its shorter side resized
    views = [photo_view(rng, photo, 64, whole=False) for _ in range(20)]
    assert all(min(view.size) == 64 and max(view.size) <= 64 * 4 / 3 + 1 for view in views)


def test_a_concept_image_is_the_centred_square_reduced():
    pixels = np.zeros((60, 100, 3), np.uint8)
    pixels[:, 20:80] = (200, 10, 10)  # the centred 60 x 60 square is red, the side bands black
    square = np.asarray(concept_image(Image.fromarray(pixels), side=12), np.int64)
    assert square.shape == (12, 12, 3) and (square == [200, 10, 10]).all()


def test_rotation_leaves_no_empty_corner():
    image = Image.new("RGB", (120, 90), (200, 100, 50))
    for degrees in (-10.0, 4.0, 10.0):
        rotated = np.asarray(rotate_inscribed(image, degrees), np.int64)
        assert (np.abs(rotated - [200, 100, 50]).max(axis=-1) < 40).all()  # no black (fill) pixel anywhere
        assert abs(rotated.shape[1] / rotated.shape[0] - 120 / 90) < 0.05
    view = augmented_view(np.random.default_rng(0), image, (10, 10, 100, 80), short=64)
    assert min(view.size) == 64


@pytest.fixture(scope="module")
def photo():
    return sources.load_image(sources.PHOTOS["coffee"])


@pytest.mark.parametrize("operation", [pencil_sketch, cartoon, imagenet_c_family(("gaussian_noise", "zoom_blur")),
                                       imagenet_c_family(("contrast",))])
def test_shift_operations_keep_size_and_change_the_image(operation, photo):
    image = photo.crop((100, 0, 500, 330)).resize((160, 132))
    shifted = operation(image, np.random.default_rng(7))
    assert shifted.mode == "RGB" and shifted.size == image.size
    difference = np.abs(np.asarray(shifted, np.int64) - np.asarray(image, np.int64)).mean()
    assert difference > 1  # mean absolute change per channel, out of 255
    again = operation(image, np.random.default_rng(7))
    assert np.array_equal(np.asarray(again), np.asarray(shifted))
    others = [operation(image, np.random.default_rng(seed)) for seed in (8, 9)]
    assert any(not np.array_equal(np.asarray(other), np.asarray(shifted)) for other in others)


def test_an_imagenet_c_family_is_the_published_corruption_drawn_from_the_generator(photo):
    image = photo.resize((96, 64))
    rng = np.random.default_rng(5)
    name_index, severity, seed = int(rng.integers(2)), int(rng.integers(1, 6)), int(rng.integers(2**32))
    names = ("snow", "frost")
    expected = corrupt(image, names[name_index], severity=severity, seed=seed)
    drawn = imagenet_c_family(names)(image, np.random.default_rng(5))
    assert np.array_equal(np.asarray(drawn), np.asarray(expected))


def test_sketch_is_gray_and_mostly_paper(photo):
    sketch = np.asarray(pencil_sketch(photo, np.random.default_rng(0)), np.int64)
    assert (sketch[..., 0] == sketch[..., 1]).all() and (sketch[..., 1] == sketch[..., 2]).all()
    assert np.median(sketch) > 200  # white paper with dark strokes


def test_every_shift_is_described():
    assert [s.name for s in SHIFTS] == ["sketch", "cartoon", "noise", "blur", "weather", "digital"]
    assert [s.published for s in SHIFTS] == [False, False, True, True, True, True]
    assert SHIFTS[4].does.startswith("An ImageNet-C corruption (imagecorruptions 1.1.2, the published code) drawn "
                                     "from snow, frost, spatter, brightness")
    for shift in SHIFTS:
        assert len(shift.does) > 60


@pytest.mark.parametrize("module", ["robustsig.demo.config", "robustsig.demo.concept_set", "robustsig.demo.concepts",
                                    "robustsig.demo.crops", "robustsig.demo.shifts",
                                    "robustsig.study.analyses.predict_er.tables"])
def test_module_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
