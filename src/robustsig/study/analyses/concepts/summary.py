"""The concept summary of each model (``concepts:MODEL``) and the Venn overlaps of the concept sets (``venn``).

``concepts:MODEL`` reads the saved AP matrices (:mod:`robustsig.study.analyses.concepts.ap`) and writes
``concepts.csv`` (unique concepts, eq. 5; polysemanticity: in the orientation the study uses, and in named columns
for each orientation, the paper's one-sided ``positive`` and the ``both`` variant), ``concept_top.csv`` (the
``top_k`` concepts of the most privileged direction) and ``venn.csv`` (the concepts each model encodes,
AP >= threshold); the last two in the orientation the study uses (``analyses.concepts.orientation``). ``venn``
compares the concept sets of each Venn group (``venn_groups``, default: the zero-shot, finetuned and supervised
models of each backbone and pretraining) with :func:`robustsig.concept_overlaps` and records the size of every region
in the provenance of ``venn.csv`` (the report draws the diagrams).

The most privileged direction is the most important singular direction (eq. 4) on the importance dataset (default:
the id set); its neuron-basis counterpart is the dimension of h with the largest mean |h_i| there (the top outlier
dimension).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from robustsig.errors import InputError
from robustsig.metrics.concepts import ConceptSummary, concept_overlaps, concept_summary
from robustsig.report.tables import ReportTable, decimal, integer, pool_table
from robustsig.study.streams import store_importance, store_kurtosis
from robustsig.study.analyses.concepts.ap import AP_FILES, SIGN_CONVENTION, load_ap
from robustsig.study.analyses.concepts.options import ORIENTATION_TITLES, ConceptsOptions, options_of
from robustsig.study.analysis import AnalysisTask, RunContext, Subject, column, has_rows, model_subject, result_table
from robustsig.study.pool import model_groups
from robustsig.study.results import ModelRow, study_rows

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


@result_table
@dataclass(frozen=True)
class ConceptRow:
    """Concept probing summary of a model in one basis: the counts in the orientation the study uses (the derived
    steps use it: top concepts, Venn sets, threshold sweep figure, significance), then the counts of each
    orientation in its own columns."""

    TABLE: ClassVar[str] = "concepts"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis")
    model: str = column("model name")
    basis: str = column("singular (the head's right singular vectors) or neuron (canonical basis)")
    num_directions: int = column("directions probed")
    num_concepts: int = column("Broden concepts probed (enough positives)")
    unique_concepts: int = column("concepts encoded (AP >= threshold) by at least one direction (eq. 5), in the "
                                  "orientation of the orientation column")
    polysemanticity: float = column("the paper's definition: mean number of concepts a direction encodes, over all "
                                    "directions probed (Section 4, Table 6), in the orientation of the orientation "
                                    "column")
    threshold: float = column("the AP threshold")
    polysemanticity_active: float = column("a variant: the same mean over only the directions that encode at "
                                           "least one concept (NaN when none does), in that orientation")
    orientation: str = column("the orientation of the three columns above and of the derived steps: positive (the "
                              "paper's: the AP of h . v_i, head_svd's sign convention) or both (max(AP(s), AP(-s)))")
    unique_concepts_positive: int = column("eq. 5 with the paper's one-sided AP, AP(h . v_i)")
    polysemanticity_positive: float = column("the paper's polysemanticity with the paper's one-sided AP (Table 6)")
    polysemanticity_active_positive: float = column("the active-directions variant with the one-sided AP")
    unique_concepts_both: int = column("eq. 5 with the both variant, max(AP(s), AP(-s))")
    polysemanticity_both: float = column("the paper's polysemanticity with the both variant")
    polysemanticity_active_both: float = column("the active-directions variant with the both variant")


def orientation_counts(summaries: dict[str, ConceptSummary]) -> tuple[int | float, ...]:
    """The named columns of both orientations (``summaries``: orientation -> its summary at the threshold):
    unique concepts, polysemanticity and polysemanticity_active, ``positive`` first."""
    return tuple(value for orientation in ("positive", "both")
                 for value in (summaries[orientation].unique_concepts, summaries[orientation].polysemanticity,
                               summaries[orientation].polysemanticity_active))


@result_table
@dataclass(frozen=True)
class ConceptTopRow:
    """The top concepts of a model's most privileged direction."""

    TABLE: ClassVar[str] = "concept_top"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis", "direction", "rank")
    model: str = column("model name")
    basis: str = column("singular or neuron")
    direction: int = column("the direction (the most privileged one)")
    rank: int = column("1 = highest AP")
    concept: str = column("Broden concept name")
    category: str = column("Broden category (color, object, material, part, scene, texture)")
    ap: float = column("average precision of the direction for the concept")


@result_table
@dataclass(frozen=True)
class VennRow:
    """Membership of the concept sets that the Venn diagrams compare: one row per concept a model encodes."""

    TABLE: ClassVar[str] = "venn"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis", "concept")
    model: str = column("model name")
    basis: str = column("singular or neuron")
    concept: str = column("a concept encoded by at least one direction")
    category: str = column("its Broden category")


def top_direction(ctx: RunContext, subject: Subject, dataset: str, basis: str) -> int:
    """The most privileged direction: the most important singular direction, or the dimension of h with the
    largest mean |h_i| (neuron basis), on ``dataset``."""
    store = ctx.store(subject, dataset).store
    if basis == "singular":
        return int(store_importance(store)[1].argmax())
    return int(store_kurtosis(store).mean_abs().argmax())


class ConceptsTask(AnalysisTask):
    """One model's concept summary at the threshold, its top concepts and the concepts it encodes."""

    tag = "concepts"

    def __init__(self, model: str, options: ConceptsOptions, top_dataset: str, ap_tasks: dict[str, str],
                 needs: tuple[str, ...]) -> None:
        super().__init__(f"concepts:{model}", model, needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.options = options
        self.top_dataset = top_dataset
        self.ap_tasks = ap_tasks

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"ap": {basis: ctx.ledger.digest(task) for basis, task in self.ap_tasks.items()},
                "threshold": self.options.threshold, "orientation": self.options.orientation,
                "top_k": self.options.top_k,
                "top_store": ctx.store(self.subject, self.top_dataset).digest}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, ConceptRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        summaries, tops, members, texts = [], [], [], []
        for basis in self.ap_tasks:
            oriented = {}
            for orientation in ("positive", "both"):
                ap, names, categories = load_ap(ctx.results.root, self.subject.name, basis, orientation)
                oriented[orientation] = concept_summary(ap, self.options.threshold, names)
            category = dict(zip(names, categories))
            summary = oriented[self.options.orientation]
            summaries.append(ConceptRow(self.model, basis, ap.shape[1], ap.shape[0], summary.unique_concepts,
                                        summary.polysemanticity, self.options.threshold,
                                        summary.polysemanticity_active, self.options.orientation,
                                        *orientation_counts(oriented)))
            direction = top_direction(ctx, self.subject, self.top_dataset, basis)
            tops += [ConceptTopRow(self.model, basis, direction, rank, str(name), category[name], value)
                     for rank, (name, value) in enumerate(summary.top_concepts(direction, self.options.top_k), 1)]
            members += [VennRow(self.model, basis, names[c], categories[c])
                        for c in summary.concept_indices.tolist()]
            texts.append(f"{basis}: {summary.unique_concepts} unique of {ap.shape[0]} concepts "
                         f"({oriented['positive'].unique_concepts} one-sided, {oriented['both'].unique_concepts} both)")
        ctx.results.replace(ConceptRow, summaries, model=self.model)
        ctx.results.replace(ConceptTopRow, tops, model=self.model)
        ctx.results.replace(VennRow, members, model=self.model)
        parameters = {"threshold": self.options.threshold, "orientation": self.options.orientation,
                      "top_k": self.options.top_k,
                      "min_positives": self.options.min_positives, "seed": self.options.seed,
                      "singular_sign": SIGN_CONVENTION, "ap_matrices": AP_FILES}
        broden = ctx.config.datasets.broden.name
        records = [ctx.store(self.subject, broden).record(self.model, broden),
                   ctx.store(self.subject, self.top_dataset).record(self.model, self.top_dataset)]
        for table in (ConceptRow, ConceptTopRow, VennRow):
            ctx.results.record(table, records, parameters)
        return f"threshold {self.options.threshold}: " + "; ".join(texts)


class VennTask(AnalysisTask):
    """The overlaps of the concept sets of each Venn group, per basis."""

    tag = "venn"

    def __init__(self, groups: Sequence[tuple[str, Sequence[str]]], needs: tuple[str, ...]) -> None:
        super().__init__("venn", f"{len(groups)} group(s)", needs)
        self.groups = [(title, list(members)) for title, members in groups]

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"groups": self.groups, "concepts": {need: ctx.ledger.digest(need) for need in self.needs}}

    def present(self, ctx: RunContext) -> bool:
        return ctx.results.has(VennRow)

    def compute(self, ctx: RunContext) -> str:
        rows = ctx.results.read(VennRow)
        bases = list(dict.fromkeys(row.basis for row in rows))
        overlaps: dict[str, dict[str, dict[str, int]]] = {}
        texts = []
        for title, members in self.groups:
            for basis in bases:
                sets = {model: {row.concept for row in rows if row.model == model and row.basis == basis}
                        for model in members}
                regions = concept_overlaps(sets)
                counts = {" & ".join(combo): len(region) for combo, region in regions.items()}
                overlaps.setdefault(title, {})[basis] = counts
                texts.append(f"{title} ({basis}): " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "no concept"))
        ctx.results.record(VennRow, [], {"venn_groups": {title: members for title, members in self.groups},
                                         "overlaps": overlaps})
        return "; ".join(texts)



def venn_groups(config: StudyConfig) -> list[tuple[str, list[str]]]:
    """The configured Venn groups, or one per backbone and pretraining (its zero-shot, finetuned and the
    backbone's supervised models); groups of fewer than two models are left out."""
    options = options_of(config)
    if options.venn_groups:
        groups = [(" / ".join(group), list(group)) for group in options.venn_groups]
    else:
        groups = [(group.title, [m.model for m in group.members]) for group in model_groups(study_rows(config)[0])]
    return [(title, members) for title, members in groups if len(members) >= 2]


# --------------------------------------------------------------------------- report

PAPER_TABLES = {"singular": "Tables 3 and 6", "neuron": "Table 7"}
"""The paper's tables of the one-sided counts in each basis (Table 6 lists the zero-shot models only; Table 7 the
OpenAI zero-shot and finetuned models)."""


def concepts_table(models: Sequence[ModelRow], concepts: Sequence[ConceptRow], basis: str,
                   orientation: str = "positive") -> ReportTable:
    """Unique concepts and polysemanticity (the paper's, and the active-only variant) in one basis and one AP
    orientation, from the named columns of ``concepts.csv``: ``positive`` (the paper's one-sided AP: Tables 3 and 6
    in the singular basis, Table 7 in the neuron basis) or ``both`` (the variant, named as such); the caption names
    the threshold, the orientation and whether the study's derived steps use it."""
    rows = [row for row in concepts if row.basis == basis]
    values = {row.model: (integer(getattr(row, f"unique_concepts_{orientation}")),
                          decimal(2)(getattr(row, f"polysemanticity_{orientation}")),
                          decimal(2)(getattr(row, f"polysemanticity_active_{orientation}"))) for row in rows}
    threshold = f" (AP >= {rows[0].threshold:g})" if rows else ""
    used = orientation in {row.orientation for row in rows}
    direction = "v_i" if basis == "singular" else "e_i (App. E)"
    if orientation == "positive":
        title = f"Concepts, {basis} basis, the paper's one-sided AP ({PAPER_TABLES[basis]})"
        how = (f"AP: the paper's, one-sided: the projection h . {direction} ranks the concept's balanced set and its "
               "average precision is measured"
               + (" (head_svd's sign convention: the largest-magnitude entry of each v_i is positive, so the count is "
                  "the same on every LAPACK build and device)." if basis == "singular" else "."))
    else:
        title = f"Concepts, {basis} basis, variant both: max(AP(s), AP(-s))"
        how = ("AP: the variant both, not the paper's: a direction encodes a concept when the AP of its projection or "
               "of the negated projection reaches the threshold; the max of two APs has a higher chance level than "
               "one.")
    return pool_table(f"concepts_{basis}" + ("" if orientation == "positive" else "_both"), title, models, values,
                      ("Unique concepts", "Polysemanticity", "Polysemanticity (active)"),
                      caption=f"Unique concepts: Broden concepts encoded{threshold} by at least one direction of "
                              f"the {basis} basis (eq. 5); polysemanticity: the paper's definition, mean concepts per "
                              "direction over all directions probed (Section 4); polysemanticity (active): a variant, "
                              f"the mean over only the directions that encode a concept. {how} "
                              + ("The study's derived steps (top concepts, Venn sets, threshold figure, significance) "
                                 "use this orientation." if used else "The study's derived steps use the other "
                                                                      "orientation."),
                      sources=("concepts",))


def concept_top_table(top: Sequence[ConceptTopRow], orientation: str) -> ReportTable:
    """The top concepts of each model's most privileged direction, with their AP in the study's ``orientation``
    (the paper's Table 5 lists the singular basis, one-sided)."""
    grouped: dict[tuple[str, str, int], list[ConceptTopRow]] = {}
    for row in top:
        grouped.setdefault((row.model, row.basis, row.direction), []).append(row)
    width = max((len(rows) for rows in grouped.values()), default=0)
    rows = []
    for (model, basis, direction), entries in grouped.items():
        ranked = [f"{row.concept} ({row.ap:.2f})" for row in sorted(entries, key=lambda row: row.rank)]
        rows.append((model, basis, str(direction), *ranked, *[None] * (width - len(ranked))))
    return ReportTable("concept_top", "Top concepts of the most privileged direction (Table 5)",
                       ("Model", "Basis", "Direction"), (("", tuple(f"Top-{i + 1}" for i in range(width))),),
                       tuple(rows), "Concept (AP) ranked by average precision on the most privileged direction: the "
                       "most important singular direction (eq. 4; the paper's Table 5), or in the neuron basis the "
                       "top outlier dimension of h (not in the paper). AP orientation: "
                       f"{ORIENTATION_TITLES.get(orientation, orientation)}.", ("concept_top",))


def report_venn_groups(page: Page, models: Sequence[ModelRow], probed: set[str]) -> list[tuple[str, list[ModelRow]]]:
    by_name = {model.model: model for model in models}
    configured = page.options("concepts")
    if configured.get("venn_groups"):
        groups = [(" / ".join(group), [by_name[name] for name in group if name in by_name])
                  for group in configured["venn_groups"]]
    else:
        groups = [(group.title, list(group.members)) for group in model_groups(models)]
    groups = [(title, [m for m in members if m.model in probed]) for title, members in groups]
    return [(title, members) for title, members in groups if len(members) >= 2]


def venn_figure(sets: Mapping[str, set[str]], title: str) -> Figure:
    """Overlaps of concept sets (the paper's Fig. 4 draws them for its OpenAI models).

    Two or three sets: a Venn diagram (``matplotlib_venn``) whose regions have equal areas, each showing its
    count (every intersection stays visible; area-weighted circles mislead with small counts). One set, or more
    than three: an UpSet-style chart (bars: concepts in exactly one combination of sets; dots below: the sets of
    that combination), since circles cannot show every intersection of four or more sets. All sets empty: the
    UpSet chart says that no concept is encoded."""
    if not sets:
        raise InputError("venn_figure needs at least one set")
    labels = list(sets)
    if len(labels) in (2, 3) and any(sets.values()):
        from matplotlib_venn import layout, venn2, venn3

        figure = Figure(figsize=(5.2, 4.2), layout="constrained")
        ax = figure.subplots()
        if len(labels) == 2:
            draw, regions = venn2, layout.venn2.DefaultLayoutAlgorithm(fixed_subset_sizes=(1,) * 3)
        else:
            draw, regions = venn3, layout.venn3.DefaultLayoutAlgorithm(fixed_subset_sizes=(1,) * 7)
        names = [label.replace(" (", "\n(") for label in labels]  # "model (kind)" on two lines
        diagram = draw([set(sets[label]) for label in labels], set_labels=names, ax=ax, layout_algorithm=regions)
        for text in diagram.set_labels or []:
            if text is not None:
                text.set_fontsize(9)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()  # room for the set labels outside the circles
        ax.set_xlim(x0 - 0.3 * (x1 - x0), x1 + 0.3 * (x1 - x0))
        ax.set_ylim(y0 - 0.12 * (y1 - y0), y1 + 0.12 * (y1 - y0))
        ax.set_title(textwrap.fill(title, 60), fontsize=10)
        return figure
    return _upset_figure(sets, title)


def _upset_figure(sets: Mapping[str, set[str]], title: str, limit: int = 20) -> Figure:
    labels = list(sets)
    counts: dict[tuple[bool, ...], int] = {}
    for item in set().union(*sets.values()):
        signature = tuple(item in sets[label] for label in labels)
        counts[signature] = counts.get(signature, 0) + 1
    combos = sorted(counts.items(), key=lambda entry: (-entry[1], entry[0]))[:limit]
    figure = Figure(figsize=(max(4.0, 0.45 * len(combos) + 2.5), 2.2 + 0.35 * len(labels)), layout="constrained")
    bars_ax, dots_ax = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, max(1, len(labels))]})
    positions = range(len(combos))
    bars_ax.bar(positions, [count for _, count in combos], color="#4c72b0")
    for position, (_, count) in zip(positions, combos):
        bars_ax.text(position, count, str(count), ha="center", va="bottom", fontsize=7)
    bars_ax.set_ylabel("concepts")
    bars_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    bars_ax.margins(y=0.15)
    bars_ax.set_title(title if combos else f"{title}: no concepts encoded", fontsize=10)
    for position, (signature, _) in zip(positions, combos):
        members = [row for row, inside in enumerate(signature) if inside]
        dots_ax.scatter([position] * len(labels), range(len(labels)), color="#d0d0d0", s=30)
        dots_ax.scatter([position] * len(members), members, color="black", s=30, zorder=3)
        if len(members) > 1:
            dots_ax.plot([position, position], [min(members), max(members)], color="black", linewidth=1.5)
    dots_ax.set_yticks(range(len(labels)), [f"{label} ({len(sets[label])})" for label in labels], fontsize=7)
    dots_ax.set_ylim(len(labels) - 0.5, -0.5)  # the first set on top
    dots_ax.set_xticks([])
    dots_ax.set_xlim(-0.6, max(len(combos), 1) - 0.4)
    for spine in dots_ax.spines.values():
        spine.set_visible(False)
    return figure
