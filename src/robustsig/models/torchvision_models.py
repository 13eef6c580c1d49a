"""torchvision classification models as classifiers: the model with its final Linear cut off is the encoder.

``preprocess`` is the weights' own eval transform (for random init, the default weights' transform). Layer
taps: ``stem, layer1..layer4`` (ResNets), ``block0..`` (ViT encoder layers, RegNet trunk), ``features0..``
(models built on a ``features`` Sequential: MobileNet, EfficientNet, ConvNeXt, Swin, VGG, DenseNet...).
"""

from __future__ import annotations

import os

from torch import nn

from robustsig.errors import InputError
from robustsig.models.anatomy import children_paths, final_linear_path, probe_taps, split_final_linear
from robustsig.models.checkpoint import check_family, load_into, read_checkpoint, restore_classifier
from robustsig.models.classifier import Classifier
from robustsig.models.fetch import url_file
from robustsig.models.options import LoadOptions, fixed_head_classnames, random_init_warning
from robustsig.models.spec import ModelSpec, close_matches

HEAD_ATTRS = ("fc", "classifier", "heads", "head")


def load(spec: ModelSpec, options: LoadOptions) -> Classifier:
    """Build the classifier of a ``torchvision:NAME[@WEIGHTS]`` spec."""
    from torchvision import models

    available = models.list_models(module=models)
    if spec.name not in available:
        raise InputError(f"unknown torchvision classification model {spec.name!r}"
                         f"{close_matches(spec.name, available)}; available: {', '.join(available)}")
    kind = spec.weights_kind
    if kind == "none":
        clf = classifier_from_model(models.get_model(spec.name), spec, options)
        random_init_warning(spec)
        return clf
    if kind == "tag":
        weights = _weights_enum(spec)
        categories = weights.meta.get("categories") or []
        # the file lands in torch.hub's cache; checking it with weights_only first means the builder's own
        # torch.load only ever sees a file made of tensors
        import torch.hub

        path = url_file(weights.url, os.path.join(torch.hub.get_dir(), "checkpoints"),
                        what=f"torchvision weights {spec.name}@{weights}", allow_download=options.allow_download)
        read_checkpoint(path)
        model = models.get_model(spec.name, weights=weights)
        return classifier_from_model(model, spec, options, preprocess=weights.transforms(),
                                     classnames=categories if len(categories) != 1000 else None)
    ckpt = read_checkpoint(spec.weights)
    if ckpt.is_classifier:
        check_family(ckpt, "torchvision", spec.name)
        names = ckpt.meta["classnames"]
        clf = classifier_from_model(models.get_model(spec.name, num_classes=len(names)), spec, options,
                                    classnames=names, base_spec=ckpt.meta.get("spec"))
        return restore_classifier(clf, ckpt)
    model = models.get_model(spec.name)
    head_path = final_linear_path(model, HEAD_ATTRS)
    rows = ckpt.state_dict.get(f"{head_path}.weight")
    if rows is not None and rows.ndim == 2 and rows.shape[0] != model.get_submodule(head_path).out_features:
        model = models.get_model(spec.name, num_classes=rows.shape[0])
    load_into(model, ckpt.state_dict, f"checkpoint {ckpt.path!r}")
    return classifier_from_model(model, spec, options)


def classifier_from_model(model: nn.Module, spec: ModelSpec, options: LoadOptions, *, preprocess=None,
                          classnames=None, **meta) -> Classifier:
    """Split a torchvision model (or one with the same layout) into encoder and head.

    Args:
        model: the full model (changed in place: its final Linear becomes the head).
        spec: what it was loaded from (recorded in ``meta``).
        options: class names given by the user.
        preprocess: PIL -> tensor; default: the eval transform of the architecture's default weights.
        classnames: the head's own class names, when known and not ImageNet-1k.
        **meta: more provenance for ``meta``.
    """
    from torchvision import models

    if preprocess is None:
        preprocess = models.get_model_weights(spec.name).DEFAULT.transforms()
    model.eval()
    head = split_final_linear(model, final_linear_path(model, HEAD_ATTRS))
    names = fixed_head_classnames(options, head.out_features, default=classnames)
    crop = getattr(preprocess, "crop_size", [224])
    taps = probe_taps(model, torchvision_tap_paths(model), crop[0] if len(crop) == 1 else crop,
                      cls_token=hasattr(model, "class_token"))
    return Classifier(model, head, preprocess=preprocess, classnames=names, taps=taps,
                      meta={"spec": str(spec), "family": spec.family, "arch": spec.name, "weights": spec.weights,
                            "random_init": spec.random_init, "build": {}, **meta})


def torchvision_tap_paths(model: nn.Module) -> dict[str, str]:
    """Tap name -> module path for a torchvision classification model, input side first."""
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return {"stem": "maxpool", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}
    if paths := children_paths(model, "encoder.layers", "block"):
        return paths
    if paths := children_paths(model, "trunk_output", "block"):
        return {"stem": "stem", **paths}
    return children_paths(model, "features", "features")


def _weights_enum(spec: ModelSpec):
    from torchvision import models

    enum = models.get_model_weights(spec.name)
    text = spec.weights
    if "." in text:
        prefix, _, text = text.partition(".")
        if prefix != enum.__name__:
            raise InputError(f"torchvision weights {spec.weights!r} are not weights of {spec.name} "
                             f"(its weights enum is {enum.__name__})")
    if text.upper() == "DEFAULT":
        return enum.DEFAULT
    members = [name for name in enum.__members__ if name != "DEFAULT"]
    if text.upper() not in members:
        raise InputError(f"unknown torchvision weights {spec.weights!r} for {spec.name}"
                         f"{close_matches(text.upper(), members)}; available: {', '.join(members)}, DEFAULT")
    return enum[text.upper()]
