"""timm models as classifiers: the model with its final Linear cut off is the encoder.

``h`` is what timm's ``forward_head(pre_logits=True)`` computes (pooled, normed features). Layer taps are the
model's blocks (``block0..`` for ``blocks``, ``stage0..`` for ``stages``, ``layer0..`` for ``layers``) or, for
other layouts, the modules of timm's ``feature_info`` (e.g. ``act1, layer1..layer4`` for ResNets).
"""

from __future__ import annotations

from torch import nn

from robustsig.errors import InputError
from robustsig.models.anatomy import children_paths, probe_taps, split_final_linear
from robustsig.models.checkpoint import check_family, load_into, read_checkpoint, restore_classifier
from robustsig.models.classifier import Classifier
from robustsig.models.options import LoadOptions, fixed_head_classnames, random_init_warning
from robustsig.models.spec import ModelSpec, close_matches

_CONTAINERS = (("blocks", "block"), ("stages", "stage"), ("layers", "layer"))


def load(spec: ModelSpec, options: LoadOptions) -> Classifier:
    """Build the classifier of a ``timm:NAME[@PATH]`` spec."""
    import timm

    if not timm.is_model(spec.name.split(".")[0]):
        raise InputError(f"unknown timm model {spec.name!r}{close_matches(spec.name, timm.list_models())}; "
                         "`python -c 'import timm; print(timm.list_models())'` lists them")
    if spec.weights is None:
        clf = _classifier(timm.create_model(spec.name, pretrained=False), spec, options)
        random_init_warning(spec)
        return clf
    ckpt = read_checkpoint(spec.weights)
    if ckpt.is_classifier:
        check_family(ckpt, "timm", spec.name)
        names = ckpt.meta["classnames"]
        clf = _classifier(timm.create_model(spec.name, pretrained=False, num_classes=len(names)), spec, options,
                          classnames=names, base_spec=ckpt.meta.get("spec"))
        return restore_classifier(clf, ckpt)
    model = timm.create_model(spec.name, pretrained=False)
    head_key = f"{_head_path(model)}.weight"
    rows = ckpt.state_dict.get(head_key)
    if rows is not None and rows.shape[0] != model.get_classifier().out_features:
        model = timm.create_model(spec.name, pretrained=False, num_classes=rows.shape[0])
    load_into(model, ckpt.state_dict, f"checkpoint {ckpt.path!r}")
    return _classifier(model, spec, options)


def _classifier(model: nn.Module, spec: ModelSpec, options: LoadOptions, classnames=None, **meta) -> Classifier:
    from timm.data import create_transform, resolve_model_data_config

    data_cfg = resolve_model_data_config(model)
    preprocess = create_transform(**data_cfg, is_training=False)
    model.eval()
    head = split_final_linear(model, _head_path(model))
    names = fixed_head_classnames(options, head.out_features, default=classnames)
    taps = probe_taps(model, timm_tap_paths(model), data_cfg["input_size"][1:],
                      cls_token=getattr(model, "cls_token", None) is not None)
    return Classifier(model, head, preprocess=preprocess, classnames=names, taps=taps,
                      meta={"spec": str(spec), "family": "timm", "arch": spec.name, "weights": spec.weights,
                            "random_init": spec.random_init, "build": {}, **meta})


def _head_path(model: nn.Module) -> str:
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise InputError(f"timm model {type(model).__name__} has a {type(head).__name__} classifier; robustsig needs "
                         "a single linear head (distilled models with two heads are not supported)")
    return next(name for name, module in model.named_modules() if module is head)


def timm_tap_paths(model: nn.Module) -> dict[str, str]:
    """Tap name -> module path for a timm model, input side first."""
    for container, prefix in _CONTAINERS:
        paths = children_paths(model, container, prefix)
        if paths:
            return paths
    info = getattr(model, "feature_info", None) or []
    return {entry["module"].replace(".", ""): entry["module"] for entry in info}
