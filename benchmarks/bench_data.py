"""Loading speed: images/s of robustsig's DataLoader (2 workers) over a folder of JPEGs against a bare PIL loop.

Both do the same work per image: decode, convert to RGB, and a classifier-style preprocess (resize 256, centre
crop 224) to a uint8 tensor; the DataLoader also batches and ships the batches between processes. Its workers
are persistent and warmed up, as in a long extraction where their start-up is amortised; both sides run torch
single-threaded (DataLoader workers do by default). Target: the DataLoader delivers >= 0.9x the images/s of the
bare loop, so data never starves the model.

Why uint8: a worker's batch crosses to the main process through shared memory, and on this VM fresh
shared-memory pages are slow (~0.1 s per 18 MB batch); float32 crops are 4x the bytes of uint8 crops, so an
extraction should normalise on the model's device.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from benchmarks._timing import report, side_by_side
from robustsig.data.base import image_loader
from robustsig.data.registry import open_dataset

FOLDER = Path(".bench") / "data" / "jpegs"
IMAGES, SIZE = 256, (500, 375)  # ImageNet val's typical size


def jpeg_folder(folder: Path = FOLDER, count: int = IMAGES) -> Path:
    """``count`` natural-looking JPEGs (smooth gradients plus texture), written once."""
    rng = np.random.default_rng(0)
    for n in range(count):
        path = folder / f"c{n % 4}" / f"{n:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]]
        base = np.stack([x * 255 / SIZE[0], y * 255 / SIZE[1], (x + y) * 127 / sum(SIZE)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return folder


class Discarded:
    """The same preprocess, shipping a 1-element tensor instead of the crop: isolates the cost of moving batches."""

    def __init__(self, preprocess: transforms.Compose) -> None:
        self.preprocess = preprocess

    def __call__(self, image: Image.Image) -> torch.Tensor:
        self.preprocess(image)
        return torch.zeros(1)


def run() -> None:
    preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    dataset = open_dataset("folder", jpeg_folder(), transform=preprocess)
    paths = [path for path, _ in dataset.samples]
    loader = image_loader(dataset, batch_size=32, num_workers=2, persistent_workers=True)
    shipless = image_loader(open_dataset("folder", jpeg_folder(), transform=Discarded(preprocess)), batch_size=32,
                            num_workers=2, persistent_workers=True)

    def through_loader() -> None:
        for _ in loader:
            pass

    def without_shipping() -> None:
        for _ in shipless:
            pass

    def bare_loop() -> None:
        for path in paths:
            with Image.open(path) as image:
                preprocess(image.convert("RGB"))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        medians = side_by_side({"DataLoader (2 workers)": through_loader, "bare PIL loop": bare_loop,
                                "DataLoader, batches not shipped": without_shipping}, repeats=7, warmup=1)
    finally:
        torch.set_num_threads(threads)
    for name, seconds in medians.items():
        print(f"  {name}: {len(paths) / seconds:.0f} images/s (median of 7 passes over {len(paths)} JPEGs "
              f"{SIZE[0]}x{SIZE[1]})", flush=True)
    print("  load average during the run: %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    report("data loading, DataLoader vs bare PIL decode (images/s ratio)", medians, fast="DataLoader (2 workers)",
           slow="bare PIL loop", target=0.9)
    report("  cost of shipping batches between processes (1.0x: none)", medians, fast="DataLoader (2 workers)",
           slow="DataLoader, batches not shipped")


if __name__ == "__main__":
    run()
