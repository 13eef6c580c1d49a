"""Write real image files (JPEG/PNG through Pillow) for tests that need datasets on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 32), fmt: str | None = None) -> Path:
    """A random RGB image (width, height) = size, saved in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_truncated_jpeg(path: Path, seed: int = 0) -> Path:
    """A JPEG cut in half: its header parses but decoding fails."""
    write_image(path, seed=seed, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
