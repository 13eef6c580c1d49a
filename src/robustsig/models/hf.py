"""Hugging Face image-classification models (``hf:PATH_OR_NAME``) as classifiers.

The model with its final Linear (``classifier``) replaced by the identity is the encoder: its ``logits`` output
is then ``h``, whatever pooling the architecture does (CLS token for ViT/DeiT/BEiT, mean for Swin/ConvNeXt).
``preprocess`` is the model's own image processor; class names come from ``config.id2label``. Layer taps are
the outermost list of blocks (``block0..`` for ``layer``/``layers``/``blocks``, ``stage0..`` for ``stages``).

Checkpoints are data, never code: every ``from_pretrained`` call passes ``trust_remote_code=False``, and a local
folder whose ``config.json`` (or processor config) names its own Python classes (``auto_map``) is refused before
transformers reads it (transformers would otherwise ask on stdin whether to run the folder's code). Weights load as
safetensors, or as a pickled ``pytorch_model.bin`` of plain tensors (``torch.load(weights_only=True)``); a pickle
that needs more is refused with the conversion to safetensors.
"""

from __future__ import annotations

import json
import os
import pickle

import torch
from PIL import Image
from torch import nn

from robustsig.errors import InputError, UnsafeCheckpointError
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
    if is_dir:
        _refuse_remote_code(source)
    local_only = is_dir or not options.allow_download
    if not local_only:
        from huggingface_hub import constants

        local_only = unreachable(constants.ENDPOINT) is not None  # no network: the cache is all there is
    try:
        model = AutoModelForImageClassification.from_pretrained(source, local_files_only=local_only,
                                                                trust_remote_code=False)
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # a damaged pickle, not one needing code
            raise InputError(f"cannot load Hugging Face model {source!r}: its weights file is damaged "
                             f"({str(err).splitlines()[0]})") from None
        raise UnsafeCheckpointError(
            f"hf:{source}: its pytorch_model.bin is a pickle that needs Python objects beyond tensors, and unpickling "
            "it could run arbitrary code. Convert it once, on a machine you trust, to safetensors: "
            "`python -c \"import torch, safetensors.torch as st; sd = torch.load('pytorch_model.bin', "
            "weights_only=False); st.save_file({k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, "
            "'model.safetensors')\"` in the model folder, then remove pytorch_model.bin") from None
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # RuntimeError: a damaged weights file
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


_CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")


def _refuse_remote_code(folder: str) -> None:
    """Refuse a model folder whose configs name Python code of the folder (``auto_map``) to build the model or its
    processor: loading it would run that code."""
    for name in _CONFIG_FILES:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as err:
            raise InputError(f"hf:{folder}: cannot read {name} ({err}); expected a folder written by "
                             "save_pretrained") from None
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if auto_map:
            classes = ", ".join(f"{key} -> {value}" for key, value in dict(auto_map).items()) \
                if isinstance(auto_map, dict) else str(auto_map)
            raise UnsafeCheckpointError(
                f"hf:{folder}: {name} has an auto_map ({classes}): the model is built by Python code shipped in the "
                "folder, and robustsig reads checkpoints as data only, never running their code. Use a model that "
                "transformers builds itself (no auto_map), or save the weights of this one as a state dict and "
                "load them with the spec of its architecture")


def _tap_paths(encoder: HFImageEncoder) -> dict[str, str]:
    """The outermost block list (``vit.layers``, ``swin.encoder.layers``, ``convnext.encoder.stages``...)."""
    for path, module in encoder.named_modules():
        prefix = _BLOCK_CONTAINERS.get(path.rpartition(".")[2])
        if prefix and isinstance(module, nn.ModuleList) and len(module):
            return children_paths(encoder, path, prefix)
    return {}
