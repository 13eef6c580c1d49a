"""Zero-shot heads: a linear layer from class names x prompt templates through a CLIP text tower.

Row ``k`` of the head is ``exp(logit_scale) * normalize(mean_t normalize(text(template_t(class_k))))``, so
``head(normalize(image_embedding))`` equals CLIP's ``logit_scale.exp() * img @ text.T`` logits (``100 * ...``
for trained models, whose scale is clamped at 100). Models with a ``logit_bias`` (SigLIP) get it as the bias.

Heads are built in batches of prompts with a progress bar, and cached on disk as safetensors keyed by the
text tower's weights, the tokenizer, the class names and the templates: a changed prompt never reuses a
stale head.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from robustsig._atomic import atomic_output
from robustsig._progress import progress
from robustsig.errors import InputError
from robustsig.models.classifier import state_fingerprint
from robustsig.models.prompts import (
    ClassnamesLike,
    TemplatesLike,
    fill,
    imagenet_classnames,
    resolve_classnames,
    resolve_templates,
)

_CACHE_VERSION = "robustsig-zeroshot-1"


def default_cache_dir() -> Path:
    """``$ROBUSTSIG_CACHE``, else ``$XDG_CACHE_HOME/robustsig``, else ``~/.cache/robustsig``."""
    if os.environ.get("ROBUSTSIG_CACHE"):
        return Path(os.environ["ROBUSTSIG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "robustsig"


def zero_shot_head(model: nn.Module, tokenizer, classnames: ClassnamesLike = None, templates: TemplatesLike = None,
                   *, batch_size: int = 256, device: str | torch.device | None = None,
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True) -> nn.Linear:
    """Build (or read from the cache) the zero-shot head of a CLIP model.

    Args:
        model: an open_clip model (``encode_text``, ``logit_scale``, optional ``logit_bias``).
        tokenizer: its tokenizer (``open_clip.get_tokenizer(arch)``): list of strings -> token ids.
        classnames: list, or a text file with one name per line; default: ImageNet's 1,000 (open_clip's).
        templates: list of strings with ``{}``/``{c}`` (or callables), or a text file with one per line;
            default: OpenAI's 80 ImageNet templates.
        batch_size: prompts per text forward pass.
        device: where to run the text tower (default: where the model is).
        cache_dir: folder of cached heads (default :func:`default_cache_dir`).
        use_cache: read and write the cache.

    Returns:
        ``nn.Linear(d, K)`` on ``device``, float32; a bias only when the model has a ``logit_bias``.

    Example:
        >>> import open_clip, tempfile
        >>> model = open_clip.create_model("RN50")
        >>> head = zero_shot_head(model, open_clip.get_tokenizer("RN50"), ["cat", "dog"], ["a photo of a {}."],
        ...                       cache_dir=tempfile.mkdtemp())
        >>> tuple(head.weight.shape)
        (2, 1024)
    """
    names = resolve_classnames(classnames, default=imagenet_classnames())
    prompts = resolve_templates(templates)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    for attr in ("encode_text", "logit_scale"):
        if not hasattr(model, attr):
            raise InputError(f"zero_shot_head needs a CLIP model with {attr!r}; {type(model).__name__} has none")
    device = torch.device(device) if device is not None else model.logit_scale.device
    cache_path = None
    if use_cache:
        key = _cache_key(model, tokenizer, names, prompts)
        cache_path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_path = cache_path / f"zeroshot-{key}.safetensors"
        cached = _read_cached(cache_path, len(names))
        if cached is not None:
            return _linear(cached["weight"], cached.get("bias"), device)
    weight = _class_embeddings(model, tokenizer, names, prompts, batch_size, device)
    weight = (model.logit_scale.detach().to(device, torch.float64).exp() * weight).to(torch.float32)
    logit_bias = getattr(model, "logit_bias", None)
    bias = None if logit_bias is None else logit_bias.detach().to(device, torch.float32).reshape(-1).expand(len(names))
    if cache_path is not None:
        _write_cached(cache_path, weight, bias)
    return _linear(weight, bias, device)


def _class_embeddings(model: nn.Module, tokenizer, names: list[str], templates: list[str], batch_size: int,
                      device: torch.device) -> torch.Tensor:
    """``(K, d)`` float64: per class, the renormalized mean of the L2-normalized template embeddings."""
    prompts = [(k, fill(template, name)) for k, name in enumerate(names) for template in templates]
    sums: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(prompts), batch_size)
            for start in progress(starts, total=len(starts), desc="zero-shot head", unit="batch"):
                chunk = prompts[start:start + batch_size]
                tokens = tokenizer([text for _, text in chunk]).to(device)
                emb = model.encode_text(tokens).to(torch.float64)
                emb = emb / emb.square().sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)
                if sums is None:
                    sums = torch.zeros(len(names), emb.shape[-1], dtype=torch.float64, device=device)
                sums.index_add_(0, torch.tensor([k for k, _ in chunk], device=device), emb)
    finally:
        model.train(was_training)
    mean = sums / len(templates)
    return mean / mean.square().sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)


def _cache_key(model: nn.Module, tokenizer, names: list[str], templates: list[str]) -> str:
    text_state = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}
    tok = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}:{getattr(tokenizer, 'context_length', '')}"
    digest = hashlib.blake2b(digest_size=16)
    for part in (_CACHE_VERSION, state_fingerprint(text_state), tok, json.dumps(names), json.dumps(templates)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _read_cached(path: Path, num_classes: int) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        cached = load_file(str(path))
    except (SafetensorError, OSError):
        return None  # a damaged cache entry is rebuilt and overwritten
    weight = cached.get("weight")
    if weight is None or weight.ndim != 2 or weight.shape[0] != num_classes:
        return None
    return cached


def _write_cached(path: Path, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": weight.detach().cpu().contiguous()}
    if bias is not None:
        tensors["bias"] = bias.detach().cpu().contiguous().clone()
    with atomic_output(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": _CACHE_VERSION})


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device) -> nn.Linear:
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=device)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return head
