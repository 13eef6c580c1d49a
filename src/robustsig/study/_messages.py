"""Turn pydantic's validation errors into one readable message: one line per problem, each naming the key path
(``models[3].kind``) and the value that was expected there."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


def key_path(loc: Sequence[str | int]) -> str:
    """``("models", 3, "kind")`` -> ``"models[3].kind"``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the one type a key path descends into."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            arms = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
            if len(arms) != 1:
                return annotation
            annotation = arms[0]
        else:
            return annotation


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model class found at ``loc`` under ``root`` (None when the path leaves the models)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            if typing.get_origin(current) not in (list, tuple):
                return None
            current = typing.get_args(current)[0]
        elif inspect.isclass(current) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return None
    current = _unwrap(current)
    return current if inspect.isclass(current) and issubclass(current, BaseModel) else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(root: type[BaseModel], error: dict[str, Any]) -> str:
    loc = error["loc"]
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = "unknown key; expected one of: " + ", ".join(allowed)
        return text + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if kind == "missing":
        model = _model_at(root, loc[:-1])
        field = model.model_fields.get(str(loc[-1])) if model else None
        what = field.description if field is not None and field.description else "a value"
        return f"required key is missing; expected {what}"
    if kind in ("value_error", "assertion_error"):
        return str(error["ctx"]["error"])
    if kind == "too_short":
        return f"expected at least {error['ctx']['min_length']} item(s); got {error['ctx']['actual_length']}"
    message: str = error["msg"]
    if message.startswith("Input should be "):
        message = "expected " + message[len("Input should be "):]
    elif message:
        message = message[0].lower() + message[1:]
    return f"{message}; got {_short(error['input'])}"


def format_validation_error(error: ValidationError, root: type[BaseModel], source: str,
                            note: Callable[[tuple], str] | None = None) -> str:
    """One message listing every problem of ``error`` as ``key.path: what was expected; got what``.

    Args:
        error: the pydantic error raised while validating ``root``.
        root: the model class that was validated (used to list the keys allowed where an unknown one appears).
        source: what was validated, for the first line (a file name).
        note: what to add to the problems at a location (the plugin that provides an analysis's section).

    Returns:
        A multi-line message, problems in document order.
    """
    lines = []
    for item in error.errors(include_url=False):
        path = key_path(item["loc"])
        extra = note(tuple(item["loc"])) if note is not None else ""
        for line in _describe(root, item).splitlines():
            lines.append((f"  - {path}: {line}" if path else f"  - {line}") + extra)
    count = len(lines)
    return f"{source} is not a valid study config ({count} problem{'s' if count != 1 else ''}):\n" + "\n".join(lines)
