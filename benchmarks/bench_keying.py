"""What keying a store by the contents of its images costs, against decoding them (issue 21, point 1).

A store's key holds the digest of every image's bytes; a stat cache (``robustsig._contents``) vouches for files
whose size, mtime, ctime and inode are unchanged, so only changed files are read. On a synthetic folder of 50,000
small JPEGs (ImageNet val's file count), side by side, medians of 3, one process:

- ``stamps``: the key before content keys (a ``stat`` per file, digested): the floor;
- ``clean``: ``dataset.describe()`` now, nothing changed (a ``stat`` per file and the cache file read);
- ``one``: one file changed (its bytes and ctime; size and mtime put back): a ``stat`` per file, one file read;
- ``copy``: the folder after ``cp -a`` (every stamp new: each file read and hashed once, page cache warm);
- ``decode``: decoding every image once (PIL, to RGB): the least any extraction must do per image.

Then the hash rate (blake2b, one thread and the hashing pool) against the disk read rate (the files evicted from
the page cache with ``posix_fadvise``, read cold), and ImageNet val (50,000 files, 6.4 GB): the re-hash after a
copy (the per-file cost measured here plus 6.4 GB at the slower of the hash and read rates) against decoding its
JPEGs (500 x 375, measured on a sample).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import benchmarks
from benchmarks._timing import side_by_side
from benchmarks.bench_data import jpeg_folder

FILES = 50_000
SIZE = (128, 96)
VAL_FILES, VAL_BYTES = 50_000, 6.4e9
SAMPLE = 64  # ImageNet-sized JPEGs decoded to extrapolate


def small_jpegs(folder: Path, count: int) -> Path:
    """``count`` small JPEGs in 100 class folders, written once (about a minute)."""
    marker = folder / ".complete"
    if marker.exists():
        return folder
    rng = np.random.default_rng(0)
    base = np.stack(np.mgrid[0:SIZE[1], 0:SIZE[0]], axis=-1).sum(-1, keepdims=True).repeat(3, -1) % 256
    for n in range(count):
        path = folder / f"c{n % 100:03d}" / f"{n:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    marker.touch()
    return folder


def stamp_digest(dataset) -> str:
    """The key before content keys: every sample's relative path, label and stat stamp, digested."""
    digest = hashlib.blake2b(digest_size=16)
    for path, label in dataset.samples:
        status = os.stat(path)
        digest.update(os.fsencode(os.path.relpath(path, dataset.root))
                      + f"\t{label}\t{[status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]}\n"
                      .encode())
    return digest.hexdigest()


def evict(paths: list[str]) -> None:
    """Drop these files' pages from the page cache (only theirs), so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass


def run() -> None:
    import robustsig as rs
    import robustsig._contents as contents

    keep = benchmarks.OPTIONS.get("keep")
    data = Path(".bench") / "data"
    original = small_jpegs(data / "keying-50k", FILES)
    scratch = Path(tempfile.mkdtemp(prefix="bench-keying-", dir=data))
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=scratch))
    previous_cache = os.environ.get("ROBUSTSIG_CACHE")
    os.environ["ROBUSTSIG_CACHE"] = str(cache)
    try:
        copy = scratch / "copy"
        subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
        dataset = rs.open_dataset("folder", original)
        copied = rs.open_dataset("folder", copy)
        paths = [path for path, _ in dataset.samples]
        total_bytes = sum(os.path.getsize(path) for path in paths)
        dataset.describe()  # fills the cache of the original; files younger than 2 s are re-read next time
        time.sleep(contents.RACY_NS / 1e9)
        dataset.describe()
        changed = Path(paths[len(paths) // 2])
        flips = [0]

        def one_changed() -> None:
            status = changed.stat()
            with open(changed, "r+b") as handle:  # a byte inside the JPEG's entropy-coded data
                handle.seek(status.st_size // 2)
                byte = handle.read(1)
                handle.seek(status.st_size // 2)
                handle.write(bytes([byte[0] ^ 1]))
            os.utime(changed, ns=(status.st_atime_ns, status.st_mtime_ns))
            flips[0] += 1
            report = dataset.listing().report
            assert report.hashed >= 1, report

        def after_copy() -> None:
            contents.cache_file(copy).unlink(missing_ok=True)  # as for a fresh copy: no stamp is known
            report = copied.listing().report
            assert report.hashed == FILES, report

        def decode() -> None:
            for path in paths:
                with Image.open(path) as image:
                    image.convert("RGB")

        medians = side_by_side({"stamps": lambda: stamp_digest(dataset), "clean": dataset.describe,
                                "one": one_changed, "copy": after_copy, "decode": decode}, repeats=3)
        if flips[0] % 2:  # put the changed byte back
            one_changed()

        # hash rate against disk read rate
        blob = os.urandom(256 << 20)
        start = time.perf_counter()
        hashlib.blake2b(blob, digest_size=16)
        hash_rate = len(blob) / (time.perf_counter() - start)
        big = scratch / "big"
        big.mkdir()
        for k in range(8):
            (big / f"{k}.bin").write_bytes(blob[k << 25:(k + 1) << 25])
        start = time.perf_counter()
        contents.digest_files([str(p) for p in sorted(big.iterdir())], big)
        pool_rate = len(blob) / (time.perf_counter() - start)
        evict([str(p) for p in big.iterdir()])
        start = time.perf_counter()
        read_all([str(p) for p in sorted(big.iterdir())])
        big_rate = len(blob) / (time.perf_counter() - start)
        sample = paths[::10]
        evict(sample)
        start = time.perf_counter()
        read_all(sample)
        cold = time.perf_counter() - start
        small_rate = len(sample) / cold

        # ImageNet-sized JPEGs: decode time per image, to extrapolate
        imagenet = jpeg_folder(data / "keying", SAMPLE)
        samples = sorted(str(p) for p in imagenet.rglob("*.jpg"))[:SAMPLE]
        start = time.perf_counter()
        for path in samples:
            with Image.open(path) as image:
                image.convert("RGB")
        decode_val = (time.perf_counter() - start) / len(samples) * VAL_FILES
    finally:
        if previous_cache is None:
            os.environ.pop("ROBUSTSIG_CACHE", None)
        else:
            os.environ["ROBUSTSIG_CACHE"] = previous_cache
        shutil.rmtree(scratch, ignore_errors=True)
        if not keep:
            shutil.rmtree(original, ignore_errors=True)

    print(f"keying {FILES} JPEGs ({SIZE[0]}x{SIZE[1]}, {total_bytes / FILES / 1e3:.1f} kB each, "
          f"{total_bytes / 1e6:.0f} MB), medians of 3 side by side:", flush=True)
    for name, label in (("stamps", "stat stamps (before)"), ("clean", "content key, no change"),
                        ("one", "content key, 1 file changed"), ("copy", "content key after cp -a"),
                        ("decode", "decoding every image")):
        print(f"  {label:30s} {medians[name]:8.3f} s   {medians[name] / medians['decode']:8.2%} of decoding   "
              f"{medians[name] / medians['stamps']:6.2f} x stat stamps", flush=True)
    print(f"hash rate: blake2b {hash_rate / 1e9:.2f} GB/s on one thread, {pool_rate / 1e9:.2f} GB/s through the "
          f"hashing pool (8 files of 32 MB, page cache warm); disk read rate (files evicted from the page cache): "
          f"{big_rate / 1e9:.2f} GB/s for those 8 files, {small_rate:.0f} files/s for {len(sample)} of the small "
          f"JPEGs", flush=True)
    per_file = (medians["copy"] - medians["clean"]) / FILES  # opening and hashing a small file, page cache warm
    rehash_val = medians["clean"] + VAL_FILES * per_file + VAL_BYTES / min(pool_rate, big_rate)
    print(f"ImageNet val (50,000 JPEGs, 6.4 GB): no change {medians['clean']:.2f} s ({medians['clean'] / medians['stamps']:.2f} x stat stamps); "
          f"re-hash after a copy ~{rehash_val:.0f} s (stats, {per_file * 1e6:.0f} us per file, 6.4 GB at the slower "
          f"of the pool's hash rate and the disk's read rate); decoding the JPEGs ~{decode_val:.0f} s on one core "
          f"(500x375, measured on {SAMPLE}): the re-hash is {rehash_val / decode_val:.1%} of one decode pass",
          flush=True)
