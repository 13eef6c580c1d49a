"""What keying a store by its images costs, against the extraction it guards (issue 13, point 1).

A store's key holds a stamp of every image (size, mtime, ctime, inode: one ``stat`` each, see
``robustsig._stamps``). Side by side on the same folder of ImageNet-val-sized JPEGs (500 x 375, quality 90):

- ``listing``: ``rs.open_dataset("folder", ...)``: the folder walk (a ``stat`` and an ``access`` per file, so only
  readable regular files are listed, each real file once);
- ``paths``: the key before stamps (a digest of relative paths and labels): the floor;
- ``stamps``: ``dataset.describe()`` as robustsig computes it now (paths, labels and a stat per file);
- ``content``: what keying by content would cost: blake2b of every file's bytes (page cache warm, so the
  disk is not even counted);
- ``decode``: decoding and preprocessing each image once (resize 256, crop 224): the least any extraction must do
  per image on the CPU, whatever the GPU;
- ``extract``: ``rs.extract`` with the bundled MobileNetV2 on this machine's CPU.

Each is also extrapolated to ImageNet val (50,000 files, 6.4 GB): per file for the stat and decode costs, per
byte for the content digest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from benchmarks._timing import side_by_side
from benchmarks.bench_data import jpeg_folder

IMAGES = 96
VAL_FILES, VAL_BYTES = 50_000, 6.4e9


def run() -> None:
    import robustsig as rs

    folder = jpeg_folder(Path(".bench") / "data" / "keying", IMAGES)
    dataset = rs.open_dataset("folder", folder)
    paths = [path for path, _ in dataset.samples]
    total_bytes = sum(os.path.getsize(path) for path in paths)
    preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    classifier = rs.load_classifier("bundled:mobilenet_v2", device="cpu")
    scratch = Path(tempfile.mkdtemp(prefix="bench-keying-"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def path_digest() -> None:
        digest = hashlib.blake2b(digest_size=16)
        for path, label in dataset.samples:
            digest.update(os.fsencode(os.path.relpath(path, dataset.root)) + f"\t{label}\n".encode())

    def content_digest() -> None:
        for path in paths:
            with open(path, "rb") as handle:
                hashlib.file_digest(handle, "blake2b")

    def decode() -> None:
        for path in paths:
            with Image.open(path) as image:
                preprocess(image.convert("RGB"))

    def extract() -> None:
        shutil.rmtree(scratch / "store", ignore_errors=True)
        rs.extract(classifier, rs.open_dataset("folder", folder), scratch / "store", batch_size=32, num_workers=0,
                   progress=False)

    try:
        medians = side_by_side({"listing": lambda: rs.open_dataset("folder", folder), "paths": path_digest, "stamps": dataset.describe, "content": content_digest,
                                "decode": decode, "extract": extract}, repeats=3)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(scratch, ignore_errors=True)
    per_file = {name: seconds / IMAGES for name, seconds in medians.items()}
    val = {name: per_file[name] * VAL_FILES for name in medians}
    val["content"] = medians["content"] / total_bytes * VAL_BYTES
    print(f"keying {IMAGES} JPEGs ({total_bytes / IMAGES / 1e3:.0f} kB each), medians of 3 side by side, one thread:",
          flush=True)
    for name in medians:
        print(f"  {name:8s} {medians[name] * 1e3:10.2f} ms   {per_file[name] * 1e6:10.1f} us/file   "
              f"ImageNet val: {val[name]:9.2f} s", flush=True)
    print(f"stamp key: {medians['stamps'] / medians['extract']:.4%} of this CPU extraction, "
          f"{medians['stamps'] / medians['decode']:.3%} of decoding alone (a lower bound of any extraction); "
          f"over the path-only key: +{(medians['stamps'] - medians['paths']) / IMAGES * 1e6:.1f} us/file", flush=True)
    print(f"content key: {medians['content'] / medians['extract']:.2%} of this CPU extraction, "
          f"{medians['content'] / medians['decode']:.2%} of decoding alone, page cache warm "
          f"(ImageNet val {val['content']:.1f} s, plus reading 6.4 GB from disk when cold, on every check)", flush=True)
