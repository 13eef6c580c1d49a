"""The real ImageNet weights that ship in packages: right answers on scikit-image's photos and on foolbox's 20
ImageNet validation photos."""

from __future__ import annotations

import importlib.util
import pickle

import pytest
import torch
from PIL import Image
from skimage import data

import robustsig as rs
from robustsig.demo.imagenet_val import load_imagenet_val_photos
from robustsig.models.checkpoint import save_classifier
from robustsig.models.spec import BUNDLED

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian Mau
ESPRESSO = 967
COFFEE = (967, 968, 504)  # espresso, cup, coffee mug
# model -> (crop size, width of h, its layer taps, width of the last tap's pooled output)
EXPECTED = {
    "mobilenet_v2": (224, 1280, [f"features{i}" for i in range(19)], 1280),
    "efficientnet_lite0": (224, 1280, [f"block{i}" for i in range(16)], 320),
    "efficientnet_lite1": (240, 1280, [f"block{i}" for i in range(21)], 320),
    "efficientnet_lite2": (260, 1280, [f"block{i}" for i in range(21)], 352),
    "squeezenet1_1": (227, 512, ["conv1"] + [f"fire{i}" for i in range(2, 10)], 512),
}


def test_every_bundled_model_is_tested():
    assert sorted(EXPECTED) == sorted(BUNDLED)


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def bundled(request):
    return rs.load_classifier(f"bundled:{request.param}", device="cpu")


@pytest.fixture(scope="module")
def val_photos():
    return load_imagenet_val_photos()


def test_real_weights_recognise_espresso_and_a_cat(bundled):
    crop, width, _, _ = EXPECTED[bundled.meta["arch"]]
    assert bundled.W.shape == (1000, width) and bundled.b.shape == (1000,)
    assert bundled.classnames[ESPRESSO] == "espresso" and bundled.classnames[281] == "tabby cat"
    assert bundled.meta["random_init"] is False
    x = torch.stack([bundled.preprocess(Image.fromarray(data.coffee())),
                     bundled.preprocess(Image.fromarray(data.chelsea()))])
    assert x.shape == (2, 3, crop, crop)
    again = pickle.loads(pickle.dumps(bundled.preprocess))  # DataLoader workers may be spawned
    torch.testing.assert_close(again(Image.fromarray(data.coffee())), x[0], rtol=0, atol=0)
    with torch.no_grad():
        logits = bundled(x)
        torch.testing.assert_close(logits, bundled.head(bundled.encode(x)), rtol=0, atol=0)
    top = logits.argmax(dim=1).tolist()
    assert top[0] == ESPRESSO
    assert top[1] in CATS
    probs = logits.softmax(dim=1)
    assert probs[0, list(COFFEE)].sum() > 0.5  # confident, not a lucky argmax
    assert probs[1, list(CATS)].sum() > 0.5


def test_real_weights_on_imagenet_validation_photos(bundled, val_photos):
    """foolbox's 20 ImageNet validation photos: top-1 far above chance (0.1 %); measured 18/20 for MobileNetV2 and
    the three EfficientNet-Lites, 14/20 for SqueezeNet 1.1 (whose published top-1 is 58 %)."""
    x = torch.stack([bundled.preprocess(image) for image, _ in val_photos])
    labels = torch.tensor([label for _, label in val_photos])
    with torch.no_grad():
        logits = bundled(x)
    correct = int((logits.argmax(dim=1) == labels).sum())
    in_top5 = int((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum())
    assert correct >= 12 and in_top5 >= 18, (bundled.meta["arch"], correct, in_top5)


def test_bundled_layer_taps(bundled):
    crop, width, expected, last_width = EXPECTED[bundled.meta["arch"]]
    assert bundled.layers == expected
    x = torch.randn(2, 3, crop, crop)
    with torch.no_grad():
        h, _, layers = bundled.forward_with_layers(x, [expected[0], expected[-1]])
    assert h.shape == (2, width)
    assert layers[expected[-1]].shape == (2, last_width)


def test_bundled_matches_torchvision_mobilenet_forward():
    from torchvision.models import mobilenet_v2

    from robustsig.models.bundled import weights_file
    from robustsig.models.checkpoint import load_state_dict

    model = mobilenet_v2().eval()
    model.load_state_dict(load_state_dict(weights_file("mobilenet_v2")))
    clf = rs.load_classifier("bundled:mobilenet_v2", device="cpu")
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet1_1"])
def test_finetuned_bundled_copy_round_trips(tmp_path, name):
    clf = rs.load_classifier(f"bundled:{name}", device="cpu")
    with torch.no_grad():
        clf.head.bias.add_(0.5)
    path = save_classifier(clf, tmp_path / "copy.pt")
    back = rs.load_classifier(f"bundled:{name}@{path}", device="cpu")
    assert back.fingerprint() == clf.fingerprint()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(back(x), clf(x), rtol=0, atol=0)


def test_missing_package_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite_pytorch" else real(name, *a))
    with pytest.raises(rs.InputError, match=r"pip install --no-deps efficientnet-lite-pytorch==0\.1\.0"):
        rs.load_classifier("bundled:efficientnet_lite0", device="cpu")


def test_missing_keras_reader_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else real(name, *a))
    with pytest.raises(rs.InputError, match=r"pip install --no-deps h5py"):
        rs.load_classifier("bundled:squeezenet1_1", device="cpu")
