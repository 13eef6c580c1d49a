"""The demo's distribution shifts: image operations on real photos that stand in for the paper's natural shifts.

Each :class:`Shift` cuts its own views of the class photos (never the in-distribution images) and changes their
appearance with plain image processing. They are analogues made from the same few photos, not the ImageNet
shift sets, and nothing they give is comparable to a published ImageNet number.

========== ==================== ==========================================================================
shift      stands in for        what it does
========== ==================== ==========================================================================
sketch     ImageNet-Sketch      grayscale pencil drawing: colour dodge of the image by its blurred negative
cartoon    ImageNet-R           rendition: 8-16 flat colours, saturated, dark outlines between them
rephoto    ImageNet-V2          a worse re-take: exposure, white balance, low resolution, blur, noise, JPEG
viewpoint  ObjectNet            the object smaller, rotated (90/180/270 or 25-65 degrees) on a clutter background
occlusion  ImageNet-A           a close-up of part of the object with 2-3 patches of clutter over it
========== ==================== ==========================================================================

>>> import numpy as np
>>> from PIL import Image
>>> image = Image.new("RGB", (64, 48), (200, 40, 40))
>>> pencil_sketch(image, np.random.default_rng(0)).size
(64, 48)
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from robustsig.demo.crops import augmented_view, part_crop
from robustsig.demo.sources import Box

Clutter = Sequence[Image.Image]
"""Images with none of the classes' objects (textures, coins, textiles): backgrounds and occluders."""


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def pencil_sketch(image: Image.Image, rng: np.random.Generator, clutter: Clutter = ()) -> Image.Image:
    """A grayscale pencil drawing: the gray image divided by its blurred negative (colour dodge) keeps the edges
    as strokes on white paper; a gamma darkens the strokes. Returned as RGB with three equal channels."""
    gray = image.convert("L")
    blurred = np.asarray(ImageOps.invert(gray).filter(ImageFilter.GaussianBlur(rng.uniform(4.0, 8.0))), np.float64)
    dodge = np.clip(np.asarray(gray, np.float64) * 255.0 / np.maximum(255.0 - blurred, 1.0), 0.0, 255.0)
    strokes = 255.0 * (dodge / 255.0) ** rng.uniform(2.0, 3.0)
    return _to_image(strokes).convert("RGB")


def cartoon(image: Image.Image, rng: np.random.Generator, clutter: Clutter = ()) -> Image.Image:
    """A rendition: at half size, median-smoothed, quantized to 8-16 flat colours (no dithering) and saturated;
    back to full size, with dark outlines where the flat colours change."""
    half = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BOX)
    regions = half.filter(ImageFilter.MedianFilter(5)).quantize(int(rng.integers(8, 17)),
                                                                method=Image.Quantize.MEDIANCUT,
                                                                dither=Image.Dither.NONE)
    flat = ImageEnhance.Color(regions.convert("RGB")).enhance(1.3).resize(image.size, Image.Resampling.BICUBIC)
    edges = np.asarray(flat.convert("L").filter(ImageFilter.GaussianBlur(1)).filter(ImageFilter.FIND_EDGES),
                       np.float64)
    lines = Image.fromarray(((edges > 12) * 255).astype(np.uint8))
    return Image.composite(Image.new("RGB", image.size, (25, 20, 20)), flat, lines)


def rephoto(image: Image.Image, rng: np.random.Generator, clutter: Clutter = ()) -> Image.Image:
    """A worse re-take of the scene: exposure (gamma 0.6-1.6), white balance (gains 0.8-1.2 per channel),
    contrast, a low-resolution sensor (0.3-0.5 of the size and back), blur, noise (sigma 4-10) and a JPEG
    re-compression at quality 15-35."""
    values = np.asarray(image, np.float64) / 255.0
    values = values ** math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    values = values * rng.uniform(0.8, 1.2, size=3)
    shot = ImageEnhance.Contrast(_to_image(values * 255.0)).enhance(rng.uniform(0.7, 1.3))
    width, height = image.size
    factor = rng.uniform(0.3, 0.5)
    shot = shot.resize((max(8, round(width * factor)), max(8, round(height * factor))), Image.Resampling.BILINEAR)
    shot = shot.resize(image.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2)))
    noisy = np.asarray(shot, np.float64) + rng.normal(0.0, rng.uniform(4.0, 10.0), size=(height, width, 3))
    buffer = io.BytesIO()
    _to_image(noisy).save(buffer, format="JPEG", quality=int(rng.integers(15, 36)))
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _clutter_patch(rng: np.random.Generator, clutter: Clutter, size: tuple[int, int]) -> Image.Image:
    source = clutter[int(rng.integers(len(clutter)))]
    width, height = source.size
    w, h = min(width, size[0] * 2), min(height, size[1] * 2)
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return source.crop((left, top, left + w, top + h)).resize(size, Image.Resampling.BICUBIC)


def viewpoint(image: Image.Image, rng: np.random.Generator, clutter: Clutter) -> Image.Image:
    """The object from an unusual viewpoint: scaled to 55-80%, rotated by 90, 180 or 270 degrees (or 25-65 either
    way), pasted at a random place on a crop of a clutter image."""
    canvas = _clutter_patch(rng, clutter, image.size)
    scale = rng.uniform(0.55, 0.8)
    view = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    if rng.random() < 0.6:
        degrees = float(rng.choice([90, 180, 270]))
    else:
        degrees = float(rng.uniform(25, 65) * rng.choice([-1, 1]))
    mask = Image.new("L", view.size, 255).rotate(degrees, expand=True)
    view = view.rotate(degrees, expand=True, resample=Image.Resampling.BICUBIC)
    fit = min(1.0, canvas.width / view.width, canvas.height / view.height)
    if fit < 1.0:
        size = (max(1, int(view.width * fit)), max(1, int(view.height * fit)))
        view, mask = view.resize(size, Image.Resampling.BICUBIC), mask.resize(size, Image.Resampling.BILINEAR)
    left = int(rng.integers(0, canvas.width - view.width + 1))
    top = int(rng.integers(0, canvas.height - view.height + 1))
    canvas.paste(view, (left, top), mask)
    return canvas


def occlusion(image: Image.Image, rng: np.random.Generator, clutter: Clutter) -> Image.Image:
    """Occluders: 2 or 3 rectangles of clutter, each 25-45% of the width and height, placed around the centre."""
    occluded = image.copy()
    width, height = image.size
    for _ in range(int(rng.integers(2, 4))):
        w = round(width * rng.uniform(0.25, 0.45))
        h = round(height * rng.uniform(0.25, 0.45))
        cx, cy = rng.normal(width / 2, width / 5), rng.normal(height / 2, height / 5)
        left = int(np.clip(cx - w / 2, 0, width - w))
        top = int(np.clip(cy - h / 2, 0, height - h))
        occluded.paste(_clutter_patch(rng, clutter, (w, h)), (left, top))
    return occluded


ViewMaker = Callable[[np.random.Generator, Image.Image, Box, int], Image.Image]


def whole_view(rng: np.random.Generator, photo: Image.Image, subject: Box, short: int) -> Image.Image:
    """The in-distribution augmentation (crop keeping 60% of the object, mirror, +-10 degrees)."""
    return augmented_view(rng, photo, subject, short=short)


def full_object_view(rng: np.random.Generator, photo: Image.Image, subject: Box, short: int) -> Image.Image:
    """A crop keeping at least 85% of the object (it is shrunk and rotated afterwards)."""
    return augmented_view(rng, photo, subject, short=short, keep=0.85, scale=(0.4, 1.0))


def close_up_view(rng: np.random.Generator, photo: Image.Image, subject: Box, short: int) -> Image.Image:
    """A close-up of a part of the object: a square-ish crop centred in its box, 30-60% of the box's area, mirrored
    at random and rotated by up to 10 degrees."""
    return augmented_view(rng, photo, subject, short=short, crop=part_crop(rng, photo.size, subject, (0.3, 0.6)))


@dataclass(frozen=True)
class Shift:
    """One shifted set: how its views are cut from the photos, and how their appearance is changed."""

    name: str
    like: str
    """the paper's natural shift it stands in for (an analogue only)."""
    view: ViewMaker
    apply: Callable[[Image.Image, np.random.Generator, Clutter], Image.Image]

    @property
    def does(self) -> str:
        """What the shift does, in words (its functions' first docstring lines)."""
        return f"{_summary(self.view)} Then: {_summary(self.apply)}"


def _summary(function: Callable) -> str:
    return " ".join((function.__doc__ or "").split("\n\n")[0].split())


SHIFTS: tuple[Shift, ...] = (
    Shift("sketch", "ImageNet-Sketch", whole_view, pencil_sketch),
    Shift("cartoon", "ImageNet-R", whole_view, cartoon),
    Shift("rephoto", "ImageNet-V2", whole_view, rephoto),
    Shift("viewpoint", "ObjectNet", full_object_view, viewpoint),
    Shift("occlusion", "ImageNet-A", close_up_view, occlusion),
)
"""The shifted sets, in the order they are listed in the study."""
