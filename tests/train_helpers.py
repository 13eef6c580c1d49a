"""Tiny training sets written as real image files, a tiny classifier, and tiny OpenCLIP architectures, for the
training tests."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from robustsig.models.classifier import Classifier

from cli_helpers import run_cli

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"layers": 2, "width": 32, "patch_size": 8, "image_size": 32, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
"""A tiny OpenCLIP ViT (open_clip's model JSON): 2 blocks of width 32 on 8-px patches of 32-px images, 16-d
embedding."""
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


def register_clip(folder: Path, name: str, config: dict, seed: int, templates: str = "a photo of a {}.\n") -> Path:
    """Register the OpenCLIP architecture ``name`` (``config``: open_clip's model JSON) and write, in ``folder``, a
    randomly initialised CLIP of it (seeded) as ``NAME.safetensors`` and a ``templates.txt``; returns the weights."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from safetensors.torch import save_file

    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**{**config, "vision_cfg": CLIPVisionCfg(**config["vision_cfg"]),
                              "text_cfg": CLIPTextCfg(**config["text_cfg"])})
    weights = folder / f"{name}.safetensors"
    save_file(model.state_dict(), str(weights))
    (folder / "templates.txt").write_text(templates)
    return weights


def cli(*args: str) -> tuple[int, str, str]:
    """``robustsig ARGS`` in this process, ``(exit code, stdout, stderr)``, without pytest's capsys (which
    module-scoped fixtures cannot use)."""
    out, err = io.StringIO(), io.StringIO()

    class Captured:
        @staticmethod
        def readouterr() -> tuple[str, str]:
            return out.getvalue(), err.getvalue()

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        return run_cli(Captured(), *args)
