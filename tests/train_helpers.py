"""Tiny training sets written as real image files, and a tiny classifier, for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from robustsig.models.classifier import Classifier

COLOURS = {"blue": (30, 60, 200), "green": (40, 190, 60), "red": (210, 40, 30)}


def write_colour_folder(root: Path, per_class: int = 8, size: tuple[int, int] = (24, 20), seed: int = 0,
                        classes: tuple[str, ...] = ("blue", "green", "red")) -> Path:
    """A ``folder`` dataset: one sub-folder per colour, noisy images of that colour (PNG and JPEG files)."""
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(per_class):
            noise = rng.integers(-60, 61, size=(size[1], size[0], 3))
            pixels = np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8)
            path = root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


class TinyNet(nn.Module):
    """conv -> ReLU -> global average pool: ``(N, 3, H, W) -> (N, width)``; no BatchNorm, no dropout."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def tiny_classifier(num_classes: int = 3, seed: int = 0, size: int = 16) -> Classifier:
    """A small Classifier with a torchvision eval preprocess (resize, crop, normalise) at ``size`` pixels."""
    torch.manual_seed(seed)
    preprocess = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    return Classifier(TinyNet(), nn.Linear(8, num_classes), preprocess=preprocess,
                      classnames=[f"c{i}" for i in range(num_classes)], meta={"spec": "test:tiny"})
