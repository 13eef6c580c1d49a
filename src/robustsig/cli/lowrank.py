"""``robustsig lowrank``: a low-rank model of the whole encoder at several budgets: accuracy, ER, parameters, FLOPs."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from robustsig.cli._output import emit_json, format_table
from robustsig.errors import InputError


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers like 0,0.5,0.8, got {text!r}") from None
    if not values:
        raise InputError(f"{what} is empty: give comma-separated numbers like 0,0.5,0.8")
    for value in values:
        _fraction(value, what)
    return values


def _fraction(value: float, what: str) -> float:
    """A fraction removed, in [0, 1): 1 would remove every direction of every map (nothing of the image is left)."""
    if not 0.0 <= value < 1.0:
        raise InputError(f"{what} must be fractions removed in [0, 1) (1 removes every direction of every map, so "
                         f"the model no longer sees the image), got {value:g}")
    return value


def _check_save(save: Path, overwrite: bool) -> None:
    """Refuse a --save path before any work: not .safetensors/.pt, a folder, an existing file (without
    --overwrite), a place that cannot be written."""
    from robustsig._atomic import check_writable

    if save.suffix.lower() not in (".safetensors", ".pt"):
        raise InputError(f"--save writes a .safetensors (or .pt) file, got {str(save)!r}")
    if save.is_dir():
        raise InputError(f"--save {str(save)!r} is a folder; give the path of the .safetensors file to write")
    if (save.exists() or save.is_symlink()) and not overwrite:
        raise InputError(f"--save {str(save)!r} exists; pass --overwrite to replace it, or give another path")
    check_writable(save)


def lowrank_command(
    spec: str = typer.Argument(..., help="Model spec: bundled:mobilenet_v2, openclip:ViT-B-32@openai, timm:resnet50..."),
    dataset: str = typer.Argument(..., help="The in-distribution set, KIND:ROOT (e.g. folder:photos/): calibration "
                                            "and ACC(I)."),
    data_option: list[str] = typer.Option([], "--data-option", "-O", help="Dataset option KEY=VALUE for every set "
                                          "(repeatable), e.g. -O class_map=classes.json."),
    shift: list[str] = typer.Option([], "--shift", help="A shift set KIND:ROOT (repeatable): ACC(S) is their mean, "
                                                        "and ER is reported."),
    fractions: str = typer.Option("0,0.5,0.8", help="Fractions removed, comma-separated: of each map's rank "
                                                    "(--budget rank) or of the maps' parameters."),
    order: str = typer.Option("importance", help="Directions pruned first: importance (eq. 4 on each map's inputs), "
                                                 "singular, random; comma-separate several."),
    budget: str = typer.Option("rank", help="rank (a fraction of every map's rank) or parameters (a global fraction "
                                            "of the maps' parameters)."),
    calibration: int = typer.Option(0, help="Id images in the calibration pass (0: all)."),
    seed: int = typer.Option(0, help="Seed of the random order."),
    save: Path = typer.Option(None, help="Save the low-rank model (.safetensors) at --save-fraction of the first "
                                         "order; it loads back as SPEC's architecture with the file as weights."),
    save_fraction: float = typer.Option(None, help="The fraction --save saves (default: the largest)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Let --save replace an existing file."),
    b1: float = typer.Option(None, help="Slope of the ER baseline line (default: paper, 0.76)."),
    b0: float = typer.Option(None, help="Intercept of the ER baseline line (default: paper, -1.49)."),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    workers: int = typer.Option(0, help="DataLoader workers."),
    device: str = typer.Option("", help="auto, cpu, cuda or cuda:N (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (no progress bars)."),
) -> None:
    """Replace every linear map of the image encoder (Linears, 1x1 convolutions, attention projections) by its
    most important singular directions and measure what is left.

    Example: `robustsig lowrank bundled:mobilenet_v2 folder:photos/ --shift folder:sketch/ --fractions 0,0.5,0.8`.
    """
    from robustsig._progress import quiet
    from robustsig.data.registry import open_dataset, parse_dataset_options, parse_dataset_spec
    from robustsig.extraction.calibrate import calibrate_linear_maps
    from robustsig.metrics.lowrank import BUDGETS
    from robustsig.metrics.pruning import ORDERS
    from robustsig.metrics.robustness import PAPER_B0, PAPER_B1
    from robustsig.models.checkpoint import save_classifier
    from robustsig.models.factory import load_classifier
    from robustsig.extraction.lowrank import low_rank_curve
    from robustsig.models.lowrank import low_rank_classifier

    levels = _numbers(fractions, "--fractions")
    orders = [part.strip() for part in order.split(",") if part.strip()]
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise InputError(f"--order must be one or more of {', '.join(ORDERS)}, got {order!r}")
    if budget not in BUDGETS:
        raise InputError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    if save_fraction is not None:
        _fraction(save_fraction, "--save-fraction")
    if save is not None:
        _check_save(save, overwrite)  # before the work, not after it
    options = parse_dataset_options(data_option)
    sets = {"id": open_dataset(*parse_dataset_spec(dataset), **options)}
    names = []
    for i, text in enumerate(shift):
        kind, root = parse_dataset_spec(text)
        name = f"shift{i + 1}:{Path(root).name}"
        sets[name] = open_dataset(kind, root, **options)
        names.append(name)
    classifier = load_classifier(spec, device=device or None)
    with quiet() if as_json else nullcontext():
        cal = calibrate_linear_maps(classifier, sets["id"], images=calibration or None, batch_size=batch_size,
                                    workers=workers, device=device or None, progress=not as_json)
        table = low_rank_curve(classifier, cal, sets, id_name="id", shift_names=names, fractions=levels,
                               orders=orders, budget=budget, seed=seed, b1=PAPER_B1 if b1 is None else b1,
                               b0=PAPER_B0 if b0 is None else b0, batch_size=batch_size, workers=workers,
                               device=device or None, progress=not as_json)
    saved = None
    if save is not None:
        fraction = max(levels) if save_fraction is None else save_fraction
        saved = str(save_classifier(low_rank_classifier(classifier, cal, fraction, orders[0], budget, seed=seed),
                                    save))
    rows = table.rows()
    if as_json:
        emit_json({"spec": spec, "budget": budget, "calibration_images": cal.images, "maps": len(cal.maps),
                   "parameters_original": table.meta["parameters_original"],
                   "flops_original": table.meta["flops_original"], "shift_sets": names, "fractions": rows,
                   "saved": saved})
        return
    shown = ["order", "fraction", "accuracy", "acc_shift", "er", "parameter_fraction", "flop_fraction", "factorised"]
    typer.echo(f"{spec}: {len(cal.maps)} linear maps, calibrated on {cal.images} images; budget {budget}")
    typer.echo(format_table(rows, [c for c in shown if names or c not in ("acc_shift", "er")]))
    if saved:
        typer.echo(f"saved: {saved} (load it as '{spec.partition('@')[0]}@{saved}')")


def register(app: typer.Typer) -> None:
    app.command("lowrank")(lowrank_command)
