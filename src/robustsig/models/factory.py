"""One factory from a spec string to a ready :class:`~robustsig.models.classifier.Classifier`."""

from __future__ import annotations

import importlib
import os

import torch

from robustsig.distributed import resolve_device
from robustsig.errors import InputError
from robustsig.models.classifier import Classifier
from robustsig.models.fetch import downloads_allowed
from robustsig.models.options import LoadOptions
from robustsig.models.prompts import ClassnamesLike, TemplatesLike
from robustsig.models.spec import ModelSpec

_LOADERS = {  # family -> module with load(spec, options) -> Classifier (imported on first use: timm and
    "openclip": "robustsig.models.openclip",  # transformers are slow to import)
    "timm": "robustsig.models.timm_models",
    "torchvision": "robustsig.models.torchvision_models",
    "hf": "robustsig.models.hf",
    "bundled": "robustsig.models.bundled",
}


def load_classifier(spec: str | ModelSpec, *, device: str | torch.device | None = None,
                    classnames: ClassnamesLike = None, templates: TemplatesLike = None,
                    cache_dir: str | os.PathLike | None = None, use_cache: bool = True, batch_size: int = 256,
                    allow_download: bool | None = None) -> Classifier:
    """Build the classifier a spec names, in eval mode on ``device``.

    Args:
        spec: ``openclip:ARCH@TAG_OR_PATH``, ``timm:NAME[@PATH]``, ``torchvision:NAME[@WEIGHTS_OR_PATH]``,
            ``hf:PATH_OR_NAME``, ``bundled:mobilenet_v2``/``bundled:efficientnet_lite0`` (see
            :mod:`robustsig.models.spec`). No weights: a random-init model, with a warning and
            ``meta["random_init"] = True``.
        device: where the model runs and the zero-shot head is built (default ``None``/``"auto"``: this
            process's GPU, ``cuda:LOCAL_RANK`` under torchrun, when CUDA is available, else CPU; see
            :func:`robustsig.distributed.resolve_device`).
        classnames: class names (a list, or a text file with one per line). Zero-shot (OpenCLIP) heads are
            built for them (default: ImageNet-1k); for trained heads they only rename the logits and must
            match their count.
        templates: zero-shot prompt templates with ``{}``/``{c}`` (a list or a text file; default: OpenAI's 80).
        cache_dir: zero-shot head cache (default ``$ROBUSTSIG_CACHE`` or ``~/.cache/robustsig``).
        use_cache: read and write that cache.
        batch_size: prompts per text forward pass for zero-shot heads.
        allow_download: whether named weights not in the local caches (Hugging Face, ``~/.cache/clip``, torch
            hub) may be downloaded; default: yes unless ``ROBUSTSIG_OFFLINE``/``HF_HUB_OFFLINE`` is set.

    Returns:
        the classifier; ``meta`` records ``spec``, ``family``, ``arch``, ``weights``, ``random_init``.

    Raises:
        InputError: unknown family, architecture, tag or weights enum (with close matches); a missing or
            unreadable weights file; named weights that are not cached when downloads are off or fail; a device
            torch does not know or this machine lacks.
        UnsafeCheckpointError: a weights file that would run pickled code.

    Example:
        >>> import robustsig as rs
        >>> clf = rs.load_classifier("bundled:mobilenet_v2", device="cpu")
        >>> clf.W.shape, clf.layers[:2]
        (torch.Size([1000, 1280]), ['features0', 'features1'])
    """
    parsed = ModelSpec.parse(spec)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    target = resolve_device(device)
    options = LoadOptions(device=target, classnames=classnames, templates=templates, cache_dir=cache_dir,
                          use_cache=use_cache, batch_size=batch_size, allow_download=downloads_allowed(allow_download))
    loader = importlib.import_module(_LOADERS[parsed.family])
    clf = loader.load(parsed, options)
    return clf.to(target).eval()
