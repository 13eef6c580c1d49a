"""Training transforms built from a classifier's own preprocessing: same normalisation and crop size, plus the
recipe's random augmentation.

The eval ``preprocess`` of every family (torchvision's ``ImageClassification``, timm's and open_clip's
``Compose([Resize, CenterCrop, ..., ToTensor, Normalize])``) is read for its crop size, interpolation, mean and
std; the training transform is then ``RandomResizedCrop(size, scale=crop_scale)`` (+ ``RandomHorizontalFlip``) to
a uint8 tensor in the data-loading workers, normalised with the model's mean and std on the model's device. A recipe
without ``crop_scale`` trains on the eval preprocessing itself (with a flip in front when ``hflip`` is set).

Example:
    >>> from torchvision import transforms as T
    >>> eval_tf = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    >>> preprocess_settings(eval_tf).size, preprocess_settings(eval_tf).mean
    (32, (0.5, 0.5, 0.5))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from robustsig.errors import InputError
from robustsig.train.recipes import Recipe


@dataclass(frozen=True)
class PreprocessSettings:
    """What a classifier's eval preprocessing does: crop ``size``, resize ``interpolation``, ``mean``/``std``."""

    size: int
    interpolation: InterpolationMode
    mean: tuple[float, ...]
    std: tuple[float, ...]


def preprocess_settings(preprocess: Callable[[Any], Any]) -> PreprocessSettings:
    """Read the crop size, interpolation and normalisation of an eval transform.

    Args:
        preprocess: a torchvision ``ImageClassification`` preset or a ``Compose`` holding a ``Normalize`` and a
            ``CenterCrop`` (or ``Resize`` to a square size).

    Raises:
        InputError: the transform has no ``Normalize`` or no crop size to read.
    """
    if all(hasattr(preprocess, name) for name in ("crop_size", "mean", "std", "interpolation")):
        return PreprocessSettings(_square(preprocess.crop_size, preprocess), preprocess.interpolation,
                                  _floats(preprocess.mean), _floats(preprocess.std))
    steps = list(getattr(preprocess, "transforms", []))
    normalize = next((t for t in steps if isinstance(t, T.Normalize)), None)
    crop = next((t for t in steps if isinstance(t, (T.CenterCrop, T.RandomResizedCrop))), None)
    resize = next((t for t in steps if isinstance(t, T.Resize)), None)
    square_resize = resize is not None and not isinstance(resize.size, int)
    if normalize is None or (crop is None and not square_resize):
        raise InputError(f"cannot read the crop size and normalisation of this classifier's preprocess "
                         f"({preprocess!r}); training builds its augmentation from them and needs a torchvision "
                         "Compose with a Normalize and a CenterCrop (or a square Resize)")
    size = _square(crop.size if crop is not None else resize.size, preprocess)
    interpolation = resize.interpolation if resize is not None else getattr(crop, "interpolation",
                                                                           InterpolationMode.BILINEAR)
    return PreprocessSettings(size, interpolation, _floats(normalize.mean), _floats(normalize.std))


@dataclass(frozen=True)
class TrainingTransform:
    """How a training image reaches the model, in two parts.

    Attributes:
        per_image: PIL image -> tensor, run in the data-loading workers (the random augmentation). It ends in a
            ``uint8`` tensor when ``mean``/``std`` are set: a quarter of the bytes of float32 to ship from the
            workers, and the normalisation runs on the model's device (:meth:`on_device`).
        mean, std: the classifier's normalisation, or ``None`` when ``per_image`` already normalises (training on
            the model's own eval preprocessing).
    """

    per_image: Callable[[Any], torch.Tensor]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def on_device(self, images: torch.Tensor) -> torch.Tensor:
        """Finish a batch where the model runs: ``(images / 255 - mean) / std`` (as ``ToTensor`` + ``Normalize``)."""
        if self.mean is None or self.std is None:
            return images
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def training_transform(preprocess: Callable[[Any], Any], recipe: Recipe) -> TrainingTransform:
    """The transform a recipe trains with, for a classifier whose eval transform is ``preprocess``.

    Returns:
        ``RandomResizedCrop`` (+ ``RandomHorizontalFlip``) to a uint8 tensor, normalised on the device with the
        classifier's statistics, when the recipe sets ``crop_scale``; otherwise ``preprocess`` itself (after a
        random flip when ``hflip`` is set).
    """
    if recipe.crop_scale is None:
        if recipe.image_size is not None:
            raise InputError("image_size needs crop_scale: without a random resized crop, training uses the "
                             "model's eval preprocessing at its own size")
        return TrainingTransform(T.Compose([T.RandomHorizontalFlip(), preprocess]) if recipe.hflip else preprocess)
    settings = preprocess_settings(preprocess)
    size = recipe.image_size or settings.size
    steps: list[Any] = [T.RandomResizedCrop(size, scale=recipe.crop_scale, interpolation=settings.interpolation)]
    if recipe.hflip:
        steps.append(T.RandomHorizontalFlip())
    steps.append(T.PILToTensor())
    return TrainingTransform(T.Compose(steps), settings.mean, settings.std)


def _square(size: int | Sequence[int], preprocess: Any) -> int:
    values = [size] if isinstance(size, int) else list(size)
    if len(values) == 1 or (len(values) == 2 and values[0] == values[1]):
        return int(values[0])
    raise InputError(f"the classifier's preprocess ({preprocess!r}) crops to {tuple(values)}, not a square; pass "
                     "image_size to train at a square size")


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
