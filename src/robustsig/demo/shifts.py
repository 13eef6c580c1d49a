"""The demo's distribution shifts of its ImageNet photos: four families of ImageNet-C corruptions made by the published
code (:mod:`robustsig.demo.imagenet_c`), and two renditions made by plain image processing that stand in for
ImageNet-Sketch and ImageNet-R.

Each shifted set is cut from the same 20 ImageNet validation photos as the in-distribution set (as ImageNet-C is
made from ImageNet's validation set), from views with seeds of its own. The renditions are analogues, not those
sets, and nothing they give is comparable to a published ImageNet number.

========== ==================== ==========================================================================
shift      stands in for        what it does
========== ==================== ==========================================================================
sketch     ImageNet-Sketch      grayscale pencil drawing: colour dodge of the image by its blurred negative
cartoon    ImageNet-R           rendition: 8-16 flat colours, saturated, dark outlines between them
noise      ImageNet-C noise     gaussian, shot or speckle noise, severity 1-5
blur       ImageNet-C blur      defocus, motion or zoom blur, severity 1-5
weather    ImageNet-C weather   snow, frost, spatter or brightness, severity 1-5
digital    ImageNet-C digital   contrast, elastic transform, pixelate, JPEG or saturate, severity 1-5
========== ==================== ==========================================================================

>>> import numpy as np
>>> from PIL import Image
>>> image = Image.new("RGB", (64, 48), (200, 40, 40))
>>> pencil_sketch(image, np.random.default_rng(0)).size
(64, 48)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from robustsig.demo.imagenet_c import corrupt


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def pencil_sketch(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A grayscale pencil drawing: the gray image divided by its blurred negative (colour dodge) keeps the edges
    as strokes on white paper; a gamma darkens the strokes. Returned as RGB with three equal channels."""
    gray = image.convert("L")
    blurred = np.asarray(ImageOps.invert(gray).filter(ImageFilter.GaussianBlur(rng.uniform(4.0, 8.0))), np.float64)
    dodge = np.clip(np.asarray(gray, np.float64) * 255.0 / np.maximum(255.0 - blurred, 1.0), 0.0, 255.0)
    strokes = 255.0 * (dodge / 255.0) ** rng.uniform(2.0, 3.0)
    return _to_image(strokes).convert("RGB")


def cartoon(image: Image.Image, rng: np.random.Generator) -> Image.Image:
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


def imagenet_c_family(names: Sequence[str]) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    """An ImageNet-C family: each image gets one of the family's corruptions ``names`` at a severity from 1 to 5,
    both drawn from the image's generator, as does the corruption's own seed (:func:`robustsig.demo.imagenet_c.corrupt`,
    the published code)."""

    def apply(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        name = names[int(rng.integers(len(names)))]
        return corrupt(image, name, severity=int(rng.integers(1, 6)), seed=int(rng.integers(2**32)))

    apply.__doc__ = (f"An ImageNet-C corruption (imagecorruptions 1.1.2, the published code) drawn from "
                     f"{', '.join(names)}, at a severity drawn from 1 to 5.")
    return apply


@dataclass(frozen=True)
class Shift:
    """One shifted set: how the appearance of a view of a photo is changed."""

    name: str
    like: str
    """the shift set it stands in for (an analogue), or the ImageNet-C family it draws from."""
    apply: Callable[[Image.Image, np.random.Generator], Image.Image]
    published: bool = False
    """whether the images are made by published code (ImageNet-C's), not by robustsig's own analogue."""

    @property
    def does(self) -> str:
        """What the shift does, in words (its function's first docstring paragraph)."""
        return _summary(self.apply)


def _summary(function: Callable) -> str:
    return " ".join((function.__doc__ or "").split("\n\n")[0].split())


SHIFTS: tuple[Shift, ...] = (
    Shift("sketch", "ImageNet-Sketch (an analogue)", pencil_sketch),
    Shift("cartoon", "ImageNet-R (an analogue)", cartoon),
    Shift("noise", "ImageNet-C noise", imagenet_c_family(("gaussian_noise", "shot_noise", "speckle_noise")), True),
    Shift("blur", "ImageNet-C blur", imagenet_c_family(("defocus_blur", "motion_blur", "zoom_blur")), True),
    Shift("weather", "ImageNet-C weather", imagenet_c_family(("snow", "frost", "spatter", "brightness")), True),
    Shift("digital", "ImageNet-C digital", imagenet_c_family(("contrast", "elastic_transform", "pixelate",
                                                              "jpeg_compression", "saturate")), True),
)
"""The shifted sets, in the order they are listed in the study."""
