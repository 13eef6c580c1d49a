"""Safe checkpoint files: read any local weights as tensors only, save and restore robustsig classifiers.

Every local file goes through :func:`read_checkpoint`: safetensors, or ``torch.load(weights_only=True)`` for
pickles. A pickle that needs more than tensors and plain containers (a whole pickled model, a custom class,
a TorchScript archive) is refused with :class:`~robustsig.errors.UnsafeCheckpointError`: loading it would run
code from the file.

A *robustsig classifier checkpoint* (written by :func:`save_classifier`) holds the full ``state_dict`` of
the classifier (``encoder.*`` and ``head.*``) plus JSON metadata: the spec it came from, its family and
architecture, how to rebuild it (``build``), its class names and fingerprint. In safetensors the metadata
sits in the header under ``"robustsig"``; in ``.pt`` files it is a JSON string next to ``"state_dict"``.
It loads back with the spec of its architecture and the file as weights
(``openclip:ViT-B-32@/path/ft.safetensors``, ``timm:resnet50@/path/ft.pt``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from robustsig._atomic import atomic_output
from robustsig.errors import InputError, UnsafeCheckpointError

if TYPE_CHECKING:
    from robustsig.models.classifier import Classifier

FORMAT = "robustsig.classifier"
FORMAT_VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


@dataclass(frozen=True)
class Checkpoint:
    """Tensors read from one file.

    Attributes:
        path: the file.
        state_dict: name -> tensor (unwrapped from ``{"state_dict": ...}`` and ``module.`` prefixes).
        meta: the robustsig classifier metadata, or ``None`` for a plain state dict.
    """

    path: str
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] | None = None

    @property
    def is_classifier(self) -> bool:
        """Whether this is a robustsig classifier checkpoint (encoder + head + metadata)."""
        return self.meta is not None


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a local weights file without running code from it.

    Args:
        path: ``.safetensors``, or a ``torch.save`` pickle (``.pt``/``.pth``/``.bin``/``.ckpt``) of a state dict,
            possibly under a ``"state_dict"`` key and with ``module.`` prefixes (DataParallel/DDP).

    Returns:
        the :class:`Checkpoint`.

    Raises:
        InputError: the file is missing, unreadable or holds no tensors.
        UnsafeCheckpointError: the pickle needs classes beyond tensors and containers.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".pt")
        >>> torch.save({"state_dict": {"module.w": torch.ones(2)}}, path)
        >>> read_checkpoint(path).state_dict
        {'w': tensor([1., 1.])}
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        where = "a folder, not a file" if os.path.isdir(path) else "not found"
        raise InputError(f"checkpoint {path!r} is {where}; pass the path of a .safetensors or .pt weights file")
    if _is_safetensors(path):
        tensors, header = _read_safetensors(path)
        meta = _parse_meta(header.get("robustsig"), path) if header.get("format") == FORMAT else None
        return Checkpoint(path, _unwrap(tensors, path), meta)
    obj = _torch_load(path)
    meta = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        meta = _parse_meta(obj.get("robustsig"), path)
    return Checkpoint(path, _unwrap(obj, path), meta)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file (see :func:`read_checkpoint`)."""
    return read_checkpoint(path).state_dict


def _is_safetensors(path: str) -> bool:
    if path.lower().endswith(".safetensors"):
        return True
    with open(path, "rb") as f:  # safetensors: 8-byte little-endian header length, then '{'
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            return {key: f.get_tensor(key) for key in f.keys()}, header
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"cannot read safetensors file {path!r}: {err}") from None


def _torch_load(path: str) -> Any:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in names):
            raise UnsafeCheckpointError(
                f"{path!r} is a TorchScript archive (e.g. OpenAI's original CLIP .pt files): loading it runs the "
                "code stored inside. Convert it once on a machine you trust: "
                f"`torch.save(torch.jit.load({path!r}, map_location='cpu').state_dict(), 'weights.pt')`, or use the "
                "pretrained tag, whose weights come as safetensors")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        needs = f"the Python object {found.group(1)!r}" if found else "Python objects beyond tensors"
        raise UnsafeCheckpointError(
            f"refusing to load {path!r}: it is a pickle that needs {needs}, and unpickling it could run arbitrary "
            "code. Convert it once on a machine you trust to a plain state dict: "
            "`torch.save(model.state_dict(), 'weights.pt')` or "
            "`safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')`") from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle fails in many ways, all "unreadable"
        raise InputError(f"cannot read checkpoint {path!r} ({type(err).__name__}: {err}); expected a "
                         ".safetensors file or a torch.save'd state dict") from None


def _unwrap(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object, without ``module.`` prefixes."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(f"checkpoint {path!r} holds {type(obj).__name__}, not a state dict of tensors")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise InputError(f"checkpoint {path!r} is a dict with non-tensor entries {not_tensors[:5]} and no "
                         f"'state_dict' entry; save the model's state_dict (one of {list(_WRAPPER_KEYS)})")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _parse_meta(text: str | None, path: str) -> dict[str, Any]:
    try:
        meta = json.loads(text or "")
    except json.JSONDecodeError as err:
        raise InputError(f"robustsig checkpoint {path!r} has unreadable metadata ({err})") from None
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise InputError(f"robustsig checkpoint {path!r} has format version {version}; this robustsig reads "
                         f"version {FORMAT_VERSION}")
    for key in ("family", "arch", "classnames"):
        if key not in meta:
            raise InputError(f"robustsig checkpoint {path!r} lacks {key!r} in its metadata")
    return meta


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming the first mismatching key; a floating-point
    weight stored in the file as integers (or booleans) is refused, never converted."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    # a weight stored as integers (bytes retyped in the file's header) would be converted silently
    kinds = [(k, state[k].dtype) for k, v in expected.items()
             if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    if missing or unexpected or shapes or kinds:
        parts = []
        if kinds:
            k, dtype = kinds[0]
            parts.append(f"{len(kinds)} weight(s) stored as non-floating-point numbers, first {k!r} as "
                         f"{str(dtype).removeprefix('torch.')}: weights are floating point (the file was changed "
                         "or damaged)")
        if shapes:
            k, got, want = shapes[0]
            parts.append(f"{len(shapes)} shape mismatch(es), first {k!r}: file {got} vs model {want}")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the file, first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) in the file, first {unexpected[0]!r}")
        raise InputError(f"{what} does not fit the architecture: {'; '.join(parts)}. Check that the spec names "
                         "the architecture the weights were trained with")
    module.load_state_dict(state, strict=True)


# --- robustsig classifier checkpoints -------------------------------------------------------------------
def save_classifier(clf: Classifier, path: str | os.PathLike) -> Path:
    """Save a classifier (encoder + head weights, class names, how to rebuild it) to one file.

    Args:
        clf: a classifier built by :func:`robustsig.load_classifier` (its ``meta`` says family and
            architecture) or derived from one (:func:`robustsig.interpolate`).
        path: ``*.safetensors`` (recommended) or ``*.pt``; written atomically.

    Returns:
        the path written. Load it back with ``load_classifier("FAMILY:ARCH@" + path)``.

    Example:
        >>> import robustsig as rs, tempfile, os
        >>> clf = rs.load_classifier("bundled:mobilenet_v2")
        >>> path = save_classifier(clf, os.path.join(tempfile.mkdtemp(), "ft.safetensors"))
        >>> rs.load_classifier(f"bundled:mobilenet_v2@{path}").fingerprint() == clf.fingerprint()
        True
    """
    path = Path(path)
    if path.suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise InputError(f"save_classifier writes .safetensors or .pt files, got {str(path)!r}")
    family, arch = clf.meta.get("family"), clf.meta.get("arch")
    if not family or not arch:
        raise InputError("this classifier does not record a rebuildable architecture (meta['family'] and "
                         f"meta['arch'] are {family!r}, {arch!r}); save_classifier needs a classifier from "
                         "load_classifier or interpolate")
    meta = {
        "version": FORMAT_VERSION,
        "spec": clf.spec,
        "family": family,
        "arch": arch,
        "build": clf.meta.get("build", {}),
        "classnames": clf.classnames,
        "fingerprint": clf.fingerprint(),
        "meta": {k: v for k, v in clf.meta.items() if k not in ("build",) and _is_json(v)},
    }
    state = _unshared({k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        if path.suffix.lower() == ".safetensors":
            # serialised in memory and written by Python: a full disk is an OSError naming the file, where
            # safetensors' own writer raises a SafetensorError
            header = {"format": FORMAT, "robustsig": json.dumps(meta)}
            temporary.write_bytes(safetensors.torch.save(state, metadata=header))
        else:
            torch.save({"format": FORMAT, "robustsig": json.dumps(meta), "state_dict": state}, temporary)
    return path


def restore_classifier(clf: Classifier, ckpt: Checkpoint) -> Classifier:
    """Load a robustsig checkpoint's weights into a classifier of the same architecture (built with random
    weights and the checkpoint's class names). A low-rank model's factorised layout (``meta["lowrank"]``) is rebuilt
    first, and a head the architecture builds without a bias gets one when the file has it (a finetune that added
    wise-ft's bias, a Wise-FT mix with such a model: :func:`~robustsig.models.classifier.add_zero_bias`)."""
    saved = (ckpt.meta or {}).get("meta", {})
    lowrank = saved.get("lowrank") if isinstance(saved, Mapping) else None
    if lowrank:
        from robustsig.models.linear_maps import apply_structure, check_structure

        what = f"robustsig checkpoint {ckpt.path!r}"
        if not isinstance(lowrank, Mapping):
            raise InputError(f"{what}: its low-rank record is {type(lowrank).__name__}; expected a mapping (the "
                             "file was changed or damaged)")
        apply_structure(clf.encoder, check_structure(lowrank.get("factorised", {}), ckpt.state_dict, "encoder.", what))
        clf.meta["lowrank"] = lowrank
    if "head.bias" in ckpt.state_dict:
        from robustsig.models.classifier import add_zero_bias

        add_zero_bias(clf.head)
    load_into(clf, ckpt.state_dict, f"robustsig checkpoint {ckpt.path!r}")
    return clf


def check_family(ckpt: Checkpoint, family: str, arch: str) -> None:
    """Refuse a robustsig checkpoint saved from another architecture, naming the spec that loads it."""
    saved_family, saved_arch = ckpt.meta["family"], ckpt.meta["arch"]
    if (saved_family, saved_arch) != (family, arch):
        raise InputError(f"{ckpt.path!r} is a robustsig checkpoint of {saved_family}:{saved_arch}, not "
                         f"{family}:{arch}; load it with '{saved_family}:{saved_arch}@{ckpt.path}'")


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights): give each its own copy."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ident = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ident in seen and tensor.numel() else tensor
        seen.add(ident)
    return out


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
