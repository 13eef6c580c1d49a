"""Extraction steps: one activation store per subject (model or Wise-FT point) and dataset, reused across runs.

The store of ``SUBJECT`` on ``DATASET`` lives in ``STORE_DIR/SUBJECT/DATASET``. Its own key (model spec and weight
fingerprint, the dataset's file names, labels and bytes, preprocessing, layers...; see
:mod:`robustsig.extraction.key`) decides whether it is still valid. No path is part of it: a study folder moved,
renamed or copied elsewhere (stores, data and checkpoints with it) reuses its stores. An extraction step, in order:

1. *reused without loading the model*: the store is finished, and the ledger recorded that this store was checked
   against the same identity (spec and the bytes of the weights, class-name and template files, random-init seed,
   dataset description, layers), so nothing that determines its key changed;
2. otherwise the model is built and its store key computed (no forward pass): a finished store of that key, or of
   that key with more layers than needed, is *reused*;
3. an unfinished store of that key is *resumed* from its complete shards;
4. a store of the same model and settings made from other files of the dataset (images added, removed, changed)
   is *updated*: only the rows of new or changed images are computed, and the log names the files;
5. a store made for other settings (a changed checkpoint or layers) is *re-extracted into*, overwriting it: the
   config is the source of truth, and the log says which fields changed.

Layers are stored only for the models of CKA pairs, on the CKA dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from robustsig.errors import DataError
from robustsig.extraction.key import key_differences, key_settings
from robustsig.extraction.store import MANIFEST, ActivationStore, read_json, shard_index
from robustsig.study.results import jsonable
from robustsig.study.subjects import Subject
from robustsig.study.tasks import Outcome, RunContext, Task

LayerRequest = tuple[str, ...] | Literal["all"]
"""Layers a store must hold: names, ``"all"`` (every tap of the model), or ``()`` (none)."""


def _manifest(path: Path) -> dict[str, Any] | None:
    """The store's manifest, or None when there is none (or it is unreadable: extraction will say why)."""
    if not (path / MANIFEST).is_file():
        return None
    try:
        return read_json(path / MANIFEST)
    except DataError:
        return None


def _covers(stored: Any, wanted: dict[str, Any]) -> bool:
    """Whether a finished store of key ``stored`` holds what a store of key ``wanted`` would: the same key, or the
    same key with more layers (then pooled alike)."""
    if not isinstance(stored, dict):
        return False
    if stored == wanted:
        return True
    rest = ("layers", "pooling")
    same_rest = {k: v for k, v in stored.items() if k not in rest} == {k: v for k, v in wanted.items() if k not in rest}
    layers = stored.get("layers") or []
    return (same_rest and set(wanted["layers"]) <= set(layers)
            and (not wanted["layers"] or stored.get("pooling") == wanted["pooling"]))


def skipped_note(store: ActivationStore) -> str:
    """``, 1 undecodable image(s) skipped, 2 unlisted file(s) skipped (see the store's manifest)`` or ``""``."""
    unlisted = sum("id" not in item for item in store.skipped)
    undecodable = len(store.skipped) - unlisted
    parts = [f"{undecodable} undecodable image(s) skipped"] if undecodable else []
    if unlisted:
        parts.append(f"{unlisted} unlisted file(s) skipped (unreadable, not regular files or link loops; the "
                     "store's manifest names them)")
    return "".join(f", {part}" for part in parts)


class ExtractTask(Task):
    """Make sure the store of ``subject`` on ``dataset`` exists and matches the config (see the module docstring).

    Args:
        subject: the model or Wise-FT point.
        dataset: the dataset name.
        layers: the layer taps the store must hold.
        pooling: how layer outputs are pooled (CKA's option).
    """

    tag = "extract"

    def __init__(self, subject: Subject, dataset: str, layers: LayerRequest = (), pooling: str = "auto") -> None:
        super().__init__(f"extract:{subject.name}:{dataset}", f"{subject.name} on {dataset}",
                         models=subject.models)
        self.subject = subject
        self.dataset = dataset
        self.layers = layers
        self.pooling = pooling

    def _identity(self, ctx: RunContext) -> dict[str, Any]:
        layers = self.layers if self.layers == "all" else list(self.layers)
        return jsonable({"subject": ctx.classifiers.identity(self.subject), "dataset": ctx.description(self.dataset),
                         "layers": layers, "pooling": self.pooling if layers else None, "autocast": ctx.autocast})

    def _reuse(self, ctx: RunContext, path: Path, digest: str, how: str) -> Outcome:
        store = ActivationStore(path)
        ctx.verify(self.subject, self.dataset, store, digest)
        return Outcome("reused", f"{how} ({store.num_rows} images{skipped_note(store)})")

    def execute(self, ctx: RunContext) -> Outcome:
        from robustsig.extraction.extractor import describe_check, extract, store_key

        dataset = ctx.dataset(self.dataset)
        path = ctx.store_path(self.subject, self.dataset)
        name = f"{self.subject.name}/{self.dataset}"
        identity = self._identity(ctx)
        manifest = _manifest(path)
        checked = ctx.ledger.store(name)
        if (manifest is not None and manifest.get("complete") and checked is not None
                and checked["identity"] == identity and checked["digest"] == manifest.get("key_digest")):
            return self._reuse(ctx, path, checked["digest"], "reused")

        classifier = ctx.classifiers.get(self.subject)
        layers = None if not self.layers else ("all" if self.layers == "all" else list(self.layers))
        pooling = self.pooling
        key = store_key(classifier, dataset, layers, pooling=pooling, autocast=ctx.autocast,
                        description=ctx.description(self.dataset))
        overwrite = False
        if manifest is not None:
            stored = manifest.get("key")
            if manifest.get("complete") and _covers(stored, key):
                ctx.ledger.mark_store(name, manifest["key_digest"], identity)
                return self._reuse(ctx, path, manifest["key_digest"], "reused (checked against the model)")
            shards = [p for p in path.iterdir() if shard_index(p.name) is not None]
            if stored != key and isinstance(stored, dict) and _covers(key_settings(stored), key_settings(key)):
                # only the dataset's files changed: extract updates the store (keeping any extra layers it holds)
                if stored.get("layers") and stored.get("layers") != key["layers"]:
                    layers, pooling = list(stored["layers"]), str(stored["pooling"])
                ctx.log.line(self.tag, self.label, f"the dataset's files changed since the store in {path} was "
                                                   "made: updating it (only new or changed images are computed)")
            elif stored != key and (manifest.get("complete") or shards):
                changed = "; ".join(key_differences(key_settings(stored) if isinstance(stored, dict) else stored,
                                                    key_settings(key))) or "another key"
                ctx.log.line(self.tag, self.label, f"the store in {path} was made for other inputs ({changed}); "
                                                   "re-extracting into it (the config is the source of truth)")
                overwrite = True
            elif shards:
                ctx.log.line(self.tag, self.label, f"resuming the unfinished store in {path} ({len(shards)} "
                                                   "shard(s) already written)")
        config = ctx.config
        # extract's own bar where bars show (a terminal); its closing line would repeat this step's log line
        store = extract(classifier, dataset, path, layers=layers, batch_size=config.batch_size,
                        num_workers=config.workers, device=ctx.device, autocast=ctx.autocast, pooling=pooling,
                        overwrite=overwrite, progress=ctx.progress and sys.stderr.isatty())
        digest = store.manifest["key_digest"]
        ctx.ledger.mark_store(name, digest, identity)
        ctx.verify(self.subject, self.dataset, store, digest)
        summary = store.summary
        check = store.check or {}
        note = describe_check(check) if check.get("status") == "update" else ""
        return Outcome("done", f"{'updated (' + note + '): computed' if note else 'extracted'} "
                               f"{summary['computed']} images in {summary['seconds']:.1f} s "
                               f"({summary['images_per_s'] or 0:.1f} images/s{skipped_note(store)}; "
                               f"{store.num_rows} stored)")
