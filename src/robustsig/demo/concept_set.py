"""The demo's concept set: real labelled photos, each an image of its own, with semantic concepts taken from its true
label through a small fixed taxonomy (animal, mammal, bird, vehicle, plant, landscape...).

Why it is made this way. A concept probe asks whether one direction ranks the images that show a concept above
those that do not. If the positives of a concept are crops of one or two photos, or share a colour, a texture or a
sharpness that the negatives lack, any network separates them, a random one included, and the probe cannot tell a
trained network from an untrained one. So:

- **semantic positives**: a concept is a category of what the photo shows (its true label's hypernym), never a
  colour or a texture;
- **distinct photos**: one image per photo, so no direction can find a concept by recognising a photo; a concept
  is probed when at least :data:`robustsig.demo.config.MIN_POSITIVES` photos show it;
- **hard negatives**: the negatives are the other photos of the same sources, at the same resolution: a mammal's
  negatives include birds, insects and frogs, a vehicle's the other artifacts, a plant's the landscapes;
- **one resolution**: every photo is reduced to :data:`SIDE` x :data:`SIDE` pixels (the CIFAR photos' own size),
  from the largest centred square, so that sharpness says nothing about the source, hence nothing about a concept.

The photos: foolbox's 20 CIFAR-10 and 20 CIFAR-100 test photos and 20 ImageNet validation photos (labels from their
file names, :mod:`robustsig.demo.imagenet_val`), and two packaged photos that no demo model trains on (scikit-image's
astronaut, scikit-learn's flower). The finetunes' training photos are not in it. The taxonomy was written from the
labels alone, before any model was probed.

>>> [concept for concept, _ in CONCEPTS][:4]
['animal', 'mammal', 'bird', 'insect']
>>> IMAGENET[251]
('animal', 'mammal', 'dog')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from robustsig.demo.imagenet_val import (CIFAR10_CLASSES, CIFAR100_CLASSES, FOOLBOX_CREDIT, LabelledPhoto,
                                         cifar_photos, imagenet_val_photos)
from robustsig.demo.sources import PHOTOS, load_image
from robustsig.errors import DataError

SIDE = 32
"""Every concept image is this many pixels square (the CIFAR photos' size)."""

CONCEPTS: tuple[tuple[str, str], ...] = (
    ("animal", "object"), ("mammal", "object"), ("bird", "object"), ("insect", "object"), ("dog", "object"),
    ("cat", "object"), ("plant", "object"), ("flower", "object"), ("fruit", "object"), ("artifact", "object"),
    ("vehicle", "object"), ("wheeled vehicle", "object"), ("watercraft", "object"), ("aircraft", "object"),
    ("building", "object"), ("person", "object"), ("landscape", "scene"),
)
"""The concepts, each with its Broden category, in label-number order."""

_VEHICLE = ("artifact", "vehicle")
CIFAR10: dict[str, tuple[str, ...]] = {
    "airplane": (*_VEHICLE, "aircraft"), "automobile": (*_VEHICLE, "wheeled vehicle"), "bird": ("animal", "bird"),
    "cat": ("animal", "mammal", "cat"), "deer": ("animal", "mammal"), "dog": ("animal", "mammal", "dog"),
    "frog": ("animal",), "horse": ("animal", "mammal"), "ship": (*_VEHICLE, "watercraft"),
    "truck": (*_VEHICLE, "wheeled vehicle"),
}
"""CIFAR-10 class -> its concepts."""
CIFAR100: dict[str, tuple[str, ...]] = {
    "apple": ("plant", "fruit"), "butterfly": ("animal", "insect"), "camel": ("animal", "mammal"),
    "cloud": ("landscape",), "forest": ("landscape",), "lamp": ("artifact",), "lion": ("animal", "mammal"),
    "mountain": ("landscape",), "mushroom": (), "orange": ("plant", "fruit"), "rocket": _VEHICLE,
    "rose": ("plant", "flower"), "sea": ("landscape",), "seal": ("animal", "mammal"), "skunk": ("animal", "mammal"),
    "streetcar": (*_VEHICLE, "wheeled vehicle"), "tulip": ("plant", "flower"), "wolf": ("animal", "mammal"),
}
"""CIFAR-100 class -> its concepts, for the classes of foolbox's 20 photos (a mushroom is a fungus: no concept)."""
IMAGENET: dict[int, tuple[str, ...]] = {
    243: ("animal", "mammal", "dog"), 559: ("artifact",), 438: ("artifact",), 990: ("plant",),
    949: ("plant", "fruit"), 853: ("artifact", "building"), 609: (*_VEHICLE, "wheeled vehicle"),
    915: ("artifact", "building"), 455: ("artifact",), 541: ("artifact",), 630: ("artifact",), 741: ("artifact",),
    471: ("artifact",), 129: ("animal", "bird"), 99: ("animal", "bird"), 251: ("animal", "mammal", "dog"),
    22: ("animal", "bird"), 317: ("animal", "insect"), 305: ("animal", "insect"),
}
"""ImageNet-1k class -> its concepts, for the classes of foolbox's 20 photos (bull mastiff, folding chair, beaker,
horse chestnut seed, strawberry, thatched roof, jeep, yurt, bottle cap, drum, slip-on shoe, prayer rug, cannon,
spoonbill, goose, Dalmatian, bald eagle, leafhopper, dung beetle)."""
PACKAGED: dict[str, tuple[str, ...]] = {"astronaut": ("person",), "flower": ("plant", "flower")}
"""Packaged photos no demo model trains on -> their concepts."""


@dataclass(frozen=True)
class ConceptPhoto:
    """One photo of the concept set."""

    name: str
    source: str
    """where it comes from: ``cifar10``, ``cifar100``, ``imagenet`` (foolbox's photos) or ``packaged``."""
    label: str
    """its true label, in words."""
    concepts: tuple[str, ...]
    load: Callable[[], Image.Image]


def _lookup(table: dict, key: object, what: str) -> tuple[str, ...]:
    if key not in table:
        raise DataError(f"the demo's concept taxonomy has no entry for {what} {key!r}: the installed foolbox holds "
                        "other photos than foolbox 3.3.4's; reinstall it: pip install --no-deps foolbox==3.3.4")
    return table[key]


def _photo(photo: LabelledPhoto, source: str, label: str, concepts: tuple[str, ...]) -> ConceptPhoto:
    return ConceptPhoto(photo.name, source, label, concepts, photo.load)


def concept_photos() -> list[ConceptPhoto]:
    """Every photo of the concept set with its concepts (see the module notes).

    Raises:
        DataError: a package holding the photos is missing, or foolbox holds photos the taxonomy does not know.
    """
    from robustsig.data.classes import imagenet_classnames

    photos = []
    for photo in cifar_photos("cifar10"):
        name = CIFAR10_CLASSES[photo.label]
        photos.append(_photo(photo, "cifar10", name, _lookup(CIFAR10, name, "CIFAR-10 class")))
    for photo in cifar_photos("cifar100"):
        name = CIFAR100_CLASSES[photo.label]
        photos.append(_photo(photo, "cifar100", name, _lookup(CIFAR100, name, "CIFAR-100 class")))
    names = imagenet_classnames()
    for photo in imagenet_val_photos():
        photos.append(_photo(photo, "imagenet", names[photo.label],
                             _lookup(IMAGENET, photo.label, "ImageNet-1k class")))
    for name, concepts in PACKAGED.items():
        image = PHOTOS[name]
        photos.append(ConceptPhoto(name, "packaged", name, concepts, lambda image=image: load_image(image)))
    return photos


def concept_image(photo: Image.Image, side: int = SIDE) -> Image.Image:
    """The largest centred square of a photo, reduced to ``side`` x ``side`` pixels (box filter)."""
    width, height = photo.size
    edge = min(width, height)
    left, top = (width - edge) // 2, (height - edge) // 2
    return photo.crop((left, top, left + edge, top + edge)).resize((side, side), Image.Resampling.BOX)


CREDIT = (f"{FOOLBOX_CREDIT}; and its 20 CIFAR-10 and 20 CIFAR-100 test photos (labels in the file names); "
          "scikit-image's astronaut (NASA, public domain) and scikit-learn's flower (CC BY 2.0)")
