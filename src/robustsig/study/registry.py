"""The analyses a study can run, in the order they run and appear in the report: the built-in ones (:data:`BUILTIN`,
one line each), then those that installed packages add through the ``robustsig.analyses`` entry-point group
(found with :func:`importlib.metadata.entry_points`; see :mod:`robustsig.study.analysis` for the contract).

A plugin cannot break the built-in analyses. One that fails to import, whose entry point names no
:class:`~robustsig.study.analysis.Analysis`, whose options model or hooks raise, is kept as a *broken* analysis: a
study whose config has its section validates, every built-in analysis runs, and the plugin's steps fail with a
message naming the plugin and the error (the run then exits non-zero). Mistakes in the *user's* section of a working
plugin are config errors like any other, naming ``analyses.NAME.KEY`` and the plugin.

:func:`build_plan` turns a config into the plan's tasks.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, ValidationError, WrapValidator, create_model, model_validator

from robustsig.errors import DataError, InputError
from robustsig.study.analysis import Analysis
from robustsig.study.plan import Planner
from robustsig.study.sections import AnalysisOptions, Section
from robustsig.study.tasks import Outcome, RunContext, Task

if TYPE_CHECKING:
    from robustsig.study.config import StudyConfig

BUILTIN: tuple[str, ...] = (
    "robustsig.study.analyses.accuracy:Accuracy",
    "robustsig.study.analyses.kurtosis:Kurtosis",
    "robustsig.study.analyses.importance:Importance",
    "robustsig.study.analyses.pruning:Pruning",
    "robustsig.study.analyses.concepts:Concepts",
    "robustsig.study.analyses.atlas:Atlas",
    "robustsig.study.analyses.cka:Cka",
    "robustsig.study.analyses.noclip:NoClip",
    "robustsig.study.analyses.wiseft:WiseFt",
    "robustsig.study.analyses.layer_kurtosis:LayerKurtosis",
    "robustsig.study.analyses.lowrank:LowRank",
    "robustsig.study.analyses.predict_er:PredictEr",
)
"""The built-in analyses (``module:class``), in run and report order; ``predict_er`` reads the others' tables."""

ENTRY_POINT_GROUP = "robustsig.analyses"
"""The entry-point group through which an installed package adds an analysis (the entry point's name is the
analysis's name, its value the :class:`~robustsig.study.analysis.Analysis` subclass: ``atlas = pkg.mod:Atlas``)."""

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_T = TypeVar("_T")


class BrokenOptions(AnalysisOptions):
    """The section of a broken plugin: kept as given, so the rest of the config still validates."""

    model_config = ConfigDict(extra="allow", frozen=True)


class PluginFailure(Task):
    """A step standing for a broken plugin's analysis: it fails with the plugin's error."""

    tag = "plugin"

    def __init__(self, name: str, origin: str, error: str) -> None:
        super().__init__(f"plugin:{name}", name)
        self.origin = origin
        self.error = error

    def execute(self, ctx: RunContext) -> Outcome:
        raise DataError(f"the {self.label!r} analysis ({self.origin}) is broken: {self.error}; the built-in "
                        "analyses are not affected. Fix or uninstall the plugin, or remove its section from the "
                        "config")


class BrokenAnalysis(Analysis):
    """An installed analysis that cannot run (see the module notes); its steps fail, naming it."""

    Options = BrokenOptions

    def __init__(self, name: str, error: str) -> None:
        self.name = name  # type: ignore[misc]
        self.title = f"{name} (broken plugin)"  # type: ignore[misc]
        self.failures: set[str] = {error}

    def report(self, page: Any, models: Any) -> str | None:
        return page.note(f"The {self.name} analysis ({self.origin}) is broken and did not run: "
                         f"{'; '.join(sorted(failures(self)))}.")


# --------------------------------------------------------------------------- loading

_LOADED: list[Analysis] | None = None


def _load_object(path: str) -> Any:
    module, _, attribute = path.partition(":")
    value: Any = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def _instance(value: Any, where: str) -> Analysis:
    """The analysis an entry point or a :data:`BUILTIN` line names (a subclass is instantiated), checked."""
    analysis = value() if isinstance(value, type) and issubclass(value, Analysis) else value
    if not isinstance(analysis, Analysis):
        raise InputError(f"{where} is {type(value).__name__} {value!r}, not a robustsig.study.analysis.Analysis")
    name = getattr(analysis, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"{where}: its name must be lower-case letters, digits and _ (a YAML key); got {name!r}")
    if not isinstance(getattr(analysis, "title", None), str):
        raise InputError(f"{where}: its title must be a string (the report heading)")
    options = getattr(analysis, "Options", None)
    if not (isinstance(options, type) and issubclass(options, AnalysisOptions)):
        raise InputError(f"{where}: its Options must be a subclass of robustsig.study.analysis.AnalysisOptions; got "
                         f"{options!r}")
    return analysis


def _plugins(taken: set[str]) -> Iterator[Analysis]:
    for point in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(point, "dist", None)
        origin = (f"plugin {dist.name} {dist.version}" if dist is not None else f"plugin {point.value}")
        try:
            analysis = _instance(point.load(), f"entry point {point.name} = {point.value}")
            if analysis.name != point.name:
                raise InputError(f"entry point {point.name!r} names an analysis called {analysis.name!r}; the two "
                                 "must be equal (the entry point's name is the YAML key)")
        except Exception as error:  # noqa: BLE001 (a broken plugin must not stop the built-in analyses)
            analysis = BrokenAnalysis(point.name, f"{type(error).__name__}: {error}")
        if analysis.name in taken:
            warnings.warn(f"{origin} adds an analysis {analysis.name!r}, a name already taken; it is ignored",
                          RuntimeWarning, stacklevel=3)
            continue
        analysis.origin = origin
        taken.add(analysis.name)
        yield analysis


def analyses() -> list[Analysis]:
    """Every analysis (built-in, then installed), in run and report order; loaded once per process."""
    global _LOADED
    if _LOADED is None:
        builtin = [_instance(_load_object(path), path) for path in BUILTIN]
        _LOADED = builtin + list(_plugins({analysis.name for analysis in builtin}))
    return list(_LOADED)


def names() -> tuple[str, ...]:
    """The analysis names, in order (the keys ``analyses:`` and ``--only`` accept)."""
    return tuple(analysis.name for analysis in analyses())


def get(name: str) -> Analysis:
    """The analysis called ``name``.

    Raises:
        InputError: no analysis has that name.
    """
    for analysis in analyses():
        if analysis.name == name:
            return analysis
    raise InputError(f"no analysis called {name!r}; expected one of {', '.join(names())}")


def origin_note(name: str) -> str:
    """`` (analysis from plugin DIST VERSION)`` for an installed analysis, nothing for a built-in one."""
    analysis = next((item for item in analyses() if item.name == name), None)
    return f" (analysis from {analysis.origin})" if analysis is not None and analysis.origin != "robustsig" else ""


def guarded(analysis: Analysis, stage: str, call: Callable[[], _T], default: _T) -> _T:
    """``call()``; for an installed analysis, an exception is recorded as its failure (its steps then fail, naming
    it) and ``default`` returned, so a broken plugin never stops the built-in analyses."""
    if analysis.origin == "robustsig":
        return call()
    try:
        return call()
    except Exception as error:  # noqa: BLE001
        failures(analysis).add(f"{stage} raised {type(error).__name__}: {error}")
        return default


def failures(analysis: Analysis) -> set[str]:
    """What went wrong in an installed analysis so far (its hooks' errors), kept on the instance."""
    found = getattr(analysis, "failures", None)
    if found is None:
        found = set()
        analysis.failures = found  # type: ignore[attr-defined]
    return found


def owner(table: type) -> Analysis | None:
    """The analysis that writes ``table`` (None: a table every study writes, such as models.csv)."""
    return next((analysis for analysis in analyses() if table in analysis.tables), None)


# --------------------------------------------------------------------------- the config's analyses section

class AnalysesSection(Section):
    """The analyses to run: one optional section per analysis. A key that is present runs (``kurtosis:`` alone
    means: with the defaults); ``enabled: false`` keeps the options but skips it."""

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {key: ({} if value is None else value) for key, value in data.items()}
        return data

    def enabled(self, name: str) -> bool:
        """Whether the analysis ``name`` runs (its section is present and enabled)."""
        section = getattr(self, name, None)
        return section is not None and bool(getattr(section, "enabled", True))


def _plugin_section(analysis: Analysis) -> Callable[[Any, Any], Any]:
    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise  # the user's mistakes in the section: config errors, naming the plugin (see config.py)
        except Exception as error:  # noqa: BLE001 (a bug in the plugin's own validators)
            failures(analysis).add(f"its options model raised {type(error).__name__}: {error}")
            return BrokenOptions.model_validate(value if isinstance(value, dict) else {})
    return validate


def options_model() -> type[AnalysesSection]:
    """The model of the config's ``analyses`` section: one optional field per analysis, with its options model."""
    fields: dict[str, Any] = {}
    for analysis in analyses():
        annotation: Any = analysis.Options | None
        if analysis.origin != "robustsig":
            annotation = Annotated[annotation, WrapValidator(_plugin_section(analysis))]
        fields[analysis.name] = (annotation, Field(default=None, description=analysis.title))
    return create_model("Analyses", __base__=AnalysesSection, **fields)


# --------------------------------------------------------------------------- the plan

def enabled(config: StudyConfig) -> list[Analysis]:
    """The analyses ``config`` runs, in run order."""
    return [analysis for analysis in analyses() if config.analyses.enabled(analysis.name)]


def _merged_requests(config: StudyConfig) -> dict[tuple[str, str], Any]:
    """Every analysis's layer requests: ``"all"`` wins, names are merged in order."""
    requests: dict[tuple[str, str], Any] = {}
    for analysis in enabled(config):
        for key, layers in guarded(analysis, "layer_requests", lambda a=analysis: dict(a.layer_requests(config)),
                                   {}).items():
            current = requests.get(key, ())
            if layers == "all" or current == "all":
                requests[key] = "all"
            else:
                requests[key] = tuple(dict.fromkeys([*current, *layers]))
    return requests


def build_plan(full: StudyConfig, selected: StudyConfig) -> list[Task]:
    """The tasks of a run of ``selected`` (the config, or its ``--only`` selection), in execution order: each
    model's extractions and own steps (model by model, one model built at a time), then the steps that compare
    models.

    Args:
        full: the whole config; it decides which stores hold layers and how they are pooled, so a selection never
            changes a store.
        selected: what to run.
    """
    present = [analysis for analysis in analyses() if analysis.options(full) is not None]
    pooling = next((choice for analysis in present
                    if (choice := guarded(analysis, "store_pooling", lambda a=analysis: a.store_pooling(full), None))),
                   "auto")
    planner = Planner(_merged_requests(full), pooling)
    chosen = enabled(selected)
    for entry in selected.models:
        for analysis in chosen:
            with _planning(planner, analysis):
                guarded(analysis, "plan_model", lambda a=analysis: a.plan_model(planner, selected, entry), None)
    for analysis in chosen:
        with _planning(planner, analysis):
            guarded(analysis, "plan_pool", lambda a=analysis: a.plan_pool(planner, selected), None)
    for analysis in chosen:
        if analysis.origin != "robustsig" and failures(analysis):
            planner.add(PluginFailure(analysis.name, analysis.origin, "; ".join(sorted(failures(analysis)))))
    return planner.tasks()


@contextmanager
def _planning(planner: Planner, analysis: Analysis) -> Iterator[None]:
    """Tasks added meanwhile are tagged with the analysis's origin (a failing plugin step names its plugin)."""
    planner.origin = analysis.origin
    try:
        yield
    finally:
        planner.origin = "robustsig"
