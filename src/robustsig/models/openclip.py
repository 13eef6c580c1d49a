"""OpenCLIP models as classifiers: the image tower is the encoder, a zero-shot (or finetuned) head on top.

``h`` is the L2-normalized image embedding, so ``clf(x) = head(h)`` are CLIP's zero-shot logits
``logit_scale.exp() * normalize(img) @ normalize(text).T``. The text tower is used once to build the head and
then dropped. The one exception is a model trained from scratch with a plain linear head (``robustsig train
--head linear``, recorded as ``build["normalize"] = False`` in its checkpoint): its ``h`` is the raw embedding.
A robustsig checkpoint's head has a bias when the file holds ``head.bias`` (a finetune with D.1's ``wiseft`` head:
the zero-shot weights and a bias that started at 0, so ``logits = W h + b``), and none otherwise (finetuned
before D.1's head had a bias, or with ``head: normalized-linear``): each loads as it was saved.
Layer taps: ``block0..`` (the ViT's residual blocks, token sequences with the class token first) or ``stem,
layer1..layer4`` (ModifiedResNet feature maps); timm-tower models get the timm taps.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustsig.errors import InputError
from robustsig.models.anatomy import probe_taps
from robustsig.models.checkpoint import Checkpoint, check_family, read_checkpoint, restore_classifier
from robustsig.models.classifier import Classifier, LayerTap
from robustsig.models.fetch import hf_hub_file, url_file
from robustsig.models.options import LoadOptions, fixed_head_classnames, random_init_warning
from robustsig.models.prompts import imagenet_classnames, resolve_classnames
from robustsig.models.spec import ModelSpec, close_matches
from robustsig.models.zeroshot import lazy_zero_shot_head

_CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
                     "open_clip_pytorch_model.bin", "pytorch_model.bin", "open_clip_pytorch_model.pth")


class CLIPImageEncoder(nn.Module):
    """``x -> normalize(visual(x))``: open_clip's ``encode_image(x, normalize=True)`` as a module; with
    ``normalize=False``, ``x -> visual(x)`` (the raw embedding a supervised linear head reads)."""

    def __init__(self, visual: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.visual = visual
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.visual(x)
        return F.normalize(embedding, dim=-1) if self.normalize else embedding


def load(spec: ModelSpec, options: LoadOptions) -> Classifier:
    """Build the classifier of an ``openclip:`` spec (see :mod:`robustsig.models.spec`)."""
    kind = spec.weights_kind
    if kind == "path":
        ckpt = read_checkpoint(spec.weights)
        if ckpt.is_classifier:
            return _from_robustsig_checkpoint(spec, ckpt, options)
        model = _create(spec.name, quick_gelu=False)
        _load_clip_weights(model, ckpt)
        source = spec.name
    elif kind == "tag":
        model = _from_tag(spec, options)
        source = spec.name
    elif kind == "hub":
        source = _local_source(spec.weights, options)
        model = _create(source, quick_gelu=False)
        _load_clip_weights(model, read_checkpoint(_dir_checkpoint(source)))
    else:
        model = _create(spec.name, quick_gelu=False)
        random_init_warning(spec)
        source = spec.name
    return classifier_from_clip(model, _tokenizer(source, spec), spec=spec, options=options)


def classifier_from_clip(model: nn.Module, tokenizer, *, spec: ModelSpec, options: LoadOptions) -> Classifier:
    """Wrap an open_clip model: zero-shot head from ``options`` (class names, templates, cache), image tower
    as the encoder, the model's own eval transform as ``preprocess``. The head is built when first used."""
    from open_clip import get_model_preprocess_cfg

    classnames = resolve_classnames(options.classnames, default=imagenet_classnames())
    model = model.to(options.device)
    # built on first use: a classifier used only through encode() or its layer taps never runs the text tower
    head = lazy_zero_shot_head(model, tokenizer, classnames, options.templates, batch_size=options.batch_size,
                               device=options.device, cache_dir=options.cache_dir, use_cache=options.use_cache)
    preprocess_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in get_model_preprocess_cfg(model).items()}
    build = {"quick_gelu": _uses_quick_gelu(model), "preprocess_cfg": preprocess_cfg}
    return _classifier(model.visual, head, classnames, spec, build)


def _classifier(visual: nn.Module, head: nn.Linear, classnames: list[str], spec: ModelSpec,
                build: dict[str, Any], **meta: Any) -> Classifier:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    encoder = CLIPImageEncoder(visual, normalize=bool(build.get("normalize", True)))
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in build["preprocess_cfg"].items()}
    preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    arch = spec.name or spec.weights
    return Classifier(encoder, head, preprocess=preprocess, classnames=classnames, taps=clip_taps(encoder),
                      meta={"spec": str(spec), "family": "openclip", "arch": arch, "weights": spec.weights,
                            "random_init": spec.random_init, "build": build, **meta})


def clip_taps(encoder: CLIPImageEncoder) -> dict[str, LayerTap]:
    """Layer taps of an OpenCLIP image tower, input side first."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = encoder.visual
    if isinstance(visual, VisionTransformer):
        seq_first = not getattr(visual.transformer, "batch_first", True)
        return {f"block{i}": LayerTap(f"visual.transformer.resblocks.{i}", "tokens", seq_first=seq_first)
                for i in range(len(visual.transformer.resblocks))}
    if isinstance(visual, ModifiedResNet):
        return {"stem": LayerTap("visual.avgpool", "spatial"),
                **{f"layer{i}": LayerTap(f"visual.layer{i}", "spatial") for i in range(1, 5)}}
    if isinstance(visual, TimmModel):
        from robustsig.models.timm_models import timm_tap_paths

        paths = {name: f"visual.trunk.{path}" for name, path in timm_tap_paths(visual.trunk).items()}
        return probe_taps(encoder, paths, visual.image_size,
                          cls_token=getattr(visual.trunk, "cls_token", None) is not None)
    warnings.warn(f"no layer taps known for OpenCLIP image tower {type(visual).__name__}", stacklevel=3)
    return {}


# --- building the model ----------------------------------------------------------------------------------
def _create(source: str, *, quick_gelu: bool) -> nn.Module:
    """A randomly initialised open_clip model (architecture name or ``local-dir:``), no weights loaded."""
    import open_clip

    if not source.startswith("local-dir:") and source not in open_clip.list_models():
        raise InputError(f"unknown OpenCLIP architecture {source!r}{close_matches(source, open_clip.list_models())}; "
                         "`python -c 'import open_clip; print(open_clip.list_models())'` lists them")
    try:
        return open_clip.create_model(source, force_quick_gelu=quick_gelu, pretrained_image=False,
                                      pretrained_text=False, load_weights=False)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as err:
        raise InputError(f"cannot build OpenCLIP model {source!r}: {err}") from None


def _from_tag(spec: ModelSpec, options: LoadOptions) -> nn.Module:
    import open_clip
    from open_clip import get_model_preprocess_cfg, set_model_preprocess_cfg
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.transform import merge_preprocess_dict

    cfg = open_clip.get_pretrained_cfg(spec.name, spec.weights)
    if not cfg:
        if spec.name not in open_clip.list_models():
            _create(spec.name, quick_gelu=False)  # raises the unknown-architecture error
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        raise InputError(f"{spec.weights!r} is neither a pretrained tag of OpenCLIP {spec.name} nor a file"
                         f"{close_matches(spec.weights, tags)}; its tags: {', '.join(tags) or 'none'}. A local "
                         "checkpoint needs a path ('./ft.pt', '/abs/ft.safetensors')")
    what = f"OpenCLIP weights '{spec.name}@{spec.weights}'"
    if cfg.get("hf_hub"):
        repo_id, filename = posixpath.split(cfg["hf_hub"])  # open_clip's 'org/repo/' or 'org/repo/file' form
        filename = filename or HF_WEIGHTS_NAME
        candidates = [filename]
        if filename == HF_WEIGHTS_NAME:
            candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        path = hf_hub_file(repo_id, candidates, what=what, allow_download=options.allow_download)
    elif cfg.get("url"):
        path = url_file(cfg["url"], os.path.join("~", ".cache", "clip"), what=what,
                        allow_download=options.allow_download)
    else:
        raise InputError(f"{what}: open_clip lists no download source for this tag")
    model = _create(spec.name, quick_gelu=bool(cfg.get("quick_gelu", False)))
    set_model_preprocess_cfg(model, merge_preprocess_dict(get_model_preprocess_cfg(model), cfg))
    _load_clip_weights(model, read_checkpoint(path))
    return model


def _local_source(source: str, options: LoadOptions) -> str:
    """``local-dir:DIR`` for an ``hf-hub:``/``local-dir:`` source, fetching the hub files into the cache first."""
    from open_clip.constants import HF_CONFIG_NAME

    schema, _, ident = source.partition(":")
    if schema == "local-dir":
        if not (Path(ident) / HF_CONFIG_NAME).is_file():
            raise InputError(f"OpenCLIP source {source!r} has no {HF_CONFIG_NAME}; expected a folder written by "
                             "open_clip's push_to_hf_hub/save (config + weights)")
        return source
    what = f"OpenCLIP model '{source}'"
    config = hf_hub_file(ident, [HF_CONFIG_NAME], what=what, allow_download=options.allow_download)
    hf_hub_file(ident, list(_CHECKPOINT_NAMES), what=what, allow_download=options.allow_download)
    return f"local-dir:{os.path.dirname(config)}"


def _dir_checkpoint(source: str) -> str:
    folder = Path(source.partition(":")[2])
    for name in _CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return str(folder / name)
    raise InputError(f"OpenCLIP folder {str(folder)!r} has no weights file (looked for {', '.join(_CHECKPOINT_NAMES)})")


def _load_clip_weights(model: nn.Module, ckpt: Checkpoint) -> None:
    """Load a plain open_clip state dict with open_clip's own fix-ups (old text layouts, logit_scale shape,
    position-embedding resizing)."""
    import open_clip

    try:
        open_clip.load_checkpoint(model, ckpt.path, strict=True, weights_only=True)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"checkpoint {ckpt.path!r} does not fit OpenCLIP {type(model).__name__} "
                         f"({first}). Check the architecture in the spec (e.g. '-quickgelu' variants)") from None


def _tokenizer(source: str, spec: ModelSpec):
    import open_clip

    try:
        return open_clip.get_tokenizer(source)
    except Exception as err:  # noqa: BLE001 - HF tokenizers raise many kinds of download errors
        raise InputError(f"cannot get the tokenizer of OpenCLIP {spec} ({type(err).__name__}: {err}); models with "
                         "Hugging Face text towers need their tokenizer in the Hugging Face cache") from None


def _uses_quick_gelu(model: nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def _from_robustsig_checkpoint(spec: ModelSpec, ckpt: Checkpoint, options: LoadOptions) -> Classifier:
    check_family(ckpt, "openclip", spec.name)
    build = ckpt.meta["build"]
    model = _create(spec.name, quick_gelu=bool(build.get("quick_gelu")))
    names = list(ckpt.meta["classnames"])
    weight = ckpt.state_dict.get("head.weight")
    if weight is None:
        raise InputError(f"robustsig checkpoint {ckpt.path!r} has no 'head.weight'")
    head = nn.Linear(weight.shape[1], weight.shape[0], bias="head.bias" in ckpt.state_dict)
    clf = _classifier(model.visual, head, names, spec, build, base_spec=ckpt.meta.get("spec"))
    del model  # the text tower is not needed: the head is in the checkpoint
    clf = restore_classifier(clf, ckpt)
    clf.classnames = fixed_head_classnames(options, len(names), default=names)
    return clf
