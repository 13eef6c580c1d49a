"""NoCLIP (App. F, Table 8, Fig. 10): robustness signatures in a model pretrained without language supervision.

The paper's NoCLIP (Fang et al. 2022) is a ViT-B-16 pretrained SimCLR-style on YFCC-15M, then finetuned with labels
on the part of YFCC-15M that maps to ImageNet classes. It has a positive ER without CLIP's text tower, and App. F
asks whether it shows the signatures of the robust CLIP models: Table 8 gives its ImageNet accuracy, ER, activation
kurtosis and unique concepts; Fig. 10 draws its importance distribution against the robust zero-shot models.

How the study recognises it: NoCLIP is an ordinary model of the pool (``kind: finetuned``, its own ``pretraining``
tag such as ``yfcc15m-simclr``), so every per-model analysis measures it as it measures the others and it takes its
own row in the pool tables; this analysis names it (``models``) and says what it is compared with (``compare``,
default: the zero-shot models of its backbone, Fig. 10's ViT-B-16 models; every zero-shot model when none shares
its backbone). A new model kind would add a column to every table in the paper's layout (the paper has none), and a
flag on the model entry would put one appendix's option into every model's section.

It computes nothing new: its step reads the rows of ``accuracy``, ``kurtosis``, ``concepts`` and ``importance``
(waiting for those steps) and writes ``noclip.csv``, one row per model named or compared, with Table 8's columns and
the privileged-direction count and top ratio that quantify Fig. 10. A column stays empty where its analysis has no
row for the model (it is not part of the study), and the report says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from matplotlib.figure import Figure
from pydantic import Field

from robustsig.errors import InputError
from robustsig.report.figures import grid
from robustsig.report.tables import ReportTable, decimal, integer, percent, signed_percent
from robustsig.study.analyses.accuracy import AccuracyRow, RobustnessRow
from robustsig.study.analyses.concepts.summary import ConceptRow
from robustsig.study.analyses.importance import ImportanceRow, PrivilegedRow
from robustsig.study.analyses.kurtosis import KurtosisRow
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, Planner, RunContext, column,
                                      result_table, unknown_models)
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig

READS = ("accuracy", "kurtosis", "concepts", "importance")
"""The analyses whose rows Table 8 and Fig. 10 show (their steps ``NAME:MODEL``)."""

BASIS = "singular"
"""The basis of Table 8's unique concepts (the head's singular directions, as in Table 3)."""


class NoClipOptions(AnalysisOptions):
    """App. F: models pretrained without language supervision, against the robust zero-shot models."""

    models: list[str] = Field(min_length=1, description="the pool models that play NoCLIP (Table 8's rows)")
    compare: list[str] | None = Field(
        default=None, description="the models they are compared with in Table 8 and Fig. 10 (default: the zero-shot "
                                  "models of their backbone, else every zero-shot model)")


@result_table
@dataclass(frozen=True)
class NoClipRow:
    """Table 8: one model named as NoCLIP, or one model it is compared with."""

    TABLE: ClassVar[str] = "noclip"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = column("model name")
    role: str = column("noclip (a model of analyses.noclip.models) or compared (a model of Fig. 10's comparison)")
    acc_id: float | None = column("accuracy on the in-distribution set (accuracy.csv)")
    er: float | None = column("effective robustness (robustness.csv; empty where ACC(I) is 0 or 1)")
    kurtosis: float | None = column("activation kurtosis of h (kurtosis.csv, on its dataset)")
    unique_concepts: int | None = column("unique concepts, singular basis (concepts.csv, at its threshold)")
    privileged: int | None = column("privileged directions (privileged.csv)")
    top_ratio: float | None = column("the largest importance over the mean importance (privileged.csv)")


def compared_models(config: StudyConfig) -> list[str]:
    """The models NoCLIP is compared with: ``compare``, else the zero-shot models of the NoCLIP models' backbones,
    else every zero-shot model (never a NoCLIP model itself)."""
    options = config.analyses.noclip
    if options.compare is not None:
        return list(options.compare)
    known = {entry.name: entry for entry in config.models}
    backbones = {known[name].backbone for name in options.models if name in known}
    zero_shot = [entry for entry in config.models if entry.kind == "zero-shot" and entry.name not in options.models]
    same = [entry.name for entry in zero_shot if entry.backbone in backbones]
    return same or [entry.name for entry in zero_shot]


class NoClipTask(AnalysisTask):
    """Table 8 from the rows of the analyses it reads."""

    tag = "noclip"

    def __init__(self, models: Sequence[str], compared: Sequence[str], reads: Sequence[str],
                 needs: tuple[str, ...]) -> None:
        super().__init__("noclip", f"{', '.join(models)} against {len(compared)} model(s)", needs,
                         (*models, *compared))
        self.noclip = list(models)
        self.compared = list(compared)
        self.reads = list(reads)

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"models": self.noclip, "compare": self.compared,
                "reads": {step: ctx.ledger.digest(step) for step in self.reads}}

    def present(self, ctx: RunContext) -> bool:
        return ctx.results.has(NoClipRow)

    def compute(self, ctx: RunContext) -> str:
        def rows_of(table: type) -> list[Any]:
            return ctx.results.read(table) if ctx.results.has(table) else []

        id_set = ctx.config.datasets.id.name
        accuracy = {row.model: row.accuracy for row in rows_of(AccuracyRow) if row.dataset == id_set}
        er = {row.model: row.er for row in rows_of(RobustnessRow)}
        kurtosis = {row.model: row for row in rows_of(KurtosisRow)}
        concepts = {row.model: row for row in rows_of(ConceptRow) if row.basis == BASIS}
        privileged = {row.model: row for row in rows_of(PrivilegedRow)}
        rows = []
        for model, role in [*((m, "noclip") for m in self.noclip), *((m, "compared") for m in self.compared)]:
            rows.append(NoClipRow(model, role, accuracy.get(model), er.get(model),
                                  kurtosis[model].kurtosis if model in kurtosis else None,
                                  concepts[model].unique_concepts if model in concepts else None,
                                  privileged[model].num_privileged if model in privileged else None,
                                  privileged[model].top_ratio if model in privileged else None))
        ctx.results.write(NoClipRow, rows)
        empty = [name for name, source in (("ACC", accuracy), ("ER", er), ("kurtosis", kurtosis),
                                            ("unique concepts", concepts), ("privileged directions", privileged))
                 if not any(row.model in source for row in rows)]
        ctx.results.record(NoClipRow, [], {
            "id_set": id_set, "kurtosis_dataset": next(iter({row.dataset for row in kurtosis.values()}), None),
            "concepts": f"{BASIS} basis, threshold {next(iter({row.threshold for row in concepts.values()}), None)}",
            "compare": self.compared, "empty": empty})
        shown = rows[0]
        return (f"{shown.model}: ACC(I) {percent(shown.acc_id) or '-'}%, ER {signed_percent(shown.er) or '-'}, "
                f"kurtosis {decimal(1)(shown.kurtosis) or '-'}, {integer(shown.unique_concepts) or '-'} unique "
                f"concepts; compared with {len(self.compared)} model(s)"
                + (f" (no {', '.join(empty)}: their analyses have no rows for these models)" if empty else ""))


class NoClip(Analysis):
    """NoCLIP against the robust zero-shot models (see the module notes)."""

    name = "noclip"
    title = "NoCLIP: a robust model without language supervision"
    Options = NoClipOptions
    tables = (NoClipRow,)

    def check(self, config: StudyConfig) -> list[str]:
        options = config.analyses.noclip
        problems = unknown_models(config, [(f"analyses.noclip.models[{i}]", name)
                                           for i, name in enumerate(options.models)])
        problems += unknown_models(config, [(f"analyses.noclip.compare[{i}]", name)
                                            for i, name in enumerate(options.compare or [])])
        both = [name for name in options.compare or [] if name in options.models]
        if both:
            problems.append(f"analyses.noclip.compare: expected models other than NoCLIP's; got {both}, also in "
                            "analyses.noclip.models")
        return problems

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        kept = [name for name in section["models"] if name in models]
        if not kept:
            return None
        compare = section.get("compare")
        return {**section, "models": kept, **({"compare": [name for name in compare if name in models]}
                                               if compare is not None else {})}

    def plan_pool(self, planner: Planner, config: StudyConfig) -> None:
        models, compared = list(config.analyses.noclip.models), compared_models(config)
        planned = {task.id for task in planner}
        reads = [f"{analysis}:{model}" for model in [*models, *compared] for analysis in READS]
        planner.add(NoClipTask(models, compared, reads, tuple(step for step in reads if step in planned)))

    def keeps(self, row: Any, config: StudyConfig) -> bool:
        """A row of a model the analysis still names or compares."""
        options = self.options(config)
        return options is not None and row.model in {*options.models, *compared_models(config)}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        rows = page.read(NoClipRow)
        if not rows:
            return None
        parameters = page.parameters("noclip")
        text = page.table(noclip_table(rows, parameters))
        importance = page.read(ImportanceRow)
        if any(row.model == noclip.model for noclip in rows for row in importance):
            text += page.figure(lambda: noclip_figure(models, rows, importance), "fig10_noclip",
                                "Fig. 10: importance of the head's singular directions, ranked (x: privileged), of "
                                "each NoCLIP model (black) and the models it is compared with, labelled by their "
                                "pretraining data.", ["noclip", "importance"])
        else:
            text += page.note("Fig. 10 needs the importance analysis (results/importance.csv), which has no rows "
                              "for the NoCLIP models.")
        return text


def noclip_table(rows: Sequence[NoClipRow], parameters: dict[str, Any] | None = None) -> ReportTable:
    """Table 8: the NoCLIP models, then the models they are compared with."""
    parameters = parameters or {}
    body = tuple((row.model, row.role, percent(row.acc_id), signed_percent(row.er), decimal(1)(row.kurtosis),
                  integer(row.unique_concepts), integer(row.privileged), decimal(1)(row.top_ratio)) for row in rows)
    caption = (f"ACC on {parameters.get('id_set', 'the id set')}; ER (eq. 1); activation kurtosis of h on "
               f"{parameters.get('kurtosis_dataset') or 'the kurtosis dataset'}; unique concepts (eq. 5) in the "
               f"{parameters.get('concepts') or 'singular basis'}: Table 8's columns. Privileged directions and the "
               "top importance ratio quantify Fig. 10.")
    if parameters.get("empty"):
        caption += f" Empty: {', '.join(parameters['empty'])} (their analyses have no rows for these models)."
    return ReportTable("noclip", "Table 8: NoCLIP and the models it is compared with", ("Model", "Role"),
                       (("", ("ACC(I) (%)", "ER (%)", "Kurtosis", "Unique concepts", "Privileged", "Top ratio")),),
                       body, caption, ("noclip",))


def noclip_figure(models: Sequence[ModelRow], noclip: Sequence[NoClipRow], importance: Sequence[ImportanceRow]
                  ) -> Figure:
    """Fig. 10: one panel per NoCLIP model: its importance of each singular direction, ranked from the most
    important (log scale; privileged directions marked), in black, against each compared model's, colored and
    labelled by pretraining data (App. F: "NoCLIP corresponds to the model pretrained on YFCC-15M")."""
    by_model: dict[str, list[ImportanceRow]] = {}
    for row in importance:
        by_model.setdefault(row.model, []).append(row)
    named = [row.model for row in noclip if row.role == "noclip" and row.model in by_model]
    if not named:
        raise InputError("noclip_figure: no importance rows for the NoCLIP models")
    compared = [row.model for row in noclip if row.role == "compared" and row.model in by_model]
    pool = {model.model: model for model in models}
    figure, axes = grid(len(named), panel=(4.4, 3.2), columns=2)
    figure.suptitle("NoCLIP: importance of singular directions", fontsize=10)
    colors = [color for color in (f"C{i}" for i in range(10)) if color != "C7"]
    for ax, name in zip(axes, named):
        for i, model in enumerate([name, *compared]):
            rows = sorted(by_model[model], key=lambda row: -row.importance)
            entry = pool.get(model)
            label = f"{entry.pretraining} ({model})" if entry else model
            color = "black" if model == name else colors[i % len(colors)]
            ax.plot(range(len(rows)), [max(row.importance, 1e-12) for row in rows], color=color,
                    linewidth=2.0 if model == name else 1.0, label=f"NoCLIP: {label}" if model == name else label)
            marked = [(rank, row.importance) for rank, row in enumerate(rows) if row.privileged]
            if marked:
                ax.scatter(*zip(*marked), color=color, marker="x", s=25, zorder=3)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("direction rank (by importance)")
        ax.set_ylabel("importance")
        ax.legend(fontsize=6)
    return figure
