"""Hugging Face image-classification models (``hf:PATH_OR_NAME``) as classifiers.

The model with its final Linear (``classifier``) replaced by the identity is the encoder: its ``logits`` output
is then ``h``, whatever pooling the architecture does (CLS token for ViT/DeiT/BEiT, mean for Swin/ConvNeXt).
``preprocess`` is the model's own image processor; class names come from ``config.id2label``. Layer taps are
the outermost list of blocks (``block0..`` for ``layer``/``layers``/``blocks``, ``stage0..`` for ``stages``).
"""

from __future__ import annotations

import os

import torch
from PIL import Image
from torch import nn

from robustsig.errors import InputError
from robustsig.models.anatomy import children_paths, final_linear_path, probe_taps, split_final_linear
from robustsig.models.classifier import Classifier
from robustsig.models.fetch import offline_hint, unreachable
from robustsig.models.options import LoadOptions, fixed_head_classnames
from robustsig.models.spec import ModelSpec

_BLOCK_CONTAINERS = {"layer": "block", "layers": "block", "blocks": "block", "stages": "stage"}


class HFImageEncoder(nn.Module):
    """``x -> model(pixel_values=x).logits`` of a model whose classifier was replaced by the identity."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


class HFPreprocess:
    """PIL image -> ``pixel_values`` tensor ``(3, H, W)`` with a Hugging Face image processor (picklable, so
    DataLoader workers can use it)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFPreprocess({type(self.processor).__name__})"


def load(spec: ModelSpec, options: LoadOptions) -> Classifier:
    """Build the classifier of an ``hf:PATH_OR_NAME`` spec."""
    try:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
    except ImportError:
        raise InputError("hf: models need the transformers package: pip install 'robustsig[hf]'") from None
    source = spec.name
    is_dir = os.path.isdir(source)
    if source.startswith(("/", ".", "~")) and not is_dir:
        raise InputError(f"hf:{source}: no such folder; pass a folder written by save_pretrained or a hub name")
    local_only = is_dir or not options.allow_download
    if not local_only:
        from huggingface_hub import constants

        local_only = unreachable(constants.ENDPOINT) is not None  # no network: the cache is all there is
    try:
        model = AutoModelForImageClassification.from_pretrained(source, local_files_only=local_only)
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as err:
        first = (str(err).splitlines()[0] if str(err) else type(err).__name__).rstrip(".")
        searched = ("Only the local Hugging Face cache was searched (downloads are off or the hub is unreachable)."
                    if local_only else "")
        hint = "" if is_dir else f" {searched} {offline_hint(f'hf:{source}', 'hf:/path/to/save_pretrained_folder')}"
        raise InputError(f"cannot load Hugging Face model {source!r}: {first}.{hint}") from None
    model.eval()
    head = split_final_linear(model, final_linear_path(model, ("classifier", "head", "fc")))
    id2label = getattr(model.config, "id2label", None) or {}
    default = [str(id2label.get(i, id2label.get(str(i), f"class{i}"))) for i in range(head.out_features)]
    names = fixed_head_classnames(options, head.out_features, default=default)
    encoder = HFImageEncoder(model)
    preprocess = HFPreprocess(processor)
    size = tuple(preprocess(Image.new("RGB", (256, 256))).shape[1:])
    cls_token = any(name.endswith("cls_token") for name, _ in model.named_parameters())
    taps = probe_taps(encoder, _tap_paths(encoder), size, cls_token=cls_token)
    return Classifier(encoder, head, preprocess=preprocess, classnames=names, taps=taps,
                      meta={"spec": str(spec), "family": "hf", "arch": source, "weights": None,
                            "random_init": False, "build": {}})


def _tap_paths(encoder: HFImageEncoder) -> dict[str, str]:
    """The outermost block list (``vit.layers``, ``swin.encoder.layers``, ``convnext.encoder.stages``...)."""
    for path, module in encoder.named_modules():
        prefix = _BLOCK_CONTAINERS.get(path.rpartition(".")[2])
        if prefix and isinstance(module, nn.ModuleList) and len(module):
            return children_paths(encoder, path, prefix)
    return {}
