"""Finding a model's parts: its final linear layer (cut off as the head) and its blocks (the layer taps).

The family loaders name candidate modules; :func:`probe_taps` settles how each block's output is laid out
(token sequence, feature map, channels first or last) from one forward pass of a blank image, so the same
code serves every architecture of a zoo without a table per model.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from robustsig.errors import InputError
from robustsig.models.classifier import LayerTap


def final_linear_path(model: nn.Module, attrs: Sequence[str]) -> str:
    """Dotted path of a model's last ``nn.Linear``: the first of ``attrs`` that exists, when it is a Linear or a
    Sequential ending with one (``"fc"``, ``"classifier.1"``, ``"heads.head"``).

    Raises:
        InputError: none of ``attrs`` exists, or the classifier there does not end with a Linear.
    """
    for attr in attrs:
        try:
            holder = model.get_submodule(attr)
        except AttributeError:
            continue
        if isinstance(holder, nn.Linear):
            return attr
        if isinstance(holder, nn.Sequential) and len(holder) and isinstance(holder[-1], nn.Linear):
            return f"{attr}.{list(holder._modules)[-1]}"
        raise InputError(f"{type(model).__name__}.{attr} is a {type(holder).__name__}, not a linear layer (or a "
                         "Sequential ending with one); robustsig needs a linear head to split off")
    raise InputError(f"{type(model).__name__} has no classifier at any of {list(attrs)}; robustsig needs a model "
                     "whose last layer is linear")


def split_final_linear(model: nn.Module, path: str) -> nn.Linear:
    """Replace the Linear at ``path`` by ``nn.Identity`` (in place), so that ``model(x)`` returns the head's
    input, and return the Linear."""
    head = model.get_submodule(path)
    if not isinstance(head, nn.Linear):
        raise InputError(f"{type(model).__name__}.{path} is a {type(head).__name__}, not a linear head")
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, nn.Identity())
    return head


def children_paths(model: nn.Module, container: str, prefix: str) -> dict[str, str]:
    """``{prefix0: "container.<first child>", prefix1: ...}`` for a Sequential/ModuleList, else ``{}``."""
    try:
        module = model.get_submodule(container)
    except AttributeError:
        return {}
    if not isinstance(module, (nn.Sequential, nn.ModuleList)):
        return {}
    return {f"{prefix}{i}": f"{container}.{child}" for i, child in enumerate(module._modules)}


def probe_taps(encoder: nn.Module, paths: Mapping[str, str], image_size: int | Sequence[int], *,
               cls_token: bool) -> dict[str, LayerTap]:
    """Layer taps for ``paths`` (name -> submodule of ``encoder``), their layouts read from one forward pass.

    Args:
        encoder: the image encoder (left in its original train/eval mode).
        paths: candidate layers, input side first.
        image_size: the encoder's input resolution (int or ``(H, W)``).
        cls_token: token outputs start with a class token.

    Returns:
        name -> :class:`LayerTap` for each candidate whose output is a tensor of 2-4 dims; candidates that do
        not run in the forward pass or return something else are left out with a warning.
    """
    if not paths:
        return {}
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        return hook

    handles = [encoder.get_submodule(path).register_forward_hook(record(name)) for name, path in paths.items()]
    reference = next(encoder.parameters())
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            encoder(torch.zeros(1, 3, *size, device=reference.device, dtype=reference.dtype))
    finally:
        encoder.train(was_training)
        for handle in handles:
            handle.remove()
    taps, skipped = {}, []
    for name, path in paths.items():
        tap = _layout(path, shapes.get(name, ()), cls_token)
        if tap is None:
            skipped.append(name)
        else:
            taps[name] = tap
    if skipped:
        warnings.warn(f"{type(encoder).__name__}: no layer tap for {skipped} (their output is not a 2-4 dim tensor "
                      "in the forward pass)", stacklevel=3)
    return taps


def _layout(path: str, shape: tuple[int, ...], cls_token: bool) -> LayerTap | None:
    """Layout of an output of batch size 1: ``(1, D)``; ``(1, L, D)``/``(L, 1, D)``; ``(1, C, H, W)``/``(1, H, W, C)``."""
    if len(shape) == 2:
        return LayerTap(path, "vector")
    if len(shape) == 3:
        seq_first = shape[0] != 1 and shape[1] == 1
        return LayerTap(path, "tokens", seq_first=seq_first, cls_token=cls_token)
    if len(shape) == 4:
        channels_last = shape[2] != shape[3] and shape[1] == shape[2]
        return LayerTap(path, "spatial", channels_last=channels_last)
    return None
