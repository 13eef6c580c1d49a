"""ImageNet-C corruptions from the published code: the ``imagecorruptions`` package, seeded.

``imagecorruptions==1.1.2`` (Apache-2.0) is the corruption code of ImageNet-C (Hendrycks & Dietterich, 2019),
packaged by Michaelis et al. (2019) to work on images of any size (ImageNet-C itself corrupted 224x224 centre crops).
It needs OpenCV: robustsig's ``demo`` extra installs ``opencv-python-headless``; the package's own metadata asks for
``opencv-python``, the desktop build, which needs system GUI libraries, so install it with
``pip install --no-deps imagecorruptions==1.1.2`` (its other dependencies, numpy, scipy, scikit-image and Pillow, are
robustsig's own).

Which corruptions run. Of its 19 corruptions, 15 run with numpy 2 and scikit-image >= 0.22 and give the same image
for the same seed: :data:`CORRUPTIONS`. :func:`corrupt` refuses the other four with the reason (:data:`UNAVAILABLE`).

Seeds. The corruptions draw from numpy's global random state. :func:`corrupt` seeds it (``np.random.seed(seed)``),
calls the package's own ``imagecorruptions.corrupt``, and puts back the state it found, under a lock so that two
threads do not interleave: the same image, corruption, severity and seed give the same pixels.

``import imagecorruptions`` needs ``pkg_resources``, which setuptools no longer ships (since version 81); when it is
missing, a stand-in with the one function the package calls (``resource_filename``, which finds the frost pictures
inside the package) is in ``sys.modules`` during the import only.

>>> from PIL import Image
>>> photo = Image.new("RGB", (64, 48), (200, 120, 40))
>>> corrupt(photo, "gaussian_noise", severity=3, seed=0).size
(64, 48)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import types
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image

from robustsig.errors import DataError, InputError

IMAGECORRUPTIONS_PIP = "--no-deps imagecorruptions==1.1.2"
"""How to install the package (without the desktop OpenCV its metadata names)."""
OPENCV_PIP = "opencv-python-headless"

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "defocus_blur", "motion_blur", "zoom_blur", "snow", "frost", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",  # 12 of ImageNet-C's 15
    "speckle_noise", "spatter", "saturate",  # 3 of its 4 held-out validation corruptions
)
"""The ImageNet-C corruptions that run here, deterministically given a seed (ImageNet-C's order)."""

UNAVAILABLE: dict[str, str] = {
    "impulse_noise": "its noise comes from skimage.util.random_noise, which draws from a new generator of its own "
                     "(numpy.random.default_rng) instead of numpy's seeded global state, so no seed reproduces it",
    "glass_blur": "it calls skimage.filters.gaussian(multichannel=True), an argument scikit-image has removed "
                  "(it is channel_axis now)",
    "gaussian_blur": "it calls skimage.filters.gaussian(multichannel=True), an argument scikit-image has removed "
                     "(it is channel_axis now)",
    "fog": "it uses np.float_, which numpy 2.0 removed",
}
"""The package's other corruptions, each with why it is refused."""

SEVERITIES = range(1, 6)
_SEED_LIMIT = 2**32  # what np.random.seed accepts
_LOCK = threading.Lock()


def corrupt(image: Image.Image, name: str, severity: int, seed: int) -> Image.Image:
    """``image`` under the ImageNet-C corruption ``name`` at ``severity``, the randomness drawn from ``seed``.

    Args:
        image: a PIL image, at least 32x32 (converted to RGB first).
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mildest) to 5.
        seed: 0 <= seed < 2**32; numpy's global random state is seeded with it for the call, then restored.

    Returns:
        the corrupted image, RGB, the size of ``image``.

    Raises:
        InputError: an unknown or unavailable corruption, a severity outside 1..5, a bad seed, a too small image.
        DataError: ``imagecorruptions`` or OpenCV is not installed.
    """
    if name not in CORRUPTIONS:
        why = f": {UNAVAILABLE[name]}" if name in UNAVAILABLE else ""
        raise InputError(f"ImageNet-C corruption {name!r} is not available here{why}; choose one of "
                         f"{', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise InputError(f"ImageNet-C severity must be an integer from 1 to 5, got {severity!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < _SEED_LIMIT:
        raise InputError(f"the corruption seed must be an integer in 0..2**32-1, got {seed!r}")
    if min(image.size) < 32:
        raise InputError(f"ImageNet-C corruptions need images of at least 32x32 pixels, got {image.size[0]}x"
                         f"{image.size[1]}")
    package = imagecorruptions_module()
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    with _LOCK:
        state = np.random.get_state()
        try:
            np.random.seed(int(seed))
            out = package.corrupt(pixels, severity=int(severity), corruption_name=name)
        finally:
            np.random.set_state(state)
    return Image.fromarray(np.ascontiguousarray(out[..., :3], dtype=np.uint8), "RGB")


def imagecorruptions_module() -> types.ModuleType:
    """The imported ``imagecorruptions`` package (a :class:`DataError` naming what to install when it cannot be)."""
    if "imagecorruptions" in sys.modules:
        return sys.modules["imagecorruptions"]
    if importlib.util.find_spec("imagecorruptions") is None:
        raise DataError(f"ImageNet-C corruptions come from the imagecorruptions package, which is not installed: "
                        f"pip install {IMAGECORRUPTIONS_PIP} {OPENCV_PIP}")
    if importlib.util.find_spec("cv2") is None:
        raise DataError(f"imagecorruptions needs OpenCV, which is not installed: pip install {OPENCV_PIP}")
    with _pkg_resources_stand_in(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.interpolation, pkg_resources
        import imagecorruptions
    return imagecorruptions


@contextlib.contextmanager
def _pkg_resources_stand_in() -> Iterator[None]:
    """A ``pkg_resources`` with ``resource_filename`` in ``sys.modules`` while it is not installed."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        yield
        return
    stand_in = types.ModuleType("pkg_resources")
    stand_in.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


def _resource_filename(module_name: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for a module's own files: ``resource`` beside the module's file."""
    return os.path.join(os.path.dirname(sys.modules[module_name].__file__), *resource.split("/"))
