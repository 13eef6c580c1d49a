"""Class names and prompt templates: the ImageNet defaults open_clip ships, or your own from text files.

A template is a string with one ``{}`` (or ``{c}``) where the class name goes: ``"a photo of a {}."``.
open_clip's ``OPENAI_IMAGENET_TEMPLATES`` are lambdas; :func:`openai_templates` turns them into such strings
so that they can be hashed (zero-shot head cache keys) and written to files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from robustsig.errors import InputError

ClassnamesLike = Sequence[str] | str | os.PathLike | None
TemplatesLike = Sequence[str | Callable[[str], str]] | str | os.PathLike | None
_SLOT = "{}"


def imagenet_classnames() -> list[str]:
    """The 1,000 ImageNet-1k class names in logit order (open_clip's clean ``IMAGENET_CLASSNAMES``)."""
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def openai_templates() -> list[str]:
    """The 80 prompt templates of OpenAI's CLIP ImageNet evaluation, as ``{}`` strings."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return normalize_templates(OPENAI_IMAGENET_TEMPLATES)


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file (surrounding whitespace stripped; ``#`` lines are comments)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{what} file {str(path)!r} not found; pass a text file with one entry per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {what} file {str(path)!r}: {err}") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise InputError(f"{what} file {str(path)!r} is empty; put one entry per line")
    return lines


def resolve_classnames(classnames: ClassnamesLike, default: Sequence[str] | None = None) -> list[str]:
    """Class names from a list, a text file (one per line), or ``default`` when ``None``.

    Example:
        >>> resolve_classnames(["cat", "dog"])
        ['cat', 'dog']
    """
    if classnames is None:
        if default is None:
            raise InputError("no class names given and no default for this model; pass classnames=[...]")
        return list(default)
    if isinstance(classnames, (str, os.PathLike)):
        return read_lines(classnames, "class names")
    names = list(classnames)
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if not names or bad:
        raise InputError(f"class names must be non-empty strings, got {bad[:3] if bad else 'an empty list'}")
    return names


def resolve_templates(templates: TemplatesLike) -> list[str]:
    """Templates from a list (strings or callables), a text file (one per line), or OpenAI's 80 when ``None``.

    Example:
        >>> resolve_templates(["a photo of a {c}.", "itap of a {}."])
        ['a photo of a {}.', 'itap of a {}.']
    """
    if templates is None:
        return openai_templates()
    if isinstance(templates, (str, os.PathLike)):
        return normalize_templates(read_lines(templates, "templates"))
    return normalize_templates(templates)


def normalize_templates(templates: Sequence[str | Callable[[str], str]]) -> list[str]:
    """Check templates and write them with ``{}`` as the class-name slot."""
    out = []
    for template in templates:
        if callable(template):
            template = template(_SLOT)
        if not isinstance(template, str):
            raise InputError(f"a template must be a string with '{{}}' or '{{c}}', got {type(template).__name__}")
        template = template.replace("{c}", _SLOT)
        if _SLOT not in template:
            raise InputError(f"template {template!r} has no '{{}}' or '{{c}}' where the class name goes "
                             "(e.g. 'a photo of a {}.')")
        out.append(template)
    if not out:
        raise InputError("no templates given; pass at least one, e.g. ['a photo of a {}.']")
    return out


def fill(template: str, classname: str) -> str:
    """The prompt for one class (every ``{}`` replaced; other braces are kept literally)."""
    return template.replace(_SLOT, classname)
