"""``robustsig wiseft``: write the Wise-FT interpolations ``(1 - alpha) * zero-shot + alpha * finetuned``."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from robustsig.cli._output import emit_json, format_table


def wiseft(zero_shot: str = typer.Argument(..., metavar="ZERO_SHOT",
                                           help="the zero-shot classifier's spec, e.g. openclip:ViT-B-32@openai"),
           finetuned: str = typer.Argument(..., metavar="FINETUNED", help="the finetuned classifier's spec, e.g. "
                                           "openclip:ViT-B-32@runs/ft/model.safetensors"),
           alphas: str = typer.Option("0:1:0.1", "--alphas", help="START:STOP:STEP (inclusive), a comma list, or "
                                      "one value; alpha=0 is the zero-shot model, 1 the finetuned one"),
           out: Path = typer.Option(Path("wiseft"), "--out", "-o", help="folder of the alpha_<alpha>.safetensors "
                                    "files"),
           templates: Path | None = typer.Option(None, "--templates", help="OpenCLIP: prompt templates of the "
                                                 "zero-shot head (default: OpenAI's 80)"),
           device: str = typer.Option("cpu", "--device", help="where to mix the weights: cpu, cuda, cuda:N or auto"),
           json_output: bool = typer.Option(False, "--json", help="print a JSON summary")) -> None:
    """Write one classifier per alpha, each loadable with FAMILY:ARCH@FILE. The zero-shot head is built for the
    finetuned classifier's class names, so both heads score the same classes."""
    from robustsig._progress import quiet
    from robustsig.models.factory import load_classifier
    from robustsig.train.sweep import parse_alphas, save_wiseft_sweep

    grid = parse_alphas(alphas)
    with quiet() if json_output else nullcontext():
        clf1 = load_classifier(finetuned, device=device)
        clf0 = load_classifier(zero_shot, device=device, classnames=clf1.classnames, templates=templates)
        written = save_wiseft_sweep(clf0, clf1, grid, out)
    family, arch = clf0.meta["family"], clf0.meta["arch"]
    rows = [{"alpha": alpha, "path": str(path), "spec": f"{family}:{arch}@{path.resolve()}"} for alpha, path in written]
    if json_output:
        emit_json({"zero_shot": zero_shot, "finetuned": finetuned, "out": str(out), "models": rows})
        return
    typer.echo(format_table(rows, ["alpha", "path"], floatfmt="g"))


def register(app: typer.Typer) -> None:
    """Add ``robustsig wiseft`` to the app."""
    app.command("wiseft")(wiseft)
