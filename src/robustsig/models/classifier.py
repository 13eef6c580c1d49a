"""The one model type every analysis sees: ``logits = W @ encode(x) + b``.

A :class:`Classifier` splits any image model into an *encoder* (image batch -> ``h``, the input of the last
linear layer) and a linear *head* (``W``, ``b``). The paper's metrics (kurtosis of ``h``, SVD of ``W``,
importance of singular directions, concept probing) all read these two parts. Named *layer taps* expose
intermediate activations (for CKA and all-layer analyses), pooled per sample so memory stays bounded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from robustsig.errors import InputError

Layout = Literal["tokens", "spatial", "vector"]
Pooling = Literal["auto", "cls", "mean"]


@dataclass(frozen=True)
class LayerTap:
    """Where to read one intermediate activation and how it is laid out.

    Attributes:
        module: dotted path of a submodule of the classifier's encoder (``"visual.transformer.resblocks.3"``).
        layout: ``"tokens"`` for ``(N, L, D)`` token sequences (CLS token first), ``"spatial"`` for
            ``(N, C, H, W)`` feature maps, ``"vector"`` for ``(N, D)``.
        seq_first: the module returns ``(L, N, D)`` (older transformer layouts); pooled as if ``(N, L, D)``.
        cls_token: token layouts only: the first token is a class token (``"auto"`` pooling reads it); when
            False (Swin-like token grids) ``"auto"`` averages the tokens and ``"cls"`` is refused.
        channels_last: spatial layouts only: the module returns ``(N, H, W, C)`` (Swin stages).
    """

    module: str
    layout: Layout
    seq_first: bool = False
    cls_token: bool = True
    channels_last: bool = False


def pool_activation(x: torch.Tensor, tap: LayerTap, pooling: Pooling = "auto") -> torch.Tensor:
    """Reduce one layer's output to one vector per sample.

    Args:
        x: the module's output for a batch.
        tap: how ``x`` is laid out.
        pooling: ``"cls"`` (the first token; token layouts with a class token only), ``"mean"`` (over tokens
            or space), or ``"auto"`` (the class token where there is one, else the mean).

    Returns:
        ``(N, D)`` tensor.
    """
    if isinstance(x, (tuple, list)):  # e.g. Hugging Face blocks return (hidden_states, ...)
        x = x[0]
    if tap.layout == "vector":
        return x.reshape(x.shape[0], -1)
    if tap.layout == "spatial":
        if pooling == "cls":
            raise InputError(f"pooling='cls' needs a token layout; layer {tap.module!r} is a spatial feature map "
                             "(use pooling='mean')")
        return x.flatten(1, 2).mean(dim=1) if tap.channels_last else x.flatten(2).mean(dim=2)
    if tap.layout == "tokens":
        if tap.seq_first:
            x = x.transpose(0, 1)
        if pooling == "cls" and not tap.cls_token:
            raise InputError(f"pooling='cls' needs a class token; layer {tap.module!r} has none (use "
                             "pooling='mean')")
        if pooling in ("auto", "cls") and tap.cls_token:
            return x[:, 0]
        return x.mean(dim=1)
    raise InputError(f"unknown layer layout {tap.layout!r}; expected 'tokens', 'spatial' or 'vector'")


def flatten_activation(x: torch.Tensor, tap: LayerTap) -> torch.Tensor:
    """One layer's output as ``(N, everything)``, nothing pooled: ``flatten(1)`` of the sample-first output (the
    view PyTorch-Model-Compare, the paper's CKA, compares; token-first ``(L, N, D)`` outputs are transposed).

    >>> flatten_activation(torch.zeros(197, 2, 768), LayerTap("blocks.0", "tokens", seq_first=True)).shape
    torch.Size([2, 151296])
    """
    if isinstance(x, (tuple, list)):
        x = x[0]
    if tap.layout == "tokens" and tap.seq_first:
        x = x.transpose(0, 1)
    return x.flatten(1)


LayerReducer = Callable[[str, torch.Tensor, LayerTap], torch.Tensor]
"""``(layer name, its output, its tap) -> tensor``: what :meth:`Classifier.forward_with_layers` keeps of a layer
when given instead of a pooling name (e.g. a minibatch's Gram matrix, so the whole output is never kept)."""


class Classifier(nn.Module):
    """An image classifier written as ``logits = head(encoder(x))`` with a linear head.

    Args:
        encoder: module mapping a preprocessed image batch ``(N, 3, H, W)`` to ``h`` of shape ``(N, d)``.
        head: the linear layer ``(K, d)`` (bias optional) mapping ``h`` to ``K`` class logits.
        preprocess: callable turning one PIL image into the tensor the encoder expects.
        classnames: the ``K`` class names, in logit order.
        taps: named intermediate layers of ``encoder`` that can be read (see :class:`LayerTap`).
        meta: provenance (``spec``, ``arch``, ``weights``, ``random_init``...); saved with every result.

    Example:
        >>> import torch
        >>> enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
        >>> clf = Classifier(enc, torch.nn.Linear(4, 3), preprocess=lambda im: im, classnames=["a", "b", "c"])
        >>> clf(torch.zeros(2, 3, 2, 2)).shape
        torch.Size([2, 3])
    """

    def __init__(self, encoder: nn.Module, head: nn.Linear, *, preprocess: Callable[[Any], torch.Tensor],
                 classnames: Sequence[str], taps: Mapping[str, LayerTap] | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise InputError(f"head must be a torch.nn.Linear, got {type(head).__name__}")
        if len(classnames) != head.out_features:
            raise InputError(f"{len(classnames)} class names for a head with {head.out_features} outputs; "
                             "pass one name per logit")
        self.encoder = encoder
        self.head = head
        self.preprocess = preprocess
        self.classnames = list(classnames)
        self.taps: dict[str, LayerTap] = dict(taps or {})
        self.meta: dict[str, Any] = dict(meta or {})
        for name, tap in self.taps.items():
            self._tap_module(name, tap)  # fail now, not at extraction time

    # --- the split the paper's metrics read -------------------------------------------------------------
    @property
    def W(self) -> torch.Tensor:  # noqa: N802 (the paper's name)
        """Head weight ``(K, d)``."""
        return self.head.weight

    @property
    def b(self) -> torch.Tensor | None:
        """Head bias ``(K,)`` or ``None``."""
        return self.head.bias

    @property
    def layers(self) -> list[str]:
        """Names of the layer taps, input side first."""
        return list(self.taps)

    @property
    def spec(self) -> str:
        return str(self.meta.get("spec", ""))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``h``: the head's input for a preprocessed batch."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))

    def named_parameters(self, *args: Any, **kwargs: Any):
        """As ``nn.Module``'s, with a head built on first use (a zero-shot head) built first, so an optimizer
        never holds its placeholders."""
        materialize = getattr(self.head, "materialize", None)
        if materialize is not None:
            materialize()
        return super().named_parameters(*args, **kwargs)

    # --- intermediate layers -----------------------------------------------------------------------------
    def _tap_module(self, name: str, tap: LayerTap) -> nn.Module:
        try:
            return self.encoder.get_submodule(tap.module)
        except AttributeError:
            raise InputError(f"layer tap {name!r} points to {tap.module!r}, which is not a submodule of the "
                             "encoder") from None

    def forward_with_layers(self, x: torch.Tensor, layers: Sequence[str] = (), pooling: Pooling | LayerReducer = "auto"
                            ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass returning ``(h, logits, {layer: (N, D) pooled activation})``.

        Args:
            x: preprocessed batch.
            layers: names from :attr:`layers`; ``"all"`` is not accepted here, expand it first.
            pooling: see :func:`pool_activation`; or a :data:`LayerReducer` called on each layer's output.
        """
        unknown = [name for name in layers if name not in self.taps]
        if unknown:
            raise InputError(f"unknown layer(s) {unknown}; this model has {self.layers or 'no layer taps'}")
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name in layers:
            tap = self.taps[name]

            def hook(_module, _inputs, output, name=name, tap=tap):
                captured[name] = (pooling(name, output, tap) if callable(pooling)
                                  else pool_activation(output, tap, pooling))

            handles.append(self._tap_module(name, tap).register_forward_hook(hook))
        try:
            h = self.encode(x)
            logits = self.head(h)
        finally:
            for handle in handles:
                handle.remove()
        return h, logits, {name: captured[name] for name in layers}

    # --- identity ----------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A digest of every parameter and buffer (names, shapes, dtypes, values): equal weights give equal
        fingerprints, so activation stores are keyed by the weights actually used, not by a file name.

        After :meth:`pin_fingerprint` the digest is computed once and returned again while no tensor was changed
        in place or replaced since (checked from each tensor's storage address and version counter)."""
        pin = self.__dict__.get("_fingerprint_pin")
        if pin is not None and pin[0] == self._state_stamp():
            return pin[1]
        return state_fingerprint(self.state_dict())

    def pin_fingerprint(self) -> str:
        """Compute the fingerprint and keep it for later calls (for a classifier whose weights its owner never
        changes, e.g. a study's pool model keyed against every dataset's store); any in-place change or
        replacement of a tensor seen afterwards drops the pin.

        Example:
            >>> clf = Classifier(torch.nn.Identity(), torch.nn.Linear(2, 2), preprocess=lambda im: im,
            ...                  classnames=["a", "b"])
            >>> clf.pin_fingerprint() == clf.fingerprint()
            True
        """
        self.__dict__.pop("_fingerprint_pin", None)
        digest = state_fingerprint(self.state_dict())
        self.__dict__["_fingerprint_pin"] = (self._state_stamp(), digest)
        return digest

    def _state_stamp(self) -> tuple:
        return tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)
                     for name, t in self.state_dict(keep_vars=True).items())


def add_zero_bias(head: nn.Linear) -> bool:
    """Give a bias-free linear ``head`` a trainable bias of zeros (in place; the head's logits are unchanged): the
    bias wise-ft's ``ClassificationHead`` adds to CLIP's zero-shot head, and the bias a head without one is taken to
    have when it meets one with a bias (Wise-FT, loading a checkpoint). A head with a bias is left as it is.

    Args:
        head: the linear layer (a zero-shot head not built yet is built first).

    Returns:
        whether a bias was added.

    Example:
        >>> head = torch.nn.Linear(3, 2, bias=False)
        >>> add_zero_bias(head), head.bias.tolist(), head.bias.requires_grad
        (True, [0.0, 0.0], True)
    """
    if head._parameters.get("bias") is not None:  # not .bias: that would build a lazy zero-shot head
        return False
    weight = head.weight  # builds a lazy zero-shot head
    head.bias = nn.Parameter(torch.zeros(head.out_features, dtype=weight.dtype, device=weight.device))
    return True


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A 128-bit digest of named tensors (names, shapes, dtypes and values), independent of their order and
    device.

    Example:
        >>> state_fingerprint({"w": torch.zeros(2)}) == state_fingerprint({"w": torch.zeros(2)})
        True
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        t = t.reshape(-1)
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
