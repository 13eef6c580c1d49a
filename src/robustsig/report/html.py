"""One self-contained HTML page with every table and figure of a study's results.

:func:`build_report` reads ``results/`` (see :mod:`robustsig.study.results`), writes the tables (CSV, Markdown,
LaTeX) to ``tables/`` and the figures (PNG, SVG) to ``figures/`` next to the page, and writes the page itself:
CSS inline, figures inlined as base64 PNG, no scripts (a Content-Security-Policy forbids them), no external
resource. Each table and figure says what it was computed on (models, datasets, store keys, sample counts from
``provenance.json``). Every string shown (config values, model, dataset, class and concept names) is escaped.
An analysis whose results are absent gets a note saying so instead of its section.

Example:
    >>> # build_report("study/results", "study/report/report.html")
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from robustsig import __version__
from robustsig._atomic import write_text_atomic
from robustsig._progress import progress
from robustsig.errors import DataError, InputError
from robustsig.report import figures, tables
from robustsig.report.pool import KIND_TITLES, model_groups
from robustsig.study.analyses.predict_er import SIGNATURES, ErPredictorRow, ErTrackingRow, SignatureRow
from robustsig.study.analyses.significance import ConceptSignificanceRow
from robustsig.study.config import StudyConfig, validate_study_config
from robustsig.study.results import (AccuracyRow, CkaRow, ConceptRow, ConceptThresholdRow, ConceptTopRow, DatasetRow,
                                     ImportanceRow, KurtosisRow, LayerKurtosisRow, LowRankRow, ModelRow, OutlierRow,
                                     PrivilegedRow, PruningRow, Results, RobustnessRow, VennRow, WiseFtRow, jsonable,
                                     package_versions,
                                     study_rows)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d6d6d6; padding: .2rem .5rem; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .caption { font-size: .85rem; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4rem .8rem; }
details { font-size: .8rem; margin: .3rem 0 1rem; } summary { cursor: pointer; color: #555; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
nav ul { columns: 2; }
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


@dataclass
class ReportFiles:
    """What :func:`build_report` wrote.

    Attributes:
        html: the page.
        tables: the table files (CSV, Markdown, LaTeX).
        figures: the figure files (PNG, SVG).
        sections: analysis name -> whether its results were found and shown.
    """

    html: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    sections: dict[str, bool] = field(default_factory=dict)


class _Page:
    """Collects the HTML of the sections and the files written for them."""

    def __init__(self, results: Results, out_html: Path, config: Mapping[str, Any] | None) -> None:
        self.results = results
        self.provenance = results.provenance()
        self.config = config
        self.tables_dir = out_html.parent / "tables"
        self.figures_dir = out_html.parent / "figures"
        self.files = ReportFiles(out_html)

    def read(self, table: type) -> list:
        return self.results.read(table) if self.results.has(table) else []

    # ---- blocks
    def sources(self, names: Sequence[str]) -> str:
        """A collapsible block saying what the named results tables were computed on."""
        parts = []
        for name in names:
            entry = self.provenance.get("tables", {}).get(name)
            if not entry:
                parts.append(f"<p>results/{_e(name)}.csv: no provenance recorded.</p>")
                continue
            parameters = entry.get("parameters") or {}
            text = ", ".join(f"{_e(key)} = {_e(value)}" for key, value in parameters.items())
            parts.append(f"<p>results/{_e(name)}.csv, updated {_e(entry.get('updated'))}"
                         + (f"; parameters: {text}" if text else "") + "</p>")
            inputs = entry.get("inputs") or []
            if inputs:
                body = "".join(f"<tr><td>{_e(item.get('model'))}</td><td>{_e(item.get('dataset'))}</td>"
                               f"<td><code>{_e(item.get('store_key') or '')}</code></td>"
                               f"<td class=\"num\">{_e(_blank_none(item.get('num_samples')))}</td>"
                               f"<td class=\"num\">{_e(_blank_none(item.get('skipped')))}</td></tr>"
                               for item in inputs)
                parts.append("<table><tr><th>model</th><th>dataset</th><th>store key</th><th>samples</th>"
                             f"<th>skipped images</th></tr>{body}</table>")
        return f"<details class=\"provenance\"><summary>Computed on</summary>{''.join(parts)}</details>"

    def table(self, table: tables.ReportTable) -> str:
        self.files.tables += tables.write_table(table, self.tables_dir)
        index = len(table.index)
        head = ""
        if any(group for group, _ in table.groups):
            head = "<tr>" + "".join(f"<th rowspan=\"2\">{_e(label)}</th>" for label in table.index)
            head += "".join(f"<th colspan=\"{len(labels)}\">{_e(group)}</th>" for group, labels in table.groups)
            head += "</tr><tr>" + "".join(f"<th>{_e(label)}</th>" for _, labels in table.groups
                                          for label in labels) + "</tr>"
        else:
            head = "<tr>" + "".join(f"<th>{_e(label)}</th>" for label in table.header()) + "</tr>"
        body = ""
        for row in table.display_rows():
            body += "<tr>" + "".join(
                f"<td>{_e(cell)}</td>" if i < index else
                f"<td class=\"num\">{_e(tables.MISSING_TEXT if cell is None else cell)}</td>"
                for i, cell in enumerate(row)) + "</tr>"
        caption = f"<p class=\"caption\">{_e(table.caption)}</p>" if table.caption else ""
        return (f"<table id=\"table-{_e(table.name)}\"><caption>{_e(table.title)}</caption>"
                f"<thead>{head}</thead><tbody>{body}</tbody></table>{caption}{self.sources(table.sources)}")

    def figure(self, make: Callable[[], Any], stem: str, caption: str, sources: Sequence[str]) -> str:
        png, svg = figures.save_figure(make(), self.figures_dir, stem)
        self.files.figures += [png, svg]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{_e(caption)}\">"
                f"<figcaption>{_e(caption)}</figcaption></figure>{self.sources(sources)}")

    def absent(self, analysis: str, files: Sequence[str]) -> str:
        enabled = bool(self.config and (self.config.get("analyses") or {}).get(analysis) is not None
                       and (self.config["analyses"][analysis] or {}).get("enabled", True))
        names = " and ".join(f"results/{name}.csv" for name in files)
        why = ("although the study config enables it: the run did not finish it; rerun `robustsig study run` "
               "to complete it" if enabled else f"the {analysis} analysis was not part of this study")
        return f"<p class=\"note\">Not run: {_e(names)} absent ({_e(why)}).</p>"


# --------------------------------------------------------------------------- sections

def _id_dataset(page: _Page, rows: Sequence[Any]) -> str | None:
    for row in page.read(DatasetRow):
        if row.role == "id":
            return row.dataset
    return rows[0].dataset if rows else None


def _pool_section(page: _Page, models: Sequence[ModelRow]) -> str:
    body = "".join(f"<tr><td>{_e(m.model)}</td><td><code>{_e(m.spec)}</code></td><td>{_e(m.backbone)}</td>"
                   f"<td>{_e(m.pretraining)}</td><td>{_e(KIND_TITLES.get(m.kind, m.kind))}</td></tr>" for m in models)
    text = ("<table><caption>Models</caption><tr><th>model</th><th>spec</th><th>backbone</th><th>pretraining</th>"
            f"<th>kind</th></tr>{body}</table>")
    datasets = page.read(DatasetRow)
    if datasets:
        body = "".join(f"<tr><td>{_e(d.dataset)}</td><td>{_e(d.kind)}</td><td>{_e(d.role)}</td>"
                       f"<td><code>{_e(d.root)}</code></td></tr>" for d in datasets)
        text += ("<table><caption>Datasets</caption><tr><th>dataset</th><th>kind</th><th>role</th><th>root</th>"
                 f"</tr>{body}</table>")
    return text


def _accuracy_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    accuracy, robustness = page.read(AccuracyRow), page.read(RobustnessRow)
    if not accuracy and not robustness:
        return None
    text = ""
    parameters = page.provenance.get("tables", {}).get("robustness", {}).get("parameters") or {}
    note = tables.shift_sets_note(parameters)
    if note and (not parameters.get("paper_shift_sets") or parameters.get("missing_classes")):
        text += f"<p class=\"note\">{_e(note)}</p>"  # a study that departs from the paper's S says so first
    if robustness:
        text += page.table(tables.accuracy_table(models, robustness, shift_note=note))
        text += page.figure(lambda: figures.robustness_figure(models, robustness), "fig1_robustness",
                            "Fig. 1: ACC(I) vs ACC(S) on logit axes, with the baseline line (the models above it "
                            "are effectively robust).", ["robustness"])
    elif note:
        text += ("<p class=\"note\">No model has an effective robustness: eq. 1 is undefined where ACC(I) is 0 or 1 "
                 "(its logit is infinite), and that holds for every model here.</p>")
    else:
        text += ("<p class=\"note\">No results/robustness.csv: effective robustness needs shift sets, and the "
                 "study had none.</p>")
    if accuracy:
        names = list(dict.fromkeys(row.dataset for row in accuracy))
        text += page.table(tables.dataset_accuracy_table(accuracy, names))
    return text


def _kurtosis_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    rows = page.read(KurtosisRow)
    if not rows:
        return None
    dataset = _id_dataset(page, rows)
    if dataset not in {row.dataset for row in rows}:
        dataset = rows[0].dataset
    text = page.table(tables.kurtosis_table(models, rows, dataset))
    outliers = page.read(OutlierRow)
    if outliers:
        listed = []
        for model in models:
            dims = [row for row in outliers if row.model == model.model]
            if dims:
                shown = ", ".join(f"{row.dimension} ({row.score:.1f}x)" for row in dims[:5])
                listed.append(f"{model.model}: {len(dims)} ({shown}{', ...' if len(dims) > 5 else ''})")
        text += (f"<p class=\"caption\">Outlier dimensions of h (mean |h_i| at least 5 times the average dimension's; "
                 f"results/outliers.csv): {_e('; '.join(listed) or 'none')}.</p>")
    return text


def _importance_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    importance, privileged = page.read(ImportanceRow), page.read(PrivilegedRow)
    if not importance and not privileged:
        return None
    text = ""
    if importance:
        text += page.figure(lambda: figures.importance_figure(models, importance), "fig2_importance",
                            "Fig. 2/7: importance of the head's singular directions, ranked (x: privileged).",
                            ["importance"])
    if privileged:
        text += page.table(tables.privileged_table(models, privileged))
    return text


def _pruning_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    rows = page.read(PruningRow)
    if not rows:
        return None
    dataset = _id_dataset(page, rows)
    if dataset not in {row.dataset for row in rows}:
        dataset = rows[0].dataset
    text = page.figure(lambda: figures.pruning_figure(models, rows, dataset, "accuracy"), "fig3_pruning_accuracy",
                       f"Fig. 3/8: accuracy on {dataset} after pruning the least important singular directions "
                       "(solid: by singular value; dashed: by importance; dotted: random).", ["pruning"])
    if any(row.er is not None for row in rows):
        text += page.figure(lambda: figures.pruning_figure(models, rows, dataset, "er"), "fig9_pruning_er",
                            "Fig. 9: effective robustness after pruning.", ["pruning"])
    return text


def _venn_groups(page: _Page, models: Sequence[ModelRow], probed: set[str]) -> list[tuple[str, list[ModelRow]]]:
    by_name = {model.model: model for model in models}
    configured = ((page.config or {}).get("analyses") or {}).get("concepts") or {}
    if configured.get("venn_groups"):
        groups = [(" / ".join(group), [by_name[name] for name in group if name in by_name])
                  for group in configured["venn_groups"]]
    else:
        groups = [(group.title, list(group.members)) for group in model_groups(models)]
    groups = [(title, [m for m in members if m.model in probed]) for title, members in groups]
    return [(title, members) for title, members in groups if len(members) >= 2]


def _concepts_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    summary, top, venn = page.read(ConceptRow), page.read(ConceptTopRow), page.read(VennRow)
    if not summary:
        return None
    text = ("<p class=\"caption\">The full AP matrices (concepts x directions, one per model and basis) are in "
            "results/concept_ap/MODEL_BASIS.npy, with the concept names and categories in the .json file next to "
            "each: a rerun with another threshold reads them instead of recomputing.</p>")
    bases = list(dict.fromkeys(row.basis for row in summary))
    for basis in bases:
        text += page.table(tables.concepts_table(models, summary, basis))
    sweep = page.read(ConceptThresholdRow)
    for basis in list(dict.fromkeys(row.basis for row in sweep)):
        text += page.figure(lambda basis=basis: figures.concept_thresholds_figure(models, sweep, basis),
                            f"concept_thresholds_{basis}", f"Threshold sensitivity ({basis} basis): unique concepts "
                            "and the paper's polysemanticity at each AP threshold (results/concept_thresholds.csv; "
                            "solid line: the paper's 0.9, dotted: its footnote's 0.85).", ["concept_thresholds"])
    significance = page.read(ConceptSignificanceRow)
    for basis in dict.fromkeys(row.basis for row in significance):
        text += page.table(tables.significance_table(models, significance, basis))
    if top:
        text += page.table(tables.concept_top_table(top))
    for basis in bases:
        probed = {row.model for row in summary if row.basis == basis}
        for i, (title, members) in enumerate(_venn_groups(page, models, probed)):
            sets = {f"{m.model} ({m.kind})": {row.concept for row in venn if row.model == m.model
                                              and row.basis == basis} for m in members}
            text += page.figure(lambda sets=sets, title=title: figures.venn_figure(sets, f"{title}, {basis} basis"),
                                f"fig4_venn_{basis}_{i}", f"Fig. 4: concepts encoded by {title} ({basis} basis).",
                                ["venn", "concepts"])
    return text


def _cka_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    rows = page.read(CkaRow)
    if not rows:
        return None
    id_sets = [row.dataset for row in page.read(DatasetRow) if row.role == "id"]
    id_set = id_sets[0] if id_sets else rows[0].dataset
    estimators = ", ".join(dict.fromkeys(row.estimator for row in rows))
    text = (f"<p class=\"note\">Estimator: {_e(estimators)} (minibatch: the paper's, torch_cka's unbiased HSIC "
            "summed over minibatches of flattened layer outputs; pooled: CKA of pooled activations over all images). "
            f"Datasets: {_e(', '.join(dict.fromkeys(row.dataset for row in rows)))}.</p>")
    try:
        depth = figures.cka_depth_figure(rows, id_set)
    except InputError as error:  # no pair with corresponding layers: say so instead of a figure
        text += f"<p class=\"note\">{_e(error)}</p>"
    else:
        text += page.figure(lambda: depth, "fig5_cka_depth", f"Fig. 5: CKA between corresponding layers of each "
                            f"pair, against relative depth: {id_set} (orange) and the mean ± std over the shift "
                            "sets (blue).", ["cka"])
    pairs = list(dict.fromkeys((row.model_a, row.model_b) for row in rows))
    for i, (model_a, model_b) in enumerate(pairs):
        pair_rows = [row for row in rows if (row.model_a, row.model_b) == (model_a, model_b)]
        shown = id_set if any(row.dataset == id_set for row in pair_rows) else pair_rows[0].dataset
        pair_rows = [row for row in pair_rows if row.dataset == shown]
        if len({row.layer_b for row in pair_rows}) > 1 and len(pair_rows) > len({row.layer_a for row in pair_rows}):
            text += page.figure(lambda a=model_a, b=model_b, d=shown: figures.cka_heatmap_figure(rows, a, b, d),
                                f"fig6_cka_{i}", f"Fig. 6: CKA of every layer of {model_a} against every layer of "
                                f"{model_b}, on {shown}.", ["cka"])
    return text


def _wiseft_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    rows = page.read(WiseFtRow)
    if not rows:
        return None
    return (page.figure(lambda: figures.wiseft_figure(rows), "fig11_wiseft",
                        "Fig. 11-18: Wise-FT sweeps against alpha.", ["wiseft"])
            + page.table(tables.wiseft_table(rows)))


def _predict_er_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    signatures, predictors = page.read(SignatureRow), page.read(ErPredictorRow)
    if not signatures:
        return None
    notes = {row.note for row in predictors if row.note}
    provenance = page.provenance.get("tables", {}).get("er_predictors", {}).get("parameters", {})
    notes |= {provenance["note"]} if provenance.get("note") and not predictors else set()
    text = "".join(f"<p class=\"note\">{_e(note)}</p>" for note in sorted(notes))
    if any(row.er is not None for row in signatures):
        text += page.figure(lambda: figures.signature_scatter_figure(models, signatures, SIGNATURES),
                            "signatures_vs_er", "Each signature (computed on in-distribution data only) against "
                            "ER, one point per model (color: kind).", ["signatures"])
    if predictors:
        text += page.table(tables.predictors_table(predictors))
    tracking, wiseft = page.read(ErTrackingRow), page.read(WiseFtRow)
    if tracking:
        text += page.figure(lambda: figures.tracking_figure(wiseft), "er_tracking",
                            "Wise-FT: ER and the signatures against alpha, each rescaled over its sweep.",
                            ["wiseft", "er_tracking"])
        text += page.table(tables.tracking_table(tracking))
    return text


def _shown_dataset(page: _Page, rows: Sequence[Any]) -> str:
    """The id set when the rows cover it, else the first dataset of the rows."""
    dataset = _id_dataset(page, rows)
    return dataset if dataset in {row.dataset for row in rows} else rows[0].dataset


def _layer_kurtosis_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    rows = page.read(LayerKurtosisRow)
    if not rows:
        return None
    dataset = _shown_dataset(page, rows)
    vectors = ", ".join(sorted({row.vectors for row in rows}))
    return page.figure(lambda: figures.layer_kurtosis_figure(models, rows, dataset), "layer_kurtosis",
                       f"Kurtosis (eq. 2) of every layer tap against relative depth on {dataset}; one vector per image "
                       f"and layer ({vectors}: cls = a ViT block's class token, mean = the mean over positions or "
                       "tokens). Every dataset, with outlier dimensions: results/layer_kurtosis.csv.",
                       ["layer_kurtosis"])


def _lowrank_section(page: _Page, models: Sequence[ModelRow]) -> str | None:
    rows = page.read(LowRankRow)
    if not rows:
        return None
    dataset = _shown_dataset(page, rows)
    options = ((page.config or {}).get("analyses") or {}).get("lowrank") or {}
    budget = options.get("budget", "rank")
    xlabel = "fraction of each map's rank pruned" if budget == "rank" else "fraction of the maps' parameters removed"
    kwargs = {"title": "Low-rank encoder", "xlabel": xlabel}
    text = page.figure(lambda: figures.pruning_figure(models, rows, dataset, "accuracy", **kwargs), "lowrank_accuracy",
                       f"Accuracy on {dataset} of the low-rank model of the whole encoder: every linear map keeps its "
                       "most important singular directions (dashed: importance, eq. 4 on the map's own inputs; solid: "
                       "singular value; dotted: random).", ["lowrank"])
    if any(row.er is not None for row in rows):
        text += page.figure(lambda: figures.pruning_figure(models, rows, dataset, "er", **kwargs), "lowrank_er",
                            "Effective robustness of the low-rank model.", ["lowrank"])
    shown = [row for row in rows if row.dataset == dataset]
    body = "".join(f"<tr><td>{_e(row.model)}</td><td>{_e(row.order)}</td><td>{row.fraction:g}</td>"
                   f"<td>{100 * row.accuracy:.1f}</td><td>{'' if row.er is None else f'{100 * row.er:.1f}'}</td>"
                   f"<td>{100 * row.parameter_fraction:.0f}%</td><td>{100 * row.flop_fraction:.0f}%</td></tr>"
                   for row in shown)
    text += (f"<table><caption>Low-rank encoder on {_e(dataset)} (results/lowrank.csv)</caption><tr><th>model</th>"
             "<th>order</th><th>fraction</th><th>accuracy (%)</th><th>ER (%)</th><th>parameters</th><th>FLOPs</th>"
             f"</tr>{body}</table>")
    return text


_SECTIONS: tuple[tuple[str, str, tuple[str, ...], Callable[[_Page, Sequence[ModelRow]], str | None]], ...] = (
    ("accuracy", "Accuracy and effective robustness", ("accuracy", "robustness"), _accuracy_section),
    ("kurtosis", "Activation kurtosis", ("kurtosis",), _kurtosis_section),
    ("importance", "Importance and privileged directions", ("importance", "privileged"), _importance_section),
    ("pruning", "Pruning singular directions", ("pruning",), _pruning_section),
    ("concepts", "Concepts", ("concepts",), _concepts_section),
    ("cka", "CKA per layer", ("cka",), _cka_section),
    ("wiseft", "Wise-FT", ("wiseft",), _wiseft_section),
    ("layer_kurtosis", "Kurtosis through the network", ("layer_kurtosis",), _layer_kurtosis_section),
    ("lowrank", "Low-rank encoder", ("lowrank",), _lowrank_section),
    ("predict_er", "Signatures as ER predictors", ("signatures", "er_predictors"), _predict_er_section),
)


# --------------------------------------------------------------------------- the page

def _description(config: Mapping[str, Any] | None) -> str:
    """The config's ``description`` as escaped paragraphs (blank lines separate them), or nothing."""
    text = str((config or {}).get("description") or "").strip()
    paragraphs = [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]
    return "".join(f"<p class=\"note\">{_e(paragraph)}</p>" for paragraph in paragraphs)


def _config_mapping(config: StudyConfig | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if config is None or isinstance(config, Mapping):
        return jsonable(config) if config is not None else None
    if isinstance(config, StudyConfig):
        return config.to_dict()
    raise InputError(f"config: expected a StudyConfig or a mapping; got {type(config).__name__}")


def _models(page: _Page) -> list[ModelRow]:
    models = page.read(ModelRow)
    if models:
        return models
    if page.config:
        return study_rows(validate_study_config(page.config, source="the study config of the report"))[0]
    raise DataError(f"{page.results.path(ModelRow)} is missing and no study config was given: the tables cannot be "
                    "laid out without the pool (pass the config: `robustsig report RESULTS --config study.yaml`)")


def build_report(results_dir: str | os.PathLike, out_html: str | os.PathLike, *,
                 config: StudyConfig | Mapping[str, Any] | None = None, title: str = "robustsig report") -> ReportFiles:
    """Build the HTML report of a study's results.

    Args:
        results_dir: the ``results/`` folder a study run wrote.
        out_html: the page to write; ``tables/`` and ``figures/`` are written next to it.
        config: the study config (a :class:`~robustsig.study.config.StudyConfig` or its mapping); default: the
            one recorded in ``provenance.json``.
        title: the page title.

    Returns:
        What was written (:class:`ReportFiles`).

    Raises:
        DataError: ``results_dir`` is missing, or holds no model pool and no config was given.
    """
    results_dir, out_html = Path(results_dir), Path(out_html)
    if not results_dir.is_dir():
        raise DataError(f"results folder {str(results_dir)!r} does not exist; expected the results/ folder that "
                        "`robustsig study run` writes")
    results = Results(results_dir)
    provenance = results.provenance()
    page = _Page(results, out_html, _config_mapping(config) or provenance.get("config"))
    models = _models(page)

    nav, body = [], [f"<section id=\"pool\"><h2>Model pool and datasets</h2>{_pool_section(page, models)}</section>"]
    for name, heading, files, make in progress(_SECTIONS, desc="report", unit="section"):
        content = make(page, models)
        page.files.sections[name] = content is not None
        nav.append(f"<li><a href=\"#{name}\">{_e(heading)}</a>{'' if content is not None else ' (not run)'}</li>")
        body.append(f"<section id=\"{name}\"><h2>{_e(heading)}</h2>"
                    f"{content if content is not None else page.absent(name, files)}</section>")

    config_text = yaml.safe_dump(page.config, sort_keys=False, allow_unicode=True) if page.config else "(none recorded)"
    versions = provenance.get("versions") or {}
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in versions.items())
    body.append("<section id=\"config\"><h2>Configuration</h2>"
                f"<pre>{_e(config_text)}</pre></section>"
                "<section id=\"versions\"><h2>Versions</h2>"
                + (f"<table><caption>Packages of the run</caption>{rows}</table>" if rows else
                   "<p class=\"note\">No package versions recorded with the results.</p>")
                + f"<p class=\"caption\">Report built with robustsig {_e(__version__)} "
                  f"(Python {_e(package_versions()['python'])}).</p></section>")
    built = datetime.now(timezone.utc).isoformat(timespec="seconds")
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class=\"caption\">Results: {_e(results_dir.resolve())}; built {_e(built)}. "
        "Accuracies and ER in percent.</p>"
        f"{_description(page.config)}"
        f"<nav><ul>{''.join(nav)}</ul></nav>{''.join(body)}</body></html>\n")
    write_text_atomic(out_html, document)
    return page.files
