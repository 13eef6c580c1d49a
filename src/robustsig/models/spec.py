"""Model spec strings (``openclip:ViT-B-32@openai``) parsed into a frozen :class:`ModelSpec`.

Grammar (``FAMILY:NAME[@WEIGHTS]``):

======================  ===============================================================================
``openclip:ARCH@TAG``   an OpenCLIP architecture and its weights: a pretrained tag (``openai``,
                        ``laion2b_s34b_b79k``), a local checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``,
                        an open_clip state dict or a robustsig classifier checkpoint), or
                        ``hf-hub:ORG/REPO`` / ``local-dir:DIR`` (then ``ARCH@`` may be left out)
``timm:NAME[@PATH]``    a timm architecture, optionally with a local state dict or robustsig checkpoint
``torchvision:NAME[@W]`` a torchvision architecture; ``W`` a weights enum (``IMAGENET1K_V1``,
                        ``ViT_B_16_Weights.IMAGENET1K_V1``, ``DEFAULT``) or a local checkpoint
``hf:PATH_OR_NAME``     a Hugging Face image-classification model (local folder or hub name)
``bundled:NAME[@PATH]`` real ImageNet weights installed from packages (``mobilenet_v2``,
                        ``efficientnet_lite0``/``1``/``2``, ``squeezenet1_1``), or a finetuned copy of them
======================  ===============================================================================

No weights means a randomly initialised model (the loader warns and records ``meta["random_init"]``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Literal

from robustsig.errors import InputError

FAMILIES: tuple[str, ...] = ("openclip", "timm", "torchvision", "hf", "bundled")
_ALIASES = {"open_clip": "openclip", "huggingface": "hf", "tv": "torchvision"}
BUNDLED: tuple[str, ...] = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                             "squeezenet1_1")
HUB_SCHEMAS: tuple[str, ...] = ("hf-hub:", "local-dir:")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")

WeightsKind = Literal["none", "tag", "path", "hub"]


def looks_like_path(text: str) -> bool:
    """Whether a weights string names a file rather than a tag: it has a path separator, starts with
    ``~`` or ``.``, or ends with a checkpoint suffix."""
    return (os.sep in text or "/" in text or text.startswith(("~", "."))
            or text.lower().endswith(CHECKPOINT_SUFFIXES))


def close_matches(word: str, choices, n: int = 5) -> str:
    """``" (did you mean: a, b?)"`` for the closest of ``choices``, or ``""`` when none is close."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not matches:
        lowered = word.lower()
        matches = [c for c in choices if lowered and lowered in c.lower()][:n]
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
        family: ``openclip``, ``timm``, ``torchvision``, ``hf`` or ``bundled``.
        name: the architecture (``ViT-B-32``, ``resnet50``), the Hugging Face path or name, or the bundled
            model; empty only for ``openclip:hf-hub:...``/``openclip:local-dir:...``.
        weights: what to load into it: a tag, an absolute file path, a torchvision weights enum, an
            ``hf-hub:``/``local-dir:`` source, or ``None`` (random init, except for ``hf`` and ``bundled``
            models, which carry their own weights).

    Example:
        >>> spec = ModelSpec.parse("openclip:ViT-B/32@OpenAI")
        >>> str(spec), spec.weights_kind
        ('openclip:ViT-B-32@openai', 'tag')
        >>> ModelSpec.parse("timm:resnet18").random_init
        True
    """

    family: str
    name: str
    weights: str | None = None

    @classmethod
    def parse(cls, text: str | ModelSpec) -> ModelSpec:
        """Parse a spec string (a :class:`ModelSpec` is returned unchanged)."""
        if isinstance(text, ModelSpec):
            return text
        if not isinstance(text, str):
            raise InputError(f"a model spec must be a string like 'openclip:ViT-B-32@openai', got "
                             f"{type(text).__name__}")
        text = text.strip()
        family, sep, rest = text.partition(":")
        family = _ALIASES.get(family.lower(), family.lower())
        if not sep or not rest:
            raise InputError(f"model spec {text!r} must look like FAMILY:NAME[@WEIGHTS] with FAMILY one of "
                             f"{', '.join(FAMILIES)} (e.g. 'openclip:ViT-B-32@openai', 'timm:resnet50', "
                             "'bundled:mobilenet_v2')")
        if family not in FAMILIES:
            raise InputError(f"unknown model family {family!r} in spec {text!r}{close_matches(family, FAMILIES)}; "
                             f"expected one of {', '.join(FAMILIES)}")
        return getattr(cls, f"_parse_{family}")(rest, text)

    # --- one parser per family --------------------------------------------------------------------------
    @classmethod
    def _parse_openclip(cls, rest: str, text: str) -> ModelSpec:
        if rest.startswith(HUB_SCHEMAS):
            return cls("openclip", "", _schema_source(rest, text))
        arch, _, weights = rest.partition("@")
        arch = arch.strip().replace("/", "-")
        if not arch:
            raise InputError(f"model spec {text!r} has no OpenCLIP architecture before '@' "
                             "(e.g. 'openclip:ViT-B-32@openai')")
        weights = weights.strip()
        if not weights:
            return cls("openclip", arch, None)
        if weights.startswith(HUB_SCHEMAS):
            return cls("openclip", arch, _schema_source(weights, text))
        if looks_like_path(weights):
            return cls("openclip", arch, _absolute(weights))
        return cls("openclip", arch, weights.lower().replace("-", "_"))  # open_clip's own tag normalisation

    @classmethod
    def _parse_timm(cls, rest: str, text: str) -> ModelSpec:
        name, _, weights = (part.strip() for part in rest.partition("@"))
        if not name:
            raise InputError(f"model spec {text!r} has no timm model name (e.g. 'timm:resnet50')")
        if weights and not looks_like_path(weights):
            raise InputError(f"timm weights in {text!r} must be a local checkpoint file (.pt/.pth/.bin/"
                             f".safetensors), got {weights!r}; leave '@...' out for a random-init model")
        return cls("timm", name, _absolute(weights) if weights else None)

    @classmethod
    def _parse_torchvision(cls, rest: str, text: str) -> ModelSpec:
        name, _, weights = (part.strip() for part in rest.partition("@"))
        if not name:
            raise InputError(f"model spec {text!r} has no torchvision model name (e.g. 'torchvision:resnet50')")
        if weights and looks_like_path(weights):
            weights = _absolute(weights)
        return cls("torchvision", name.lower(), weights or None)

    @classmethod
    def _parse_hf(cls, rest: str, text: str) -> ModelSpec:
        name = rest.strip()
        if looks_like_path(name) and os.path.exists(os.path.expanduser(name)):
            name = _absolute(name)
        return cls("hf", name, None)

    @classmethod
    def _parse_bundled(cls, rest: str, text: str) -> ModelSpec:
        name, _, weights = (part.strip() for part in rest.partition("@"))
        name = name.lower()
        if name not in BUNDLED:
            raise InputError(f"unknown bundled model {name!r} in {text!r}{close_matches(name, BUNDLED)}; "
                             f"bundled models: {', '.join(BUNDLED)}")
        if weights and not looks_like_path(weights):
            raise InputError(f"bundled weights in {text!r} must be a local checkpoint file (a finetuned copy "
                             f"saved with save_classifier), got {weights!r}")
        return cls("bundled", name, _absolute(weights) if weights else None)

    # --- views ------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        if self.family == "openclip" and not self.name:
            return f"openclip:{self.weights}"
        return f"{self.family}:{self.name}" + (f"@{self.weights}" if self.weights else "")

    @property
    def weights_kind(self) -> WeightsKind:
        """``"none"`` (random init), ``"path"`` (a local file), ``"hub"`` (``hf-hub:``/``local-dir:``, or an
        ``hf:`` model) or ``"tag"`` (a named pretrained tag or torchvision weights enum)."""
        if self.family == "hf":
            return "hub"
        if self.weights is None:
            return "tag" if self.family == "bundled" else "none"
            return "none"
        if self.weights.startswith(HUB_SCHEMAS):
            return "hub"
        return "path" if looks_like_path(self.weights) else "tag"

    @property
    def random_init(self) -> bool:
        """True when the spec names no weights, so the loader builds a randomly initialised model."""
        return self.weights_kind == "none"

    @property
    def architecture(self) -> ModelSpec:
        """The same family and architecture without weights (what a robustsig checkpoint is loaded into)."""
        return ModelSpec(self.family, self.name, None)


def _schema_source(source: str, text: str) -> str:
    schema, _, ident = source.partition(":")
    ident = ident.strip()
    if not ident:
        raise InputError(f"model spec {text!r} has an empty {schema}: source")
    if schema == "local-dir":
        ident = _absolute(ident)
    return f"{schema}:{ident}"


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
