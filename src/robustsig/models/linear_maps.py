"""The linear maps of an image encoder, and the module surgery that replaces them by low-rank ones.

A *linear map* is any ``nn.Linear`` and any 1x1 ``nn.Conv2d`` (one group, no padding: a Linear applied at every
position it reads) of the encoder: ViT attention projections and MLP fc1/fc2, the 1x1 convolutions of ResNets,
MobileNets and EfficientNets, the attention-pool projections of OpenCLIP's ModifiedResNet. The classifier's head
is not one of them (the head pruning of Section 3 covers it).

Two attention modules never call their projections as modules: ``nn.MultiheadAttention`` (OpenCLIP and
torchvision ViTs) and OpenCLIP's ``AttentionPool2d`` hand their weights to ``F.multi_head_attention_forward``.
:func:`explicit_attention` swaps them for twins that compute the same attention with
``F.scaled_dot_product_attention`` and call ``in_proj``/``out_proj`` (``q/k/v/c_proj``) as modules, so that their
inputs can be read by hooks and the projections replaced. The pool's twin keeps the parameter names; the
multi-head twin stores the packed ``in_proj_weight`` as ``in_proj.weight``. The pool's twin computes the query
of the pooled (first) token only, the one token the pool returns, so ``q_proj`` and ``c_proj`` see exactly the
inputs that reach the output.

A map keeping ``k`` of its directions becomes a :class:`FactorisedMap` (``first``: ``k x in``, then ``second``:
``out x k``, two Linears or two 1x1 convolutions) when that is smaller, else it keeps its module with the rank-``k``
weight (see :class:`robustsig.metrics.lowrank.MapShape`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustsig.errors import InputError
from robustsig.metrics.directions import HeadSVD
from robustsig.metrics.lowrank import MapShape

MapKind = Literal["linear", "conv1x1"]


@dataclass(frozen=True)
class LinearMap:
    """One linear map of an encoder.

    Attributes:
        path: dotted path of its module in the encoder.
        kind: ``"linear"`` or ``"conv1x1"``.
        shape: ``out x in`` and whether it has a bias.
        stride: the convolution's stride (1x1 convolutions read every ``stride``-th position); ``(1, 1)`` for Linears.
    """

    path: str
    kind: MapKind
    shape: MapShape
    stride: tuple[int, int] = (1, 1)

    def weight(self, module: nn.Module) -> torch.Tensor:
        """The map's ``out x in`` weight, read from its module."""
        return module.weight.detach().reshape(self.shape.out_features, self.shape.in_features)

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The input vectors the map is applied to, one per row: every token of a Linear's input, every position
        a 1x1 convolution reads (``N*H'*W' x C``)."""
        if self.kind == "conv1x1":
            x = x[:, :, ::self.stride[0], ::self.stride[1]]
            return x.permute(0, 2, 3, 1).reshape(-1, self.shape.in_features)
        return x.reshape(-1, self.shape.in_features)


class FactorisedMap(nn.Sequential):
    """A rank-``k`` linear map as two maps: ``first`` (``in -> k``, no bias) then ``second`` (``k -> out``, the bias).

    Example:
        >>> import torch
        >>> layer = FactorisedMap.like(LinearMap("fc", "linear", MapShape(6, 4, True)), rank=2)
        >>> layer(torch.zeros(3, 4)).shape, layer.rank
        (torch.Size([3, 6]), 2)
    """

    @classmethod
    def like(cls, linear_map: LinearMap, rank: int) -> FactorisedMap:
        """An (uninitialised) factorised map of ``linear_map``'s kind and shape with ``rank`` directions."""
        shape = linear_map.shape
        if linear_map.kind == "conv1x1":
            first = nn.Conv2d(shape.in_features, rank, 1, stride=linear_map.stride, bias=False)
            second = nn.Conv2d(rank, shape.out_features, 1, bias=shape.bias)
        else:
            first = nn.Linear(shape.in_features, rank, bias=False)
            second = nn.Linear(rank, shape.out_features, bias=shape.bias)
        return cls(OrderedDict(first=first, second=second))

    @property
    def rank(self) -> int:
        return int(self.first.weight.shape[0])


class ExplicitMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (self-attention) with its projections as modules: ``in_proj`` (``3D x D``) and
    ``out_proj``. Same call signature and outputs (``(output, None)``; attention weights are not returned)."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = mha.embed_dim, mha.num_heads, mha.batch_first
        self.dropout = mha.dropout
        weight = mha.in_proj_weight
        self.in_proj = nn.Linear(weight.shape[1], weight.shape[0], bias=mha.in_proj_bias is not None,
                                 device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.in_proj.weight.copy_(weight)
            if mha.in_proj_bias is not None:
                self.in_proj.bias.copy_(mha.in_proj_bias)
        self.out_proj = mha.out_proj

    @staticmethod
    def supports(mha: nn.MultiheadAttention) -> bool:
        return bool(mha._qkv_same_embed_dim and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise InputError("the low-rank attention supports self-attention only (query, key and value the same)")
        if need_weights or key_padding_mask is not None:
            raise InputError("the low-rank attention returns no attention weights and takes no key_padding_mask")
        x = query if self.batch_first else query.transpose(0, 1)                    # N, L, D
        batch, length, dim = x.shape
        heads = self.in_proj(x).unflatten(-1, (3, self.num_heads, dim // self.num_heads))
        q, k, v = (t.transpose(1, 2) for t in heads.unbind(2))                        # N, H, L, d
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


class ExplicitAttentionPool2d(nn.Module):
    """OpenCLIP's ``AttentionPool2d`` with ``q/k/v/c_proj`` called as modules (same parameter names); the query is
    computed for the pooled token only, the token the pool returns."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.positional_embedding = pool.positional_embedding
        self.k_proj, self.q_proj, self.v_proj, self.c_proj = pool.k_proj, pool.q_proj, pool.v_proj, pool.c_proj
        self.num_heads = pool.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)                                              # N, HW, C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        batch, length, dim = x.shape
        shape = (batch, -1, self.num_heads, dim // self.num_heads)
        q = self.q_proj(x[:, :1]).view(shape).transpose(1, 2)                        # N, H, 1, d
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(out.transpose(1, 2).reshape(batch, dim))


def _is_attention_pool(module: nn.Module) -> bool:
    try:
        from open_clip.modified_resnet import AttentionPool2d
    except ImportError:  # open_clip is optional for this module
        return False
    return isinstance(module, AttentionPool2d)


def explicit_attention(root: nn.Module) -> list[str]:
    """Replace, in place, every ``nn.MultiheadAttention`` (self-attention) and OpenCLIP ``AttentionPool2d`` under
    ``root`` by its explicit twin (see the module notes); returns the paths replaced."""
    swaps: list[tuple[str, nn.Module]] = []
    for path, module in root.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            if ExplicitMultiheadAttention.supports(module):
                swaps.append((path, ExplicitMultiheadAttention(module)))
            else:
                warnings.warn(f"{path}: nn.MultiheadAttention with separate key/value sizes, bias_k/bias_v or "
                              "add_zero_attn is left as it is; its projections are not low-ranked", stacklevel=2)
        elif _is_attention_pool(module):
            swaps.append((path, ExplicitAttentionPool2d(module)))
    for path, replacement in swaps:
        _set_submodule(root, path, replacement.train(root.get_submodule(path).training))
    return [path for path, _ in swaps]


def find_linear_maps(root: nn.Module) -> dict[str, LinearMap]:
    """The linear maps under ``root`` (after :func:`explicit_attention`), input side first.

    Skipped: convolutions other than 1x1 with one group and no padding; the projections of attention modules
    that were not made explicit (they are never called as modules); the parts of a :class:`FactorisedMap`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4, 2))
        >>> {path: m.kind for path, m in find_linear_maps(net).items()}
        {'1': 'conv1x1', '3': 'linear'}
    """
    hidden = [path for path, module in root.named_modules()
              if isinstance(module, (nn.MultiheadAttention, FactorisedMap)) or _is_attention_pool(module)]
    maps: dict[str, LinearMap] = {}
    for path, module in root.named_modules():
        if any(path.startswith(prefix + ".") for prefix in hidden if prefix):
            continue
        if isinstance(module, nn.Linear):
            maps[path] = LinearMap(path, "linear", MapShape(module.out_features, module.in_features,
                                                            module.bias is not None))
        elif (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
              and module.padding in ((0, 0), "valid", [0, 0])):
            maps[path] = LinearMap(path, "conv1x1", MapShape(module.out_channels, module.in_channels,
                                                             module.bias is not None),
                                   tuple(int(s) for s in module.stride))
    return maps


def replace_map(root: nn.Module, linear_map: LinearMap, first: torch.Tensor, second: torch.Tensor, *,
                dense: bool = True) -> bool:
    """Give the map at ``linear_map.path`` the weight ``second @ first`` (``first``: ``k x in``, ``second``:
    ``out x k``), as a :class:`FactorisedMap` when that is smaller (or ``dense=False``), else in its own module.

    Returns:
        whether the module was replaced by a :class:`FactorisedMap`.
    """
    module = root.get_submodule(linear_map.path)
    weight = module.weight
    rank = first.shape[0]
    with torch.no_grad():
        if dense and not linear_map.shape.factorised(rank):
            weight.copy_((second @ first).reshape(weight.shape).to(weight.dtype))
            return False
        factorised = FactorisedMap.like(linear_map, rank).to(device=weight.device, dtype=weight.dtype)
        factorised.first.weight.copy_(first.reshape(factorised.first.weight.shape).to(weight.dtype))
        factorised.second.weight.copy_(second.reshape(factorised.second.weight.shape).to(weight.dtype))
        if module.bias is not None:
            factorised.second.bias.copy_(module.bias)
    _set_submodule(root, linear_map.path, factorised.train(module.training))
    return True


def check_structure(ranks: Any, state: Mapping[str, torch.Tensor], prefix: str, what: str) -> dict[str, int]:
    """The ``factorised`` record of a saved low-rank model (path -> rank), checked against the checkpoint's own
    tensors before anything is built: each rank a positive integer equal to the rows of the file's
    ``PREFIX+PATH.first.weight`` and the columns of its ``.second.weight``. A rank written by hand (1e12, -5) would
    otherwise size the layers :func:`apply_structure` allocates.

    Args:
        ranks: the record as read from the file's metadata.
        state: the checkpoint's tensors.
        prefix: the encoder's prefix in ``state`` (``"encoder."``).
        what: how messages name the checkpoint.

    Raises:
        InputError: the record is not a mapping of paths to positive integers, or a rank disagrees with the tensors.
    """
    if not isinstance(ranks, Mapping):
        raise InputError(f"{what}: its low-rank record 'factorised' is {type(ranks).__name__}; expected a mapping "
                         "of layer paths to ranks (the file was changed or damaged)")
    checked = {}
    for path, rank in ranks.items():
        first, second = state.get(f"{prefix}{path}.first.weight"), state.get(f"{prefix}{path}.second.weight")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise InputError(f"{what}: the low-rank record gives {path!r} the rank {rank!r}; expected a positive "
                             "integer (the file was changed or damaged)")
        if first is None or second is None or first.ndim < 2 or second.ndim < 2:
            raise InputError(f"{what}: the low-rank record factorises {path!r}, but the file has no "
                             f"{prefix}{path}.first.weight and .second.weight matrices (the file was changed or "
                             "damaged)")
        if first.shape[0] != rank or second.shape[1] != rank:
            raise InputError(f"{what}: the low-rank record gives {path!r} the rank {rank}, but its weights in the file "
                             f"have {first.shape[0]} and {second.shape[1]} directions (the file was changed or "
                             "damaged)")
        checked[str(path)] = rank
    return checked


def apply_structure(root: nn.Module, ranks: Mapping[str, int]) -> None:
    """Rebuild a saved low-rank encoder's layout on a freshly built one: explicit attention, then a
    :class:`FactorisedMap` of the recorded rank at each path (weights left to the checkpoint). A rank outside
    ``1..min(out, in)`` of its map is refused before anything is allocated (see also :func:`check_structure`)."""
    explicit_attention(root)
    maps = find_linear_maps(root)
    for path, rank in ranks.items():
        if path not in maps:
            raise InputError(f"the low-rank checkpoint factorises {path!r}, which is not a linear map of this "
                             "architecture; load it with the spec of the model it was made from")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= maps[path].shape.rank:
            raise InputError(f"the low-rank checkpoint gives {path!r} the rank {rank!r}; a rank of this "
                             f"{maps[path].shape.out_features} x {maps[path].shape.in_features} map lies in "
                             f"1..{maps[path].shape.rank}")
        module = root.get_submodule(path)
        factorised = FactorisedMap.like(maps[path], rank).to(device=module.weight.device, dtype=module.weight.dtype)
        _set_submodule(root, path, factorised)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@dataclass
class Calibration:
    """The linear maps of an encoder, their decompositions and the importance of their directions.

    Attributes:
        maps: path (in the encoder, after :func:`~robustsig.models.linear_maps.explicit_attention`) -> the map.
        svds: path -> :func:`robustsig.head_svd` of its weight (float64, on the CPU).
        importance: path -> eq. 4 of each direction on the map's own inputs over the calibration images.
        rows: path -> input vectors per image (tokens or positions the map is applied to).
        images: number of calibration images.
        zero_rows: path -> all-zero input vectors left out of the importance (they have no direction).
    """

    maps: dict[str, LinearMap]
    svds: dict[str, HeadSVD]
    importance: dict[str, torch.Tensor]
    rows: dict[str, float]
    images: int
    zero_rows: dict[str, int] = field(default_factory=dict)
