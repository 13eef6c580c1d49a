"""The steps of a study plan, and what every run shares while it executes them.

A :class:`Task` is one node of the plan's DAG: an extraction (:class:`robustsig.study.stores.ExtractTask`), an AP
computation, or an analysis of one model or pair. Its ``needs`` are the ids of the tasks it reads the outputs of.
An :class:`AnalysisTask` is skipped when the ledger says it finished with the same provenance (the digests of the
stores it reads and its parameters) and its results are still there.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from robustsig.errors import InputError
from robustsig.extraction.store import ActivationStore
from robustsig.study.baseline import BaselineLine
from robustsig.study.ledger import Ledger, provenance_digest
from robustsig.study.results import InputRecord, Results
from robustsig.study.runlog import RunLog
from robustsig.study.subjects import Classifiers, Subject

if TYPE_CHECKING:
    from robustsig.study.config import StudyConfig

Status = Literal["done", "reused"]


@dataclass(frozen=True)
class Outcome:
    """How a task ended: ``done`` (computed now) or ``reused`` (nothing to do), and a line for the log."""

    status: Status
    message: str


@dataclass(frozen=True)
class VerifiedStore:
    """An activation store checked against the current model and dataset in this run, its key digest, and the
    digest of its dataset's annotations (class names, class map, concepts: what the store does not hold)."""

    store: ActivationStore
    digest: str
    annotations: str | None = None

    @property
    def provenance(self) -> str:
        """What a step that reads the store *and* its dataset's labels, class map or concepts is keyed by: the
        store's digest and the annotations' digest (a swapped class-map entry re-scores the store)."""
        return f"{self.digest}+{self.annotations}"

    def record(self, model: str, dataset: str) -> InputRecord:
        """What a results table computed on this store records in its provenance."""
        return InputRecord(model, dataset, self.digest, self.store.num_rows, len(self.store.skipped))


class RunContext:
    """What the tasks of one run share: the config, the results folder and its ledger, the log, the baseline
    line, the classifiers, the datasets (opened once) and the stores verified so far.

    Args:
        config: the study as selected for this run (``--only``).
        results: the ``results/`` folder.
        ledger: its done-ledger.
        log: the run log.
        baseline: the ER line.
        classifiers: builds the subjects' classifiers.
        device: where models run (None: CUDA when available).
        progress: show progress bars.
    """

    def __init__(self, config: StudyConfig, results: Results, ledger: Ledger, log: RunLog, baseline: BaselineLine,
                 classifiers: Classifiers, *, device: str | None, progress: bool) -> None:
        self.config = config
        self.results = results
        self.ledger = ledger
        self.log = log
        self.baseline = baseline
        self.classifiers = classifiers
        self.device = device
        self.progress = progress
        self.autocast = None if config.autocast == "none" else config.autocast
        self._datasets: dict[str, Any] = {}
        self._descriptions: dict[str, dict[str, Any]] = {}
        self._annotations: dict[str, str | None] = {}
        self._stores: dict[tuple[str, str], VerifiedStore] = {}

    def dataset(self, name: str) -> Any:
        """The dataset ``name`` of the config, opened with its options (once per run)."""
        if name not in self._datasets:
            from robustsig.data.registry import open_dataset

            entry = self.config.dataset(name)
            self._datasets[name] = open_dataset(entry.kind, entry.root, **entry.options)
        return self._datasets[name]

    def description(self, name: str) -> dict[str, Any]:
        """:func:`~robustsig.extraction.key.describe_dataset` of dataset ``name`` (its files' names, labels and bytes,
        no path), taken once per run as the dataset is opened once: every store of the run is checked against the
        same snapshot (one ``stat`` per file; a file is read only when its stat data changed since it was last
        hashed, and the log says how many were), and a file changed during the run changes the next run's keys."""
        if name not in self._descriptions:
            from robustsig.extraction.extractor import dataset_listing, describe_check
            from robustsig.extraction.key import describe_dataset

            dataset = self.dataset(name)
            listing = dataset_listing(dataset)
            if listing is None:
                self._descriptions[name] = describe_dataset(dataset)
            else:
                self._descriptions[name] = describe_dataset(listing)
                note = describe_check({"files": listing.report.as_dict()
                                       | {"stat_only_examples": listing.report.stat_only}})
                if note:
                    self.log.line("files", name, note)
        return self._descriptions[name]

    def store_path(self, subject: Subject, dataset: str) -> Path:
        """``STORE_DIR/SUBJECT/DATASET``: one store per model (or Wise-FT point) and dataset."""
        return Path(self.config.store_dir) / subject.name / dataset

    def annotations(self, name: str) -> str | None:
        """The digest of dataset ``name``'s annotations (:meth:`robustsig.data.base.ImageSource.annotations`),
        None for a dataset without them; once per run, as the dataset is opened once."""
        if name not in self._annotations:
            annotations = getattr(self.dataset(name), "annotations", None)
            self._annotations[name] = provenance_digest(annotations()) if callable(annotations) else None
        return self._annotations[name]

    def verify(self, subject: Subject, dataset: str, store: ActivationStore, digest: str) -> VerifiedStore:
        verified = VerifiedStore(store, digest, self.annotations(dataset))
        self._stores[(subject.name, dataset)] = verified
        return verified

    def store(self, subject: Subject, dataset: str) -> VerifiedStore:
        """The store of ``subject`` on ``dataset`` that this run's extraction step verified."""
        try:
            return self._stores[(subject.name, dataset)]
        except KeyError:
            raise InputError(f"the activations of {subject.name} on {dataset} were not extracted in this run "
                             "(a task ran before the extraction it needs)") from None


class Task(ABC):
    """One step of the plan.

    Attributes:
        id: unique in the plan (``TAG:SUBJECT[:MORE]``), the ledger's key.
        label: what the log line names (``ViT-B-32-zs on imagenet-r``).
        needs: ids of the tasks whose outputs it reads.
        models: the pool models it concerns (for the run summary's failures).
    """

    tag: ClassVar[str]
    origin: str = "robustsig"
    """Who planned it: ``robustsig``, or the plugin whose analysis added it (its failures name the plugin)."""

    def __init__(self, id: str, label: str, needs: tuple[str, ...] = (), models: tuple[str, ...] = ()) -> None:
        self.id = id
        self.label = label
        self.needs = tuple(dict.fromkeys(needs))
        self.models = models

    @abstractmethod
    def execute(self, ctx: RunContext) -> Outcome:
        """Do the step (or find it done)."""


class AnalysisTask(Task):
    """A step that reads stores (or other steps' files) and writes results; skipped when its provenance is
    unchanged since it last finished and :meth:`present` finds its results."""

    @abstractmethod
    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        """Everything the results depend on: store digests, parameters (JSON data)."""

    @abstractmethod
    def present(self, ctx: RunContext) -> bool:
        """Whether its results are there (a table lost or edited away is recomputed)."""

    @abstractmethod
    def compute(self, ctx: RunContext) -> str:
        """Compute and write the results; returns the log line's text."""

    def execute(self, ctx: RunContext) -> Outcome:
        provenance = self.provenance(ctx)
        digest = provenance_digest(provenance)
        if ctx.ledger.finished(self.id, digest) and self.present(ctx):
            return Outcome("reused", "unchanged since the last run")
        message = self.compute(ctx)
        ctx.ledger.mark(self.id, digest, provenance)
        return Outcome("done", message)


def has_rows(results: Results, table: type, **match: Any) -> bool:
    """Whether ``table`` exists and holds a row whose columns equal ``match``."""
    if not results.has(table):
        return False
    return any(all(getattr(row, name) == value for name, value in match.items()) for row in results.read(table))


def files_present(*paths: str | os.PathLike) -> bool:
    return all(Path(path).is_file() for path in paths)
