"""Classifiers, datasets and a command-line runner shared by the extraction tests (and their subprocesses).

Run as a script it extracts a folder of test images into a store, so a test can kill it (``kill -9``) or run it
under ``torchrun``:

    python tests/extract_helpers.py IMAGE_ROOT OUT_DIR [--shard-size S] [--batch-size B] [--folder]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustsig.data.base import ImageDataset
from robustsig.models.classifier import Classifier, LayerTap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagefiles import write_image, write_truncated_jpeg  # noqa: E402


class Tensorize:
    """PIL image -> float tensor (3, size, size) in [0, 1]. With ``ROBUSTSIG_TEST_STALL_AFTER=n`` in the
    environment, the call after the n-th hangs for a minute (so a test can kill a run at a known point; the
    description does not change)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.calls = 0

    def __call__(self, image) -> torch.Tensor:
        self.calls += 1
        stall_after = os.environ.get("ROBUSTSIG_TEST_STALL_AFTER")
        if stall_after is not None and self.calls > int(stall_after):
            time.sleep(60)
        pixels = np.asarray(image.resize((self.size, self.size)), dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"Tensorize(size={self.size})"


class TinyConvNet(nn.Module):
    """conv -> relu -> conv -> relu -> global mean: h of width 8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))


def tiny_classifier(seed: int = 0, num_classes: int = 5) -> Classifier:
    """A deterministic small classifier (the same weights in every process for one seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder, head = TinyConvNet(), nn.Linear(8, num_classes)
    return Classifier(encoder, head, preprocess=Tensorize(), classnames=[f"c{i}" for i in range(num_classes)],
                      taps={"conv1": LayerTap("conv1", "spatial"), "conv2": LayerTap("conv2", "spatial")},
                      meta={"spec": f"test:tiny@{seed}"})


def mobilenet_classifier(weights: str | None = None, seed: int = 0) -> Classifier:
    """torchvision's MobileNetV2 split by hand: encoder = features + pool + flatten (+ dropout), head = the linear
    layer; real ImageNet weights when ``weights`` is the path of the packaged checkpoint."""
    from torchvision.models import mobilenet_v2

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = mobilenet_v2()
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    encoder = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier[0])
    taps = {f"block{i}": LayerTap(f"0.{i}", "spatial") for i in range(len(model.features))}
    return Classifier(encoder, model.classifier[1], preprocess=Tensorize(32), classnames=[str(i) for i in range(1000)],
                      taps=taps, meta={"spec": "test:mobilenet_v2"})


def image_folder(root: Path, count: int, corrupt: tuple[int, ...] = (), classes: int = 5) -> ImageDataset:
    """``count`` real image files (JPEG and PNG) under ``root``, those in ``corrupt`` truncated JPEGs."""
    samples = []
    for i in range(count):
        label = i % classes
        if i in corrupt:
            path = write_truncated_jpeg(root / f"class{label}" / f"img{i:04d}.jpg", seed=i)
        else:
            path = write_image(root / f"class{label}" / f"img{i:04d}.{'png' if i % 3 else 'jpg'}", seed=i)
        samples.append((path, label))
    return ImageDataset(samples, classnames=[f"c{i}" for i in range(classes)], kind="folder", root=root)


def reopen_folder(root: Path, classes: int = 5) -> ImageDataset:
    """The dataset :func:`image_folder` wrote, listed again from disk (as another process would)."""
    paths = sorted(root.glob("class*/img*"), key=lambda p: p.name)
    samples = [(p, int(p.parent.name.removeprefix("class"))) for p in paths]
    return ImageDataset(samples, classnames=[f"c{i}" for i in range(classes)], kind="folder", root=root)


def assert_same_store(store, reference) -> None:
    """Sample for sample, bit for bit; and the same skipped list."""
    assert store.keys == reference.keys
    for key in store.keys:
        a, b = store.read(key), reference.read(key)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), key
    assert store.skipped == reference.skipped
    assert store.manifest["key"] == reference.manifest["key"]


class CrashAt:
    """Forward pre-hook raising ``error`` at the ``k``-th forward pass (1-based), counting every pass."""

    def __init__(self, k: int | None, error: BaseException) -> None:
        self.k, self.error, self.calls = k, error, 0

    def __call__(self, module, args):
        self.calls += 1
        if self.calls == self.k:
            raise self.error


def kill_9_when(root: Path, out: Path, ready: Callable[[], bool], stall_after: int, *options: str) -> None:
    """Run this script on ``root`` into ``out`` in a child process that hangs after ``stall_after`` decoded images,
    and ``kill -9`` it as soon as ``ready()`` (within 120 s, or the test fails)."""
    tests = Path(__file__).resolve().parent
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests.parent / "src"), str(tests)]),
                        "ROBUSTSIG_TEST_STALL_AFTER": str(stall_after), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, __file__, str(root), str(out), *options], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ready():
        assert child.poll() is None, child.stdout.read().decode()
        assert time.monotonic() < deadline, "the child did not get there in time"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL


def main(argv: list[str] | None = None) -> None:
    import robustsig as rs

    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--layers", nargs="*", default=["conv1"])
    parser.add_argument("--folder", action="store_true", help="list the images as rs.open_dataset('folder') does")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = rs.open_dataset("folder", args.root) if args.folder else reopen_folder(args.root)
    store = rs.extract(tiny_classifier(), dataset, args.out, layers=args.layers,
                       batch_size=args.batch_size, shard_size=args.shard_size, num_workers=0, progress=False)
    print(f"rank {os.environ.get('RANK', 0)}: {store.num_rows} rows", flush=True)


if __name__ == "__main__":
    main()
