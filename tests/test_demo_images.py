"""The demo's image operations: colour naming of known colours, Broden colour label maps, crops that keep their
object, and the shifts (size and mode kept, deterministic per seed, actually changing the image)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robustsig.demo import sources
from robustsig.demo.concepts import COLOR_NAMES, MIN_COLOR_FRACTION, color_label_map, encode_labels, name_colors
from robustsig.demo.crops import (augmented_view, concept_crop, objects_in_view, part_crop, rotate_inscribed,
                                  sample_crop, visible_fraction)
from robustsig.demo.shifts import SHIFTS, cartoon, occlusion, pencil_sketch, rephoto, viewpoint

KNOWN = {  # RGB -> the Broden colour a person calls it
    (0, 0, 0): "black", (30, 30, 30): "black", (255, 255, 255): "white", (235, 240, 245): "white",
    (128, 128, 128): "grey", (200, 200, 200): "grey", (60, 60, 60): "grey",
    (220, 20, 20): "red", (128, 0, 0): "red", (255, 140, 0): "orange", (240, 160, 110): "orange",
    (255, 230, 0): "yellow", (30, 160, 30): "green", (0, 100, 0): "green", (20, 40, 200): "blue",
    (0, 0, 128): "blue", (0, 200, 255): "blue", (120, 30, 160): "purple", (80, 0, 80): "purple",
    (255, 160, 200): "pink", (255, 0, 255): "pink", (120, 70, 30): "brown", (180, 140, 100): "brown",
    (170, 110, 50): "brown",
}


def test_color_names_of_known_colours():
    pixels = np.array([list(KNOWN)], dtype=np.uint8)
    named = [COLOR_NAMES[i] for i in name_colors(pixels)[0]]
    assert named == list(KNOWN.values())
    assert name_colors(np.zeros((4, 5, 3), np.uint8)).shape == (4, 5)


def test_color_label_map_keeps_colours_that_cover_enough():
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :100] = (220, 20, 20)  # red half
    pixels[:, 100:] = (20, 40, 200)  # blue half
    pixels[:2, :2] = (255, 230, 0)  # a 4-pixel yellow speck: 1 label pixel of 5,000 (under 2%)
    numbers = [10 + k for k in range(len(COLOR_NAMES))]  # label numbers of black, blue, ... in order
    labels = color_label_map(Image.fromarray(pixels), numbers)
    assert labels.shape == (50, 100)  # half size, as broden1_224's label maps
    red, blue = numbers[COLOR_NAMES.index("red")], numbers[COLOR_NAMES.index("blue")]
    assert set(np.unique(labels).tolist()) == {0, red, blue}
    assert (labels[:, :50] == red).sum() == 50 * 50 - 1 and labels[0, 0] == 0 and (labels[:, 50:] == blue).all()
    assert MIN_COLOR_FRACTION * labels.size > 1
    encoded = np.asarray(encode_labels(np.array([[0, 300, 5]])), np.int64)
    assert (encoded[..., 0] + 256 * encoded[..., 1]).tolist() == [[0, 300, 5]] and not encoded[..., 2].any()


def test_crops_keep_their_object():
    rng = np.random.default_rng(3)
    box = sources.PHOTOS["rocket"].objects["rocket"][0]  # a thin box: 55 x 285 in a 640 x 427 photo
    for _ in range(50):
        crop = sample_crop(rng, (640, 427), box, keep=0.6)
        assert visible_fraction(crop, box) >= 0.6
        assert 0.75 <= (crop[2] - crop[0]) / (crop[3] - crop[1]) <= 1.3
        part = part_crop(rng, (640, 427), box, (0.3, 0.6))
        assert 0 <= part[0] < part[2] <= 640 and 0 <= part[1] < part[3] <= 427
        assert visible_fraction(box, part) > 0  # centred inside the object's box
    objects = {"a": ((0, 0, 100, 100),), "b": ((150, 0, 250, 100),)}
    assert objects_in_view((0, 0, 120, 100), objects) == {"a"}
    assert objects_in_view((0, 0, 160, 100), objects) is None  # a sliver of b: ambiguous
    assert objects_in_view((0, 0, 260, 100), objects) == {"a", "b"}
    for _ in range(20):
        crop, shown = concept_crop(rng, (260, 100), objects, (0.1, 0.6))
        assert objects_in_view(crop, objects) == shown


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


@pytest.fixture(scope="module")
def clutter():
    return [sources.load_image(texture) for texture in sources.TEXTURES.values()]


@pytest.mark.parametrize("operation", [pencil_sketch, cartoon, rephoto, viewpoint, occlusion])
def test_shift_operations_keep_size_and_change_the_image(operation, photo, clutter):
    image = photo.crop((100, 0, 500, 330)).resize((160, 132))
    shifted = operation(image, np.random.default_rng(7), clutter)
    assert shifted.mode == "RGB" and shifted.size == image.size
    difference = np.abs(np.asarray(shifted, np.int64) - np.asarray(image, np.int64)).mean()
    assert difference > 10  # mean absolute change per channel, out of 255
    again = operation(image, np.random.default_rng(7), clutter)
    assert np.array_equal(np.asarray(again), np.asarray(shifted))
    other = operation(image, np.random.default_rng(8), clutter)
    assert not np.array_equal(np.asarray(other), np.asarray(shifted))


def test_sketch_is_gray_and_mostly_paper(photo):
    sketch = np.asarray(pencil_sketch(photo, np.random.default_rng(0)), np.int64)
    assert (sketch[..., 0] == sketch[..., 1]).all() and (sketch[..., 1] == sketch[..., 2]).all()
    assert np.median(sketch) > 200  # white paper with dark strokes


def test_every_shift_is_described():
    assert [s.name for s in SHIFTS] == ["sketch", "cartoon", "rephoto", "viewpoint", "occlusion"]
    assert [s.like for s in SHIFTS] == ["ImageNet-Sketch", "ImageNet-R", "ImageNet-V2", "ObjectNet", "ImageNet-A"]
    for shift in SHIFTS:
        assert "Then: " in shift.does and len(shift.does) > 80
