"""The demo's Wise-FT models as checkpoints: ``(1 - alpha) theta_zero_shot + alpha theta_finetuned``
(:func:`robustsig.interpolate`) saved with :func:`robustsig.save_classifier`, so that the study lists them as pool
models like any other (every analysis, every signature, ``predict_er``) and a user can load one by its spec.

Each checkpoint ``OUT/wiseft/BASE-wiseft-ALPHA.safetensors`` is written once and reused while the two models it mixes
are the same: the zero-shot spec and the finetuned model's weight fingerprint are recorded in the checkpoint's own
metadata (``meta["wiseft"]``) and compared on every run, without loading any model when they match.

>>> paths = wiseft_checkpoints("bundled:mobilenet_v2", "ft/model.safetensors", [0.5], "out/wiseft",
...                            name="mobilenet_v2")                                             # doctest: +SKIP
>>> paths[0.5].name                                                                         # doctest: +SKIP
'mobilenet_v2-wiseft-0.5.safetensors'
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open


def _meta(path: Path) -> dict[str, Any] | None:
    """The robustsig metadata of a saved classifier, or None when it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("robustsig", "null"))
    except (OSError, ValueError, RuntimeError):
        return None


def _wiseft_record(path: Path) -> Any:
    meta = _meta(path)
    return (meta or {}).get("meta", {}).get("wiseft")


def wiseft_checkpoints(zero_shot: str, finetuned: str | os.PathLike, alphas: Sequence[float],
                       out_dir: str | os.PathLike, *, name: str) -> dict[float, Path]:
    """Write (or reuse) the Wise-FT checkpoint of each alpha.

    Args:
        zero_shot: the spec of the model at alpha 0 (``bundled:mobilenet_v2``).
        finetuned: its finetuned ``model.safetensors`` (alpha 1; loaded as ``ZERO_SHOT_FAMILY:ARCH@finetuned``).
        alphas: the weights to write.
        out_dir: the folder of the checkpoints.
        name: the files' prefix (``NAME-wiseft-ALPHA.safetensors``).

    Returns:
        alpha -> its checkpoint.
    """
    from robustsig.models.checkpoint import save_classifier
    from robustsig.models.factory import load_classifier
    from robustsig.models.wiseft import interpolate

    out = Path(out_dir).expanduser().absolute()
    finetuned = Path(finetuned).expanduser().absolute()
    fingerprint = (_meta(finetuned) or {}).get("fingerprint")
    paths = {float(alpha): out / f"{name}-wiseft-{alpha:g}.safetensors" for alpha in alphas}
    wanted = {alpha: {"alpha": alpha, "zero_shot": zero_shot, "finetuned_fingerprint": fingerprint}
              for alpha in paths}
    stale = [alpha for alpha, path in paths.items()
             if fingerprint is None or (_wiseft_record(path) or {}).get("demo") != wanted[alpha]]
    if stale:
        ends = load_classifier(zero_shot), load_classifier(f"{zero_shot.split('@')[0]}@{finetuned}")
        for alpha in stale:
            mixed = interpolate(*ends, alpha)
            mixed.meta["wiseft"] = {**mixed.meta.get("wiseft", {}), "demo": wanted[alpha]}
            save_classifier(mixed, paths[alpha])
    return paths
