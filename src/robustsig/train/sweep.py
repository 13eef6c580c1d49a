"""Wise-FT sweeps: the grid of mixing weights, and the interpolated classifiers written to disk.

To stream the interpolated classifiers to an analysis instead (one extra model in memory whatever the number of
alphas), use :func:`robustsig.interpolation_path` with the alphas of :func:`parse_alphas`.

Example:
    >>> parse_alphas("0:1:0.25")
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> parse_alphas("0:0.3:0.1")   # no 0.30000000000000004
    [0.0, 0.1, 0.2, 0.3]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path

from robustsig.errors import InputError
from robustsig.models.checkpoint import save_classifier
from robustsig.models.classifier import Classifier
from robustsig.models.wiseft import interpolation_path

MAX_ALPHAS = 10_001


def parse_alphas(text: str) -> list[float]:
    """Mixing weights from ``START:STOP:STEP`` (inclusive of STOP), a comma list (``0,0.5,1``) or one number.

    The range is computed in decimal arithmetic from the text, so ``0:1:0.1`` gives exactly the floats ``0.1``,
    ``0.2``, ... (not ``0.30000000000000004``), and STOP must be reached by whole steps.

    Raises:
        InputError: not a number, a non-finite value, ``STEP <= 0``, ``START > STOP``, STOP not on the grid,
            repeated values, or more than 10,001 alphas.
    """
    text = str(text).strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise InputError(f"alphas {text!r}: expected START:STOP:STEP (e.g. 0:1:0.1) or a comma list (0,0.5,1)")
        start, stop, step = (_decimal(part, text) for part in parts)
        if step <= 0:
            raise InputError(f"alphas {text!r}: STEP must be > 0")
        if start > stop:
            raise InputError(f"alphas {text!r}: START must be <= STOP")
        count, remainder = divmod(stop - start, step)
        if remainder:
            reached = start + count * step
            raise InputError(f"alphas {text!r}: STOP {stop} is not START plus a whole number of steps (the grid ends "
                             f"at {reached}); choose a STEP that divides STOP - START")
        if count + 1 > MAX_ALPHAS:
            raise InputError(f"alphas {text!r} gives {int(count) + 1} values; at most {MAX_ALPHAS}")
        return [float(start + i * step) for i in range(int(count) + 1)]
    values = [float(_decimal(part, text)) for part in text.split(",") if part.strip()]
    if not values:
        raise InputError(f"alphas {text!r}: expected START:STOP:STEP (e.g. 0:1:0.1) or a comma list (0,0.5,1)")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise InputError(f"alphas {text!r} repeats {repeated}")
    return values


def alpha_file_name(alpha: float) -> str:
    """``alpha_0.3.safetensors``: the file of one interpolated classifier (``repr``: distinct for distinct alphas)."""
    return f"alpha_{float(alpha)!r}.safetensors"


def save_wiseft_sweep(clf0: Classifier, clf1: Classifier, alphas: Iterable[float], out_dir: str | os.PathLike
                      ) -> list[tuple[float, Path]]:
    """Write ``(1 - alpha) * clf0 + alpha * clf1`` for each alpha with :func:`robustsig.save_classifier`.

    Args:
        clf0: the zero-shot classifier (its preprocessing and class names are kept).
        clf1: the finetuned classifier of the same architecture and head shape; a bias its head has and
            ``clf0``'s lacks (D.1's ``wiseft`` head on a zero-shot model) is mixed from 0, and the files of the
            bias-free end's alpha have none (:mod:`robustsig.models.wiseft`).
        alphas: mixing weights (see :func:`parse_alphas`).
        out_dir: the folder; one ``alpha_<alpha>.safetensors`` per alpha (loadable with ``FAMILY:ARCH@FILE``).

    Returns:
        ``(alpha, path)`` per alpha, in order.
    """
    out = Path(out_dir)
    written = []
    for alpha, mixed in interpolation_path(clf0, clf1, alphas):
        written.append((alpha, save_classifier(mixed, out / alpha_file_name(alpha))))
    return written


def _decimal(part: str, text: str) -> Decimal:
    try:
        value = Decimal(part.strip())
    except InvalidOperation:
        raise InputError(f"alphas {text!r}: {part.strip()!r} is not a number") from None
    if not value.is_finite():
        raise InputError(f"alphas {text!r}: {part.strip()!r} is not finite")
    return value
