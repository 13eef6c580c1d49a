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


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG written byte by byte (Pillow writes 16-bit grey only): ``pixels`` is H x W (grey) or H x W x C
    (C: 2 grey + alpha, 3 RGB, 4 RGBA) of uint16."""
    import struct
    import zlib

    pixels = np.asarray(pixels, dtype=">u2")
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def write_png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grey PNG of ``width`` x ``height`` black pixels, compressed about 1000:1 (a decompression bomb:
    13000 x 13000 pixels take 170 kB on disk and 169 MB once decoded), written without holding its pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    rows = (b"\x00" + bytes(width)) * 256  # filter byte + a row of zeros, 256 rows at a time
    body = [compressor.compress(rows) for _ in range(height // 256)]
    body += [compressor.compress((b"\x00" + bytes(width)) * (height % 256)), compressor.flush()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path
