"""The shared core: the Classifier split, layer taps, fingerprints, and the image dataset base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robustsig as rs
from robustsig.data.base import ImageDataset, IndexedDataset, collate_skip_corrupt, read_image
from robustsig.models.classifier import Classifier, LayerTap, pool_activation

from imagefiles import write_image, write_truncated_jpeg


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def tiny_classifier() -> Classifier:
    return Classifier(TinyConvNet(), nn.Linear(5, 3), preprocess=lambda im: im, classnames=["a", "b", "c"],
                      taps={"conv": LayerTap("conv", "spatial")})


def test_classifier_split_equals_forward():
    clf = tiny_classifier()
    x = torch.randn(4, 3, 8, 8)
    h, logits, layers = clf.forward_with_layers(x, ["conv"])
    torch.testing.assert_close(logits, clf(x))
    torch.testing.assert_close(logits, h @ clf.W.T + clf.b)
    expected_conv = clf.encoder.conv(x).mean(dim=(2, 3))
    torch.testing.assert_close(layers["conv"], expected_conv)
    assert clf.layers == ["conv"]


def test_classifier_rejects_bad_parts():
    with pytest.raises(rs.InputError, match="class names"):
        Classifier(TinyConvNet(), nn.Linear(5, 3), preprocess=lambda im: im, classnames=["a"])
    with pytest.raises(rs.InputError, match="not a submodule"):
        Classifier(TinyConvNet(), nn.Linear(5, 3), preprocess=lambda im: im, classnames="abc",
                   taps={"x": LayerTap("nope", "spatial")})
    with pytest.raises(rs.InputError, match="unknown layer"):
        tiny_classifier().forward_with_layers(torch.randn(1, 3, 4, 4), ["missing"])


def test_pooling_layouts():
    tokens = torch.arange(24.0).reshape(2, 3, 4)
    torch.testing.assert_close(pool_activation(tokens, LayerTap("m", "tokens")), tokens[:, 0])
    torch.testing.assert_close(pool_activation(tokens, LayerTap("m", "tokens"), "mean"), tokens.mean(1))
    torch.testing.assert_close(pool_activation(tokens.transpose(0, 1), LayerTap("m", "tokens", seq_first=True)),
                               tokens[:, 0])
    with pytest.raises(rs.InputError, match="token layout"):
        pool_activation(torch.zeros(1, 2, 3, 3), LayerTap("m", "spatial"), "cls")


def test_fingerprint_tracks_weights():
    a, b = tiny_classifier(), tiny_classifier()
    assert a.fingerprint() != b.fingerprint()  # different random init
    b.load_state_dict(a.state_dict())
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.head.weight[0, 0] += 1e-6
    assert a.fingerprint() != b.fingerprint()


def test_corrupt_images_are_skipped_and_reported(tmp_path):
    good = write_image(tmp_path / "good.jpg", seed=1)
    bad = write_truncated_jpeg(tmp_path / "bad.jpg")
    assert read_image(good).mode == "RGB"
    with pytest.raises(rs.CorruptImageError, match="bad.jpg"):
        read_image(bad)
    ds = ImageDataset([(good, 0), (bad, 1)], classnames=["x", "y"], root=tmp_path,
                      transform=lambda im: torch.tensor(im.size))
    assert ds[1] == (None, 1)
    indices, images, labels, skipped = collate_skip_corrupt([IndexedDataset(ds)[i] for i in range(2)])
    assert indices.tolist() == [0] and skipped == [1] and labels.tolist() == [0]
    assert images.tolist() == [[40, 32]]
    strict = ImageDataset([(bad, 1)], strict=True)
    with pytest.raises(rs.CorruptImageError):
        strict[0]


def test_dataset_digest_changes_with_file_list(tmp_path):
    a = ImageDataset([(tmp_path / "a.jpg", 0)], root=tmp_path).describe()
    b = ImageDataset([(tmp_path / "a.jpg", 1)], root=tmp_path).describe()
    assert a["files_digest"] != b["files_digest"] and a["num_samples"] == 1
