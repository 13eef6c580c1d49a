"""The direction atlas: what each model's most privileged directions respond to, shown with images (as NetDissect
shows each unit's top-activating images, and as the paper reads its most privileged direction by its top concepts,
Table 5).

For each model's ``directions`` most privileged singular directions of the head (the largest importances, eq. 4, on
the in-distribution set), the step ``atlas:MODEL`` writes

- ``atlas_directions.csv``: the direction, its rank among the privileged, its importance and importance ratio (over
  the mean importance);
- ``atlas.csv``: the ``images`` images of the id set and of the concept set with the highest projection
  ``h . v_i``, with their path and projection;
- ``atlas_concepts.csv``: the ``concepts`` concepts of the concept set with the highest one-sided AP of the
  projection (the paper's AP: the projection on ``v_i``, with :func:`robustsig.head_svd`'s sign, is the classifier)
  on the balanced per-concept sets (``min_positives`` and ``seed`` of the concepts analysis when the study has one);
- thumbnails (``results/atlas/MODEL/DATASET_INDEX.jpg``, ``thumbnail`` pixels square) of those images, which the
  report shows as one grid per model.

It reads only the stores (``h`` and the head) and the image files: no model is run. It is written against the
public analysis API alone (:mod:`robustsig.study.analysis`, :mod:`robustsig.study.streams`, the report page), as
an installed package would write it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import Field, PositiveInt

import robustsig as rs
from robustsig.report.page import escape
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, ModelEntry, Planner, RunContext,
                                      atomic_output, column, has_rows, model_subject, read_image, result_table)
from robustsig.study.results import ModelRow
from robustsig.study.streams import BATCH_ROWS, concept_members, gather_rows, store_importance

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig

ATLAS_DIR = "atlas"


class AtlasOptions(AnalysisOptions):
    """The direction atlas: top images and concepts of each model's most privileged directions."""

    directions: PositiveInt = Field(default=5, description="most privileged directions shown per model")
    images: PositiveInt = Field(default=8, description="top images per direction, of the id set and of the concept "
                                                      "set each")
    concepts: PositiveInt = Field(default=3, description="top concepts (by AP) listed per direction")
    thumbnail: int = Field(default=64, ge=16, le=256, description="thumbnail size in pixels (square)")


@result_table
@dataclass(frozen=True)
class AtlasDirectionRow:
    """One of a model's most privileged directions."""

    TABLE: ClassVar[str] = "atlas_directions"
    KEY: ClassVar[tuple[str, ...]] = ("model", "direction")
    model: str = column("model name")
    direction: int = column("index of the singular direction (0 = largest singular value)")
    rank: int = column("1 = the most privileged (largest importance)")
    importance: float = column("importance (eq. 4) on the id set")
    ratio: float = column("importance over the mean importance")


@result_table
@dataclass(frozen=True)
class AtlasImageRow:
    """An image with one of the highest projections on a privileged direction."""

    TABLE: ClassVar[str] = "atlas"
    KEY: ClassVar[tuple[str, ...]] = ("model", "direction", "dataset", "rank")
    model: str = column("model name")
    direction: int = column("index of the singular direction")
    rank: int = column("1 = the highest projection")
    dataset: str = column("the id set or the concept set")
    image: str = column("the image's path (or key)")
    projection: float = column("h . v_i")
    thumbnail: str = column("its thumbnail, relative to results/ (empty when the image has no file to read)")


@result_table
@dataclass(frozen=True)
class AtlasConceptRow:
    """A concept with one of the highest APs of a privileged direction."""

    TABLE: ClassVar[str] = "atlas_concepts"
    KEY: ClassVar[tuple[str, ...]] = ("model", "direction", "rank")
    model: str = column("model name")
    direction: int = column("index of the singular direction")
    rank: int = column("1 = the highest AP")
    concept: str = column("concept name")
    category: str = column("its category")
    ap: float = column("average precision of h . v_i for the concept (one-sided, on its balanced set)")


def top_rows(store: Any, V: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` rows of a store with the highest ``h . v`` for each column ``v`` of ``V``, streamed: ``(values,
    rows)``, both ``count x k``, best first (a tie goes to the earlier row)."""
    best_values = torch.empty(0, V.shape[1], dtype=torch.float32)
    best_rows = torch.empty(0, V.shape[1], dtype=torch.long)
    start = 0
    for batch in store.batches(["h"], BATCH_ROWS):
        projection = batch["h"].to(torch.float32) @ V
        rows = torch.arange(start, start + projection.shape[0]).unsqueeze(1).expand_as(projection)
        start += projection.shape[0]
        values, positions = torch.cat([best_values, projection]), torch.cat([best_rows, rows])
        order = torch.sort(-values, dim=0, stable=True).indices[:count]
        best_values, best_rows = values.gather(0, order), positions.gather(0, order)
    return best_values, best_rows


def _thumbnail(dataset: Any, index: int, size: int, path: Path) -> bool:
    """Write the thumbnail of image ``index`` of ``dataset`` (its file, with the dataset's own fix-up such as
    ObjectNet's border crop, fitted into a square); False when the dataset has no file for it or it cannot be read."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return False
    try:
        image = read_image(samples[index][0])
    except rs.CorruptImageError:
        return False
    prepare = getattr(dataset, "prepare", None)
    image = ImageOps.fit(prepare(image) if prepare else image, (size, size), Image.Resampling.BICUBIC)
    with atomic_output(path) as temporary:
        image.convert("RGB").save(temporary, format="JPEG", quality=85)
    return True


def _image_name(dataset: Any, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"#{index}"


class AtlasTask(AnalysisTask):
    """The atlas of one model."""

    tag = "atlas"

    def __init__(self, model: str, id_set: str, concept_set: str | None, options: AtlasOptions,
                 concept_options: tuple[int, int], needs: tuple[str, ...]) -> None:
        super().__init__(f"atlas:{model}", model, needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.id_set = id_set
        self.concept_set = concept_set
        self.options = options
        self.min_positives, self.seed = concept_options

    def _datasets(self) -> list[str]:
        return [self.id_set] + ([self.concept_set] if self.concept_set else [])

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"stores": {name: ctx.store(self.subject, name).provenance for name in self._datasets()},
                "options": self.options.model_dump(mode="json"), "min_positives": self.min_positives,
                "seed": self.seed, "orientation": "positive"}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, AtlasDirectionRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        options = self.options
        id_store = ctx.store(self.subject, self.id_set).store
        svd, importance = store_importance(id_store)
        order = torch.sort(-importance, stable=True).indices[:options.directions]
        ratio = importance / importance.mean()
        directions = [AtlasDirectionRow(self.model, int(d), rank, float(importance[d]), float(ratio[d]))
                      for rank, d in enumerate(order.tolist(), 1)]
        V = svd.V[:, order].to(torch.float32)
        folder = ctx.results.root / ATLAS_DIR / self.model
        images, concepts, written = [], [], 0
        for name in self._datasets():
            store, dataset = ctx.store(self.subject, name).store, ctx.dataset(name)
            values, rows = top_rows(store, V, options.images)
            ids = store.read("ids")
            for k, direction in enumerate(directions):
                for rank, (value, row) in enumerate(zip(values[:, k].tolist(), rows[:, k].tolist()), 1):
                    index = int(ids[row])
                    target = folder / f"{name}_{index}.jpg"
                    fresh = not target.is_file() and _thumbnail(dataset, index, options.thumbnail, target)
                    written += fresh
                    shown = target.relative_to(ctx.results.root).as_posix() if target.is_file() else ""
                    images.append(AtlasImageRow(self.model, direction.direction, rank, name,
                                                _image_name(dataset, index), float(value), shown))
            if name == self.concept_set:
                concepts = self._concepts(store, dataset, V, directions)
        ctx.results.replace(AtlasDirectionRow, directions, model=self.model)
        ctx.results.replace(AtlasImageRow, images, model=self.model)
        ctx.results.replace(AtlasConceptRow, concepts, model=self.model)
        records = [ctx.store(self.subject, name).record(self.model, name) for name in self._datasets()]
        parameters = {**options.model_dump(mode="json"), "min_positives": self.min_positives, "seed": self.seed,
                      "ap": "one-sided (the projection on v_i as head_svd's sign gives it)",
                      "thumbnails": f"results/{ATLAS_DIR}/MODEL/DATASET_INDEX.jpg"}
        for table in (AtlasDirectionRow, AtlasImageRow, AtlasConceptRow):
            ctx.results.record(table, records, parameters)
        top = directions[0] if directions else None
        return (f"{len(directions)} direction(s), {len(images)} images ({written} thumbnail(s) written)"
                + (f"; most privileged: direction {top.direction} ({top.ratio:.1f}x the mean)" if top else ""))

    def _concepts(self, store: Any, dataset: Any, V: torch.Tensor, directions: list[AtlasDirectionRow]
                  ) -> list[AtlasConceptRow]:
        members = concept_members(store, dataset, min_positives=self.min_positives, seed=self.seed)
        union = np.unique(np.concatenate([rows for _, rows, _ in members]))
        scores = gather_rows(store, "h", union).to(torch.float32) @ V
        positions = [torch.from_numpy(np.searchsorted(union, rows)) for _, rows, _ in members]
        ap = rs.average_precision_matrix([scores[p] for p in positions],
                                         [torch.from_numpy(labels) for _, _, labels in members],
                                         orientation="positive")
        categories = getattr(dataset, "concept_categories", None)
        out = []
        for k, direction in enumerate(directions):
            ranked = torch.sort(-ap[:, k], stable=True).indices[:self.options.concepts].tolist()
            for rank, c in enumerate(ranked, 1):
                concept = members[c][0]
                out.append(AtlasConceptRow(self.model, direction.direction, rank, concept.name,
                                           categories[concept.concept] if categories else "", float(ap[c, k])))
        return out


class Atlas(Analysis):
    """The direction atlas (see the module notes)."""

    name = "atlas"
    title = "Direction atlas"
    Options = AtlasOptions
    tables = (AtlasDirectionRow, AtlasImageRow, AtlasConceptRow)

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        options = self.options(config)
        subject = model_subject(entry.name)
        id_set = config.datasets.id.name
        concept_set = config.datasets.broden.name if config.datasets.broden is not None else None
        concepts = getattr(config.analyses, "concepts", None)
        concept_options = (concepts.min_positives, concepts.seed) if concepts is not None else (10, 0)
        needs = tuple(planner.store(subject, name) for name in [id_set] + ([concept_set] if concept_set else []))
        planner.add(AtlasTask(entry.name, id_set, concept_set, options, concept_options, needs))

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        directions = page.read(AtlasDirectionRow)
        if not directions:
            return None
        images, concepts = page.read(AtlasImageRow), page.read(AtlasConceptRow)
        datasets = list(dict.fromkeys(row.dataset for row in images))
        text = page.caption("For each model's most privileged singular directions (importance ratio over the mean, "
                            "eq. 4 on the id set): the images with the highest projection h . v_i, of "
                            f"{' and of '.join(datasets) or 'no dataset'}, and the concepts with the highest one-sided "
                            "AP. Every image and projection: results/atlas.csv.")
        for model in models:
            rows = sorted((row for row in directions if row.model == model.model), key=lambda row: row.rank)
            if not rows:
                continue
            body = ""
            for direction in rows:
                listed = ", ".join(f"{row.concept} ({row.ap:.2f})" for row in sorted(
                    (row for row in concepts if row.model == model.model and row.direction == direction.direction),
                    key=lambda row: row.rank))
                cells = "".join(f"<td>{self._thumbnails(page, model.model, direction.direction, name, images)}</td>"
                                for name in datasets)
                body += (f"<tr style=\"vertical-align: top\"><td>direction {direction.direction}<br>"
                         f"{direction.ratio:.1f}x the mean"
                         f"{'<br>' + escape(listed) if listed else ''}</td>{cells}</tr>")
            head = "".join(f"<th>top images of {escape(name)}</th>" for name in datasets)
            text += (f"<table class=\"atlas\"><caption>{escape(model.model)} ({escape(model.kind)})</caption>"
                     f"<tr><th>direction</th>{head}</tr>{body}</table>")
        return text + page.sources(["atlas_directions", "atlas", "atlas_concepts"])

    @staticmethod
    def _thumbnails(page: Page, model: str, direction: int, dataset: str, images: Sequence[AtlasImageRow]) -> str:
        shown = sorted((row for row in images if (row.model, row.direction, row.dataset) == (model, direction,
                                                                                             dataset)),
                       key=lambda row: row.rank)
        html = ""
        for row in shown:
            title = f"{os.path.basename(row.image)}: {row.projection:.3g}"
            path = _thumbnail_path(page.results.root, row.thumbnail)
            if path is None:
                html += f"<span title=\"{escape(title)}\">{escape(os.path.basename(row.image))}</span> "
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            html += (f"<img src=\"data:image/jpeg;base64,{data}\" alt=\"{escape(title)}\" title=\"{escape(title)}\" "
                     "style=\"margin: 1px; border: 1px solid #ddd\">")
        return html


def _thumbnail_path(results: Path, name: str) -> Path | None:
    """The thumbnail file a row names, only when it is a file under ``results/atlas/`` (a CSV edited to name another
    file never puts that file's bytes in the page)."""
    if not name:
        return None
    folder = (results / ATLAS_DIR).resolve()
    path = (results / name).resolve()
    return path if path.is_relative_to(folder) and path.suffix == ".jpg" and path.is_file() else None
