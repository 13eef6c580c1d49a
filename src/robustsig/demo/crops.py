"""Where to cut: random crops that keep an object in view (the data augmentation that multiplies a few photos into
many views), and small rotations.

Every function draws from the ``numpy.random.Generator`` it is given, so a seeded generator gives the same crops.

>>> import numpy as np
>>> crop = sample_crop(np.random.default_rng(0), (600, 400), (170, 15, 420, 300), keep=0.6)
>>> visible_fraction(crop, (170, 15, 420, 300)) >= 0.6
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from robustsig.demo.sources import Box

TRIES = 200
"""Crops drawn before giving up on the constraint (then the whole image, or the object's box, is used)."""


def area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def intersection(a: Sequence[float], b: Sequence[float]) -> float:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def visible_fraction(crop: Sequence[float], box: Sequence[float]) -> float:
    """The fraction of ``box`` inside ``crop``."""
    return intersection(crop, box) / area(box)


def random_box(rng: np.random.Generator, size: tuple[int, int], scale: tuple[float, float],
               ratio: tuple[float, float]) -> Box:
    """A crop covering a ``scale`` fraction of the image's area with width/height in ``ratio`` (log-uniform),
    placed uniformly (torchvision's RandomResizedCrop draw; a crop larger than the image shrinks, its aspect kept)."""
    width, height = size
    target = width * height * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    shrink = min(1.0, width / math.sqrt(target * aspect), height / math.sqrt(target / aspect))
    w = min(width, max(8, round(math.sqrt(target * aspect) * shrink)))
    h = min(height, max(8, round(math.sqrt(target / aspect) * shrink)))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return left, top, left + w, top + h


def sample_crop(rng: np.random.Generator, size: tuple[int, int], subject: Box | None = None, *, keep: float = 0.6,
                scale: tuple[float, float] = (0.3, 1.0), ratio: tuple[float, float] = (0.8, 1.25)) -> Box:
    """A random crop that keeps at least ``keep`` of the ``subject`` box in view (any crop when it is None)."""
    for _ in range(TRIES):
        crop = random_box(rng, size, scale, ratio)
        if subject is None or visible_fraction(crop, subject) >= keep:
            return crop
    return (0, 0, *size)


def inscribed_scale(size: tuple[int, int], degrees: float) -> float:
    """The largest centred rectangle of the same aspect with no empty corner after a rotation by ``degrees``,
    as a fraction of the image's sides."""
    width, height = size
    theta = math.radians(abs(degrees))
    return 1.0 / (math.cos(theta) + max(width / height, height / width) * math.sin(theta))


def rotate_inscribed(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate by ``degrees`` and keep the largest centred rectangle of the same aspect with no empty corner."""
    if degrees == 0:
        return image
    k = inscribed_scale(image.size, degrees)
    w, h = image.width * k, image.height * k
    left, top = (image.width - w) / 2, (image.height - h) / 2
    rotated = image.rotate(degrees, resample=Image.Resampling.BICUBIC)
    return rotated.crop((round(left), round(top), round(left + w), round(top + h)))


def resize_short(image: Image.Image, short: int) -> Image.Image:
    """Resize so that the shorter side is ``short`` pixels (aspect kept)."""
    width, height = image.size
    factor = short / min(width, height)
    return image.resize((max(short, round(width * factor)), max(short, round(height * factor))),
                        Image.Resampling.BICUBIC, reducing_gap=3.0)


def augmented_view(rng: np.random.Generator, image: Image.Image, subject: Box, *, short: int, keep: float = 0.6,
                   scale: tuple[float, float] = (0.3, 1.0), max_degrees: float = 10.0,
                   crop: Box | None = None) -> Image.Image:
    """One augmented view of a photo: a random crop keeping ``keep`` of the subject (or the ``crop`` given), a
    coin-flip mirror, a rotation by up to ``max_degrees``, resized to ``short`` pixels on its shorter side.

    The view is resized before it is rotated (to the size the rotation's inscribed crop brings back to ``short``),
    so the rotation never works on more pixels than needed."""
    view = image.crop(crop if crop is not None else sample_crop(rng, image.size, subject, keep=keep, scale=scale))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    degrees = float(rng.uniform(-max_degrees, max_degrees))
    view = resize_short(view, math.ceil(short / inscribed_scale(view.size, degrees)))
    return resize_short(rotate_inscribed(view, degrees), short)
