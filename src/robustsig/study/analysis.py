"""What an analysis of a study is, and everything it may use: the public analysis API.

An analysis is one unit that owns

- its **options**: a pydantic model derived from :class:`AnalysisOptions`, validated as its YAML section
  ``analyses: NAME: {...}`` (unknown keys and bad values are errors naming ``analyses.NAME.KEY``);
- its **tables**: frozen dataclasses registered with :func:`result_table`, one CSV each in ``results/``;
- its **plan**: the steps it adds for each model (:meth:`Analysis.plan_model`) and for the whole pool
  (:meth:`Analysis.plan_pool`), each an :class:`AnalysisTask` whose provenance keys the ledger, so a step is reused
  while its inputs and parameters are unchanged and recomputed when they change;
- its **report section**: :meth:`Analysis.report` returns the HTML of its section, built with the page's table
  and figure writers (:class:`robustsig.report.page.Page`).

The built-in analyses are listed in :mod:`robustsig.study.registry`; an installed package adds one through the
``robustsig.analyses`` entry-point group (the entry point names the :class:`Analysis` subclass). docs/analyses.md
("Writing an analysis") walks through a complete example.

Example:
    >>> from robustsig.study.analysis import Analysis, AnalysisOptions
    >>> class EchoOptions(AnalysisOptions):
    ...     word: str = "hello"
    >>> class Echo(Analysis):
    ...     name, title, Options = "echo", "Echo", EchoOptions
    >>> Echo().Options().word
    'hello'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from robustsig._atomic import atomic_output
from robustsig.data.base import read_image
from robustsig.study.plan import Planner
from robustsig.study.results import InputRecord, Results, column, result_table
from robustsig.study.sections import AnalysisOptions, ModelEntry, Section, suggest
from robustsig.study.stores import LayerRequest
from robustsig.study.subjects import Subject, model_subject
from robustsig.study.tasks import AnalysisTask, Outcome, RunContext, Task, files_present, has_rows

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig
    from robustsig.study.results import ModelRow

__all__ = ["Analysis", "AnalysisOptions", "AnalysisTask", "InputRecord", "LayerRequest", "ModelEntry", "Outcome",
           "Planner", "Results", "RunContext", "Section", "Subject", "Task", "atomic_output", "column",
           "evaluation_names", "read_image",
           "files_present", "has_rows", "model_subject", "result_table", "select_models", "unknown_datasets",
           "unknown_models"]


class Analysis:
    """One analysis of a study (see the module notes). Subclass it, set the class attributes, override the hooks
    the analysis needs; every hook has a do-nothing default.

    Attributes:
        name: the YAML key under ``analyses:``, the ``--only`` name and the prefix of its step ids (letters, digits
            and ``_``; unique among the installed analyses).
        title: the heading of its report section.
        Options: its options model (a subclass of :class:`AnalysisOptions`).
        tables: the result tables it writes (row types decorated with :func:`result_table`); a rerun drops their
            rows of models the config no longer has (:meth:`keeps`).
        essential: the names of the tables the report names when its section has nothing to show (default: its
            first table).
        origin: who provides it: ``robustsig`` or the installed distribution (set by the registry).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    Options: ClassVar[type[AnalysisOptions]] = AnalysisOptions
    tables: ClassVar[tuple[type, ...]] = ()
    essential: ClassVar[tuple[str, ...]] = ()
    origin: str = "robustsig"

    # ---- its section of the config
    def options(self, config: StudyConfig) -> Any:
        """Its options in ``config`` (None when the config has no section for it)."""
        return getattr(config.analyses, self.name, None)

    def enabled(self, config: StudyConfig) -> bool:
        """Whether ``config`` runs it: its section is present and not ``enabled: false``."""
        options = self.options(config)
        return options is not None and bool(getattr(options, "enabled", True))

    def check(self, config: StudyConfig) -> list[str]:
        """Problems across sections (a model or dataset name its options refer to that the study lacks), one line
        each, ``analyses.NAME.KEY: what was expected; got what`` (see :func:`unknown_models`); called only when the
        section is present."""
        return []

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        """Its section (JSON data) restricted to the ``models`` that ``--only`` keeps: drop the pairs or groups of
        models left out; None when nothing of it is left to run."""
        return section

    # ---- its plan
    def layer_requests(self, config: StudyConfig) -> Mapping[tuple[str, str], LayerRequest]:
        """``(model, dataset) -> layers`` that the store of that model and dataset must hold (``"all"`` or names),
        decided on the whole config so that ``--only`` never changes a store."""
        return {}

    def store_pooling(self, config: StudyConfig) -> str | None:
        """How the stores should pool layer outputs (``auto``, ``cls``, ``mean``), or None: no preference."""
        return None

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        """Add its steps for one model of the pool (called model by model, in pool order)."""

    def plan_pool(self, planner: Planner, config: StudyConfig) -> None:
        """Add its steps that compare models, after every model's own steps."""

    # ---- its results
    def keeps(self, row: Any, config: StudyConfig) -> bool:
        """Whether a row of one of its tables still belongs to the study: by default, a row with a ``model``
        column is kept when that model is in the config, a row without one always."""
        model = getattr(row, "model", None)
        return model is None or model in config.model_names()

    def summary(self, results: Results, config: StudyConfig) -> dict[str, dict[str, Any]]:
        """Columns of the terminal summary, ``model -> {column: value}``, read from its tables."""
        return {}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        """The HTML of its report section (escaped: build it with the page's writers), or None when its results
        are absent (the page then says so)."""
        return None


def evaluation_names(config: StudyConfig) -> list[str]:
    """The names of the study's evaluation sets: the in-distribution set, then the shift sets."""
    return list(dict.fromkeys(entry.name for entry in config.datasets.evaluation()))


def unknown_models(config: StudyConfig, keyed: Iterable[tuple[str, str | None]]) -> list[str]:
    """A problem line for each ``(key path, model name)`` whose name is not a model of the study (None: unset).

    >>> # unknown_models(config, [("analyses.cka.pairs[0].model_a", "RN50-zs")])
    """
    known = config.model_names()
    return [f"{key}: expected the name of a model of the study{suggest(name, known)}; got {name!r}"
            for key, name in keyed if name is not None and name not in known]


def unknown_datasets(config: StudyConfig, keyed: Iterable[tuple[str, str | None]]) -> list[str]:
    """A problem line for each ``(key path, dataset name)`` whose name is not an evaluation set of the study."""
    known = evaluation_names(config)
    return [f"{key}: expected the name of an evaluation dataset (one of {', '.join(known)}){suggest(name, known)}; "
            f"got {name!r}" for key, name in keyed if name is not None and name not in known]


def select_models(section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
    """A section with a ``models`` list restricted to the kept ``models`` (None when none of its models is kept)."""
    if not section.get("models"):
        return section
    kept = [name for name in section["models"] if name in models]
    return {**section, "models": kept} if kept else None
