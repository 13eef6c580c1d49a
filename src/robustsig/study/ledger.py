"""The done-ledger of a study run: which steps have finished, and on exactly what inputs.

``results/ledger.json`` holds, per step of the plan (``accuracy:ViT-B-32-zs``, ``concept_ap:rn50-ft:singular``...),
the digest of its *provenance* (the digests of the activation stores it read and the analysis parameters it
used), and per activation store what it was last checked against::

    {"format": 1,
     "steps":  {STEP_ID: {"digest": "...", "provenance": {...}, "finished": "2024-..."}},
     "stores": {"MODEL/DATASET": {"digest": KEY_DIGEST, "identity": {...}}}}

A step is skipped when its recorded digest equals the digest of its current provenance and its results exist, so
a rerun after an interruption redoes nothing already done, and a changed parameter (a threshold) re-runs only the
steps whose provenance holds it. The file is rewritten atomically after every step: an interrupted run loses at
most the step it was in. A ledger that cannot be read is set aside (the steps are recomputed), never trusted.

Example:
    >>> import tempfile
    >>> ledger = Ledger(tempfile.mkdtemp())
    >>> digest = provenance_digest({"threshold": 0.9})
    >>> ledger.mark("concepts:a", digest, {"threshold": 0.9}); ledger.finished("concepts:a", digest)
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustsig._atomic import write_text_atomic
from robustsig.study.results import jsonable

LEDGER_FORMAT = 1


def provenance_digest(provenance: Mapping[str, Any]) -> str:
    """A short digest of a step's provenance (JSON with sorted keys)."""
    text = json.dumps(jsonable(provenance), sort_keys=True, allow_nan=False)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Ledger:
    """``results/ledger.json`` (see the module docstring).

    Args:
        results_dir: the study's ``results/`` folder.

    Attributes:
        problem: why an existing ledger was set aside (None when it was read, or there was none).
    """

    FILE = "ledger.json"

    def __init__(self, results_dir: str | os.PathLike) -> None:
        self.path = Path(results_dir) / self.FILE
        self.problem: str | None = None
        self._steps: dict[str, dict[str, Any]] = {}
        self._stores: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                document = json.loads(self.path.read_text(encoding="utf-8"))
                if document.get("format") != LEDGER_FORMAT:
                    raise ValueError(f"format {document.get('format')!r}, expected {LEDGER_FORMAT}")
                self._steps = dict(document["steps"])
                self._stores = dict(document["stores"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                self.problem = f"{self.path} is not a readable ledger ({error}); every step is checked again"
                self._steps, self._stores = {}, {}

    # ---- steps
    def finished(self, step: str, digest: str) -> bool:
        """Whether ``step`` finished on inputs of this provenance digest."""
        return self._steps.get(step, {}).get("digest") == digest

    def digest(self, step: str) -> str | None:
        """The provenance digest ``step`` last finished with (None: never)."""
        return self._steps.get(step, {}).get("digest")

    def mark(self, step: str, digest: str, provenance: Mapping[str, Any]) -> None:
        """Record that ``step`` finished with this provenance, and save."""
        self._steps[step] = {"digest": digest, "provenance": jsonable(dict(provenance)),
                             "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.save()

    def forget(self, step: str) -> None:
        """Drop ``step`` (it failed: its old results no longer match), and save."""
        if self._steps.pop(step, None) is not None:
            self.save()

    # ---- activation stores
    def store(self, name: str) -> dict[str, Any] | None:
        """What the store ``MODEL/DATASET`` was last checked against: ``{"digest", "identity"}``."""
        return self._stores.get(name)

    def mark_store(self, name: str, digest: str, identity: Mapping[str, Any]) -> None:
        self._stores[name] = {"digest": digest, "identity": jsonable(dict(identity))}
        self.save()

    def save(self) -> None:
        document = {"format": LEDGER_FORMAT, "steps": self._steps, "stores": self._stores}
        write_text_atomic(self.path, json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n")
