"""How the paper lays out a model pool: rows are backbone x pretraining, columns are zero-shot / finetuned /
supervised; figures compare the models of one row with the supervised model of its backbone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from robustsig.errors import DataError
from robustsig.study.results import ModelRow

KINDS: tuple[str, ...] = ("zero-shot", "finetuned", "supervised")
KIND_TITLES: dict[str, str] = {"zero-shot": "Zero-shot", "finetuned": "Finetuned", "supervised": "Supervised"}
KIND_COLORS: dict[str, str] = {"zero-shot": "#1f77b4", "finetuned": "#ff7f0e", "supervised": "#2ca02c"}


def layout_rows(models: Sequence[ModelRow]) -> list[tuple[str, str]]:
    """The (backbone, pretraining) rows of the paper's tables: backbones in pool order, and within a backbone its
    pretraining tags in pool order."""
    backbones: dict[str, list[str]] = {}
    for model in models:
        tags = backbones.setdefault(model.backbone, [])
        if model.pretraining not in tags:
            tags.append(model.pretraining)
    return [(backbone, tag) for backbone, tags in backbones.items() for tag in tags]


def kinds_present(models: Sequence[ModelRow]) -> list[str]:
    """The column groups a pool fills, in the paper's order (unknown kinds after them)."""
    present = [model.kind for model in models]
    return [kind for kind in KINDS if kind in present] + sorted(set(present) - set(KINDS))


def cells(models: Sequence[ModelRow]) -> dict[tuple[str, str, str], ModelRow]:
    """(backbone, pretraining, kind) -> the model in that cell of the paper's tables.

    Raises:
        DataError: two models in one cell.
    """
    table: dict[tuple[str, str, str], ModelRow] = {}
    for model in models:
        cell = (model.backbone, model.pretraining, model.kind)
        if cell in table:
            raise DataError(f"models {table[cell].model!r} and {model.model!r} have the same backbone, pretraining "
                            f"and kind {cell}: the tables have one cell for both (give them distinct pretraining)")
        table[cell] = model
    return table


@dataclass(frozen=True)
class ModelGroup:
    """Models a figure compares: one (backbone, pretraining) row and the supervised model of its backbone."""

    title: str
    members: tuple[ModelRow, ...]


def model_groups(models: Sequence[ModelRow]) -> list[ModelGroup]:
    """One group per (backbone, pretraining) row holding a non-supervised model: that row's models (zero-shot,
    then finetuned) and the supervised models of the same backbone. A backbone with only supervised models
    forms one group of them."""
    order = {kind: i for i, kind in enumerate(kinds_present(models))}
    groups = []
    for backbone, tag in layout_rows(models):
        row = [m for m in models if (m.backbone, m.pretraining) == (backbone, tag) and m.kind != "supervised"]
        supervised = [m for m in models if m.backbone == backbone and m.kind == "supervised"]
        if row:
            members = sorted(row, key=lambda m: order[m.kind]) + supervised
            groups.append(ModelGroup(f"{backbone} / {tag}", tuple(members)))
        elif supervised and all(m.kind == "supervised" for m in models if m.backbone == backbone):
            if not any(group.title == backbone for group in groups):
                groups.append(ModelGroup(backbone, tuple(supervised)))
    return groups
