"""Zero-shot heads: a linear layer from class names x prompt templates through a CLIP text tower.

Row ``k`` of the head is ``exp(logit_scale) * normalize(mean_t normalize(text(template_t(class_k))))``, so
``head(normalize(image_embedding))`` equals CLIP's ``logit_scale.exp() * img @ text.T`` logits (``100 * ...``
for trained models, whose scale is clamped at 100). Models with a ``logit_bias`` (SigLIP) get it as the bias.

Heads are built in batches of prompts with a progress bar, and cached on disk as safetensors keyed by the
text tower's weights, the tokenizer, the class names and the templates: a changed prompt never reuses a
stale head.

Speed (hand-written, because open_clip's ``build_zero_shot_classifier`` runs every prompt through all 77
positions): open_clip's text towers are causal, so a prompt's embedding (read at its end-of-text token) depends
only on the tokens up to that token. Prompts are sorted by that position and each batch runs only up to its
longest prompt's end-of-text token (ImageNet's 80,000 prompts end at position <= 21 of 77), with the causal mask
and positional embeddings sliced to match. Towers that are not causal, pool another token or are not open_clip's
own run open_clip's ``encode_text`` on the full sequence. :class:`LazyZeroShotHead` defers the whole build until
the head is first used, so ``encode``-only use never pays for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from robustsig._atomic import atomic_output
from robustsig._cache import default_cache_dir
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
    _check_model(model, batch_size)
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


def lazy_zero_shot_head(model: nn.Module, tokenizer, classnames: ClassnamesLike = None,
                        templates: TemplatesLike = None, **options: Any) -> LazyZeroShotHead:
    """:func:`zero_shot_head` built on first use (see :class:`LazyZeroShotHead`).

    The class names, templates and options are checked now; the text tower runs (or the cache is read) only when
    the head's weight, bias, output or state dict is first asked for.

    Args:
        model, tokenizer, classnames, templates: as for :func:`zero_shot_head`.
        **options: :func:`zero_shot_head`'s keyword options.

    Returns:
        A :class:`LazyZeroShotHead` of shape ``(K, d)``.

    Example:
        >>> import open_clip
        >>> model = open_clip.create_model("RN50")
        >>> head = lazy_zero_shot_head(model, open_clip.get_tokenizer("RN50"), ["cat", "dog"], ["a {}."],
        ...                            use_cache=False)
        >>> head.out_features, head.in_features, head.built
        (2, 1024, False)
    """
    names = resolve_classnames(classnames, default=imagenet_classnames())
    prompts = resolve_templates(templates)
    _check_model(model, options.get("batch_size", 256))
    with torch.inference_mode():
        probe = tokenizer([fill(prompts[0], names[0])]).to(model.logit_scale.device)
        tower = causal_text_tower(model)
        width = (tower.encode(probe[:, :int(tower.end_positions(probe).max()) + 1]) if tower is not None
                 else model.encode_text(probe)).shape[-1]
    return LazyZeroShotHead(lambda: zero_shot_head(model, tokenizer, names, prompts, **options), width, len(names),
                            bias=getattr(model, "logit_bias", None) is not None)


def _check_model(model: nn.Module, batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    for attr in ("encode_text", "logit_scale"):
        if not hasattr(model, attr):
            raise InputError(f"zero_shot_head needs a CLIP model with {attr!r}; {type(model).__name__} has none")


def _class_embeddings(model: nn.Module, tokenizer, names: list[str], templates: list[str], batch_size: int,
                      device: torch.device) -> torch.Tensor:
    """``(K, d)`` float64: per class, the renormalized mean of the L2-normalized template embeddings."""
    texts = [fill(template, name) for name in names for template in templates]
    classes = torch.arange(len(names), device=device).repeat_interleave(len(templates))
    sums: torch.Tensor | None = None
    # each module's own mode restored after: a lazy build must not flip the image tower (shared with the
    # classifier's encoder, set to eval there) back to the text model's training mode
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            tokens = tokenizer(texts).to(device)
            tower = causal_text_tower(model)
            batches = _length_sorted_batches(tower, tokens, batch_size)
            total = sum(len(rows) * length for rows, length in batches)
            with progress(total=total, desc="zero-shot head", unit="token", unit_scale=True) as bar:
                for rows, length in batches:
                    emb = (tower.encode(tokens[rows, :length]) if tower is not None
                           else model.encode_text(tokens[rows])).to(torch.float64)
                    emb = emb / emb.square().sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)
                    if sums is None:
                        sums = torch.zeros(len(names), emb.shape[-1], dtype=torch.float64, device=device)
                    sums.index_add_(0, classes[rows], emb)
                    bar.update(len(rows) * length)
    finally:
        for module, training in modes:
            module.training = training
    mean = sums / len(templates)
    return mean / mean.square().sum(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)


def _length_sorted_batches(tower: CausalTextTower | None, tokens: torch.Tensor, batch_size: int
                           ) -> list[tuple[torch.Tensor, int]]:
    """``(rows, length)`` per batch: with a causal tower, prompts sorted by end-of-text position and each batch cut
    after its last end-of-text token; otherwise batches in order at the full context length."""
    count, context = tokens.shape
    if tower is None:
        return [(torch.arange(start, min(start + batch_size, count), device=tokens.device), context)
                for start in range(0, count, batch_size)]
    ends = tower.end_positions(tokens)
    order = torch.argsort(ends, stable=True)
    return [(rows, int(ends[rows].max()) + 1) for rows in order.split(batch_size)]


@dataclass(frozen=True)
class CausalTextTower:
    """The parts of an open_clip text tower with a causal mask, run on token sequences cut short.

    Only built by :func:`causal_text_tower`, which checks that cutting cannot change an embedding.
    """

    token_embedding: nn.Module
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Any
    attn_mask: torch.Tensor
    pool_type: str
    eos_id: int | None

    def end_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """The position each prompt's embedding is read at (what open_clip's ``text_global_pool`` picks)."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` on ``(B, L)`` tokens with ``L`` <= the context length (every prompt's
        end-of-text token inside): positional embeddings and the causal mask cut to ``L``."""
        from open_clip.transformer import text_global_pool

        length = tokens.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = text_global_pool(self.ln_final(x), tokens, self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is None:
            return x
        return self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection


def causal_text_tower(model: nn.Module) -> CausalTextTower | None:
    """The cut-short text tower of an open_clip ``CLIP``/``CustomTextCLIP`` whose text attention is causal and
    whose embedding is read at the end-of-text token; ``None`` for anything else (then the full sequence runs)."""
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import TextTransformer

    if type(model).encode_text is CLIP.encode_text:
        parts, pool_type, eos_id = model, getattr(model, "text_pool_type", None), getattr(model, "text_eos_id", None)
    elif (type(model).encode_text is CustomTextCLIP.encode_text and isinstance(model.text, TextTransformer)
          and type(model.text).forward is TextTransformer.forward and model.text.cls_emb is None
          and not model.text.use_pad_mask):
        parts, pool_type, eos_id = model.text, model.text.pool_type, getattr(model.text, "eos_id", None)
    else:
        return None
    if "encode_text" in vars(model):  # replaced on the instance (a wrapper): run what the caller put there
        return None
    mask = getattr(parts, "attn_mask", None)
    if pool_type not in ("argmax", "eos") or (pool_type == "eos" and eos_id is None) or not _is_causal(mask):
        return None
    return CausalTextTower(parts.token_embedding, parts.positional_embedding, parts.transformer, parts.ln_final,
                           parts.text_projection, mask, pool_type, eos_id)


def _is_causal(mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` is open_clip's additive causal mask: ``-inf`` exactly above the diagonal, finite elsewhere."""
    if mask is None or mask.ndim != 2 or mask.shape[0] != mask.shape[1] or not mask.is_floating_point():
        return False
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.equal(torch.isneginf(mask), above)) and bool(torch.isfinite(mask[~above]).all())


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
        # serialised in memory and written by Python: a full disk is an OSError naming the file
        temporary.write_bytes(safetensors.torch.save(tensors, metadata={"format": _CACHE_VERSION}))


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device) -> nn.Linear:
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=device)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return head


class LazyZeroShotHead(nn.Linear):
    """A zero-shot head built the first time it is used: its weight or bias read, a forward pass, a state dict.

    Until then the parameters are placeholders on the ``meta`` device (no memory, no text-tower pass), so a
    classifier used only through ``encode`` or its layer taps never builds the head. Moves (``.to(device)``) made
    before the build are replayed on the built head.

    Args:
        build: returns the head (an ``nn.Linear`` of the declared shape); called at most once, then dropped
            (with the text tower it holds).
        in_features, out_features: the head's shape.
        bias: whether the built head has a bias.

    Example:
        >>> head = LazyZeroShotHead(lambda: nn.Linear(4, 3, bias=False), 4, 3, bias=False)
        >>> head.built
        False
        >>> head(torch.zeros(2, 4)).shape, head.built
        (torch.Size([2, 3]), True)
    """

    def __init__(self, build: Callable[[], nn.Linear], in_features: int, out_features: int, *, bias: bool) -> None:
        super().__init__(in_features, out_features, bias=bias, device="meta")
        self._build: Callable[[], nn.Linear] | None = build
        self._moves: list[Callable[[torch.Tensor], torch.Tensor]] = []

    @property
    def built(self) -> bool:
        return self.__dict__.get("_build") is None

    def materialize(self) -> None:
        """Build the head now (nothing when it is built already)."""
        build = self.__dict__.get("_build")
        if build is None:
            return
        head = build()
        if (head.in_features, head.out_features) != (self.in_features, self.out_features) \
                or (head.bias is None) != (self._parameters["bias"] is None):
            raise RuntimeError(f"zero-shot head built as {head} where {self.out_features}x{self.in_features} "
                               f"(bias: {self._parameters['bias'] is not None}) was declared")
        self._parameters["weight"] = head.weight
        self._parameters["bias"] = head.bias
        self._build = None
        for move in self._moves:
            super()._apply(move)
        self._moves.clear()

    def __getattr__(self, name: str) -> Any:
        if name in ("weight", "bias") and self.__dict__.get("_build") is not None:
            self.materialize()
        return super().__getattr__(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.materialize()
        return super().forward(x)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        if not self.built:
            self._moves.append(fn)
            return self
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - torch's signature
        self.materialize()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        self.materialize()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        bias = self._parameters["bias"] is not None  # not self.bias: reading it would build the head
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"
                + ("" if self.built else ", not built yet"))
