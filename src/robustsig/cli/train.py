"""``robustsig finetune`` (recipe D.1) and ``robustsig train`` (from scratch, recipe D.2): one training loop, on one
process or under ``torchrun``.

Both commands take the same recipe and run options (declared once below); ``finetune`` adds the zero-shot head
options and its choice of head, ``train`` the choice of the new head (``--head``, the recipe's ``head`` key). Recipe
values come from the command's built-in recipe, then ``--recipe FILE.yaml``, then the options.
"""

from __future__ import annotations

import inspect
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer

from robustsig.cli._output import emit_json
from robustsig.errors import InputError

_KW = inspect.Parameter.KEYWORD_ONLY


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, _KW, default=default, annotation=annotation)


_COMMON = [
    inspect.Parameter("spec", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                      default=typer.Argument(..., metavar="SPEC",
                                             help="the model spec, e.g. openclip:ViT-B-32@openai")),
    _param("data", str, typer.Option(..., "--data", metavar="KIND:ROOT",
                                     help="the training set, e.g. imagenet:/data/imagenet/train or folder:train/ "
                                          "(class sub-folders)")),
    _param("data_option", list[str], typer.Option([], "--data-option", "-O", help="dataset option KEY=VALUE "
                                                  "(repeatable), e.g. -O ground_truth=/data/LOC_train_solution.csv; "
                                                  "-O class_map=map.json trains your classes as sets of an "
                                                  "ImageNet head's outputs (the whole head is kept)")),
    _param("out", Path | None, typer.Option(None, "--out", "-o", help="output folder: model.safetensors, "
                                            "checkpoint.pt, train_log.csv, recipe.yaml (default: ./COMMAND-SPEC)")),
]
_FINETUNE_ONLY = [
    _param("classnames", Path | None, typer.Option(None, "--classnames", help="OpenCLIP: a text file of class "
                                                   "names for the zero-shot head, one per class folder in sorted "
                                                   "folder order (default: the folder names)")),
    _param("templates", Path | None, typer.Option(None, "--templates", help="OpenCLIP: a text file of prompt "
                                                  "templates with {} (default: OpenAI's 80)")),
    _param("new_head", bool, typer.Option(False, "--new-head", help="timm/torchvision/bundled: replace a trained "
                                          "head whose size differs from the number of classes by a random one "
                                          "(not with a class_map, which names the trained head's outputs)")),
    _param("head", str | None, typer.Option(None, "--head", help="the head trained: wiseft (D.1's, wise-ft's: the "
                                            "starting head with a trainable bias, started at 0 on OpenCLIP's "
                                            "zero-shot head) | normalized-linear (the bias-free zero-shot head; "
                                            "OpenCLIP only) | linear (a trained head with bias, kept as it is)")),
]
_TRAIN_ONLY = [
    _param("head", str | None, typer.Option(None, "--head", help="the new head: linear (D.2's: a linear layer with "
                                            "bias on the raw embedding) | normalized-linear (bias-free, on the "
                                            "L2-normalised embedding, CLIP's zero-shot form; OpenCLIP only)")),
]
_RECIPE = [
    _param("recipe", str | None, typer.Option(None, "--recipe", help="a YAML file of recipe values (e.g. 'lr: "
                                              "1.0e-5'), or a built-in recipe: finetune (D.1), supervised (D.2)")),
    _param("epochs", int | None, typer.Option(None, "--epochs", help="passes over the training set")),
    _param("batch_size", int | None, typer.Option(None, "--batch-size", help="the GLOBAL batch, split evenly over "
                                                  "the torchrun processes (must be a multiple of their number)")),
    _param("lr", float | None, typer.Option(None, "--lr", help="AdamW's peak learning rate")),
    _param("weight_decay", float | None, typer.Option(None, "--weight-decay", help="AdamW's weight decay")),
    _param("warmup_steps", int | None, typer.Option(None, "--warmup-steps", help="linear warm-up steps")),
    _param("schedule", str | None, typer.Option(None, "--schedule", help="cosine | step | constant")),
    _param("lr_milestones", str | None, typer.Option(None, "--lr-milestones", help="step schedule: epochs at "
                                                     "which the rate is multiplied by --lr-gamma, e.g. 30,60")),
    _param("lr_gamma", float | None, typer.Option(None, "--lr-gamma", help="step schedule: the factor")),
    _param("label_smoothing", float | None, typer.Option(None, "--label-smoothing", help="in [0, 1)")),
    _param("grad_clip", str | None, typer.Option(None, "--grad-clip", help="maximum gradient norm, or none")),
    _param("crop_scale", str | None, typer.Option(None, "--crop-scale", help="area range of the random resized "
                                                  "crop, e.g. 0.08,1; none trains on the eval preprocessing")),
    _param("hflip", bool | None, typer.Option(None, "--hflip/--no-hflip", help="random horizontal flips")),
    _param("image_size", int | None, typer.Option(None, "--image-size", help="training crop size (default: "
                                                  "the model's)")),
    _param("precision", str | None, typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16 (autocast; "
                                                 "auto: bf16 on GPUs, fp32 on CPU)")),
    _param("seed", int | None, typer.Option(None, "--seed", help="seeds new weights, data order, augmentation")),
    _param("deterministic", bool | None, typer.Option(None, "--deterministic/--no-deterministic",
                                                      help="deterministic algorithms (bit-exact resumes on GPUs)")),
]
_RUN = [
    _param("device", str, typer.Option("auto", "--device", help="auto | cpu | cuda (torchrun: cuda:LOCAL_RANK)")),
    _param("workers", int, typer.Option(8, "--workers", help="data-loading processes per training process")),
    _param("checkpoint_every", int, typer.Option(1000, "--checkpoint-every", help="steps between checkpoints "
                                                 "(0: only at the end)")),
    _param("restart", bool, typer.Option(False, "--restart", help="discard a checkpoint in --out and start over "
                                         "(default: resume from it)")),
    _param("json_output", bool, typer.Option(False, "--json", help="print a JSON summary")),
]
_RECIPE_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "schedule", "lr_milestones",
                  "lr_gamma", "label_smoothing", "grad_clip", "crop_scale", "hflip", "image_size", "precision", "seed",
                  "deterministic", "head")


def _command(name: str, base: str, doc: str, extra: list[inspect.Parameter]):
    """A Typer command ``name`` running :func:`_train` with the options above (declared once for both)."""

    def command(**options: Any) -> None:
        _train(name, base, options)

    command.__name__ = name
    command.__doc__ = doc
    command.__signature__ = inspect.Signature(_COMMON + extra + _RECIPE + _RUN)  # type: ignore[attr-defined]
    return command


def _train(command: str, base: str, options: dict[str, Any]) -> None:
    from robustsig._progress import quiet
    from robustsig.data.registry import open_dataset, parse_dataset_options, parse_dataset_spec
    from robustsig.distributed import resolve_device
    from robustsig.train.loop import train_classifier
    from robustsig.train.recipes import RECIPES, load_recipe
    from robustsig.train.start import finetune_start, scratch_start

    name_or_file = options["recipe"]
    overrides = {key: options[key] for key in _RECIPE_FIELDS if options.get(key) is not None}
    if name_or_file is not None and name_or_file.strip().lower() in RECIPES:
        recipe = load_recipe(name_or_file, **overrides)
    else:
        recipe = load_recipe(base, name_or_file, **overrides)
    device = resolve_device(options["device"])
    kind, root = parse_dataset_spec(options["data"])
    dataset = open_dataset(kind, root, **parse_dataset_options(options["data_option"]))
    opened = Path(dataset.root or root).resolve()
    if opened != Path(root).resolve() and "val" in opened.name.lower():
        raise InputError(f"--data {options['data']} opened the validation folder {opened}; pass the training "
                         f"folder itself (e.g. {kind}:{Path(root) / 'train'})")
    if command == "finetune":
        clf = finetune_start(options["spec"], dataset, device=device, classnames=options["classnames"],
                             templates=options["templates"], new_head=options["new_head"], seed=recipe.seed,
                             head=recipe.head)
    else:
        clf = scratch_start(options["spec"], dataset, device=device, seed=recipe.seed, head=recipe.head)
    out = options["out"] or Path(f"{command}-{re.sub(r'[^A-Za-z0-9._-]+', '-', options['spec']).strip('-')}")
    run = dict(device=device, workers=options["workers"], checkpoint_every=options["checkpoint_every"],
               restart=options["restart"])
    with quiet() if options["json_output"] else nullcontext():
        result = train_classifier(clf, dataset, recipe, out, **run)
    if result.rank != 0:
        return
    spec = f"{clf.meta['family']}:{clf.meta['arch']}@{result.model_path.resolve()}"
    if options["json_output"]:
        emit_json({"command": command, "from": options["spec"], "data": options["data"], "spec": spec,
                   **result.summary(), "recipe": recipe.to_dict()})
        return
    resumed = f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step is not None else ""
    last = result.history[-1] if result.history else {}
    typer.echo(f"{command}: {result.steps} steps over {len(result.history)} epochs on {result.world_size} "
               f"process(es){resumed}; last epoch loss {last.get('loss', float('nan')):.4f}, accuracy "
               f"{100 * last.get('accuracy', float('nan')):.2f}%")
    typer.echo(f"model: {result.model_path}  (load it with '{spec}')")
    typer.echo(f"log: {result.log_path}")


finetune = _command(
    "finetune", "finetune",
    "Finetune a classifier end to end (encoder + head; OpenCLIP: from the zero-shot head with wise-ft's trainable "
    "bias, --head) with recipe D.1: 10 epochs, global batch 256, AdamW lr 3e-5, weight decay 0.1, cosine schedule, "
    "500 warm-up steps. Run it "
    "under torchrun to use several GPUs; run it again with the same --out to resume after a kill.",
    _FINETUNE_ONLY)
train = _command(
    "train", "supervised",
    "Train a classifier from scratch (random init of the spec's architecture, e.g. openclip:RN50 or "
    "torchvision:resnet50) with recipe D.2: 90 epochs, global batch 1024, AdamW lr 1e-3 (x0.1 at epochs 30 and "
    "60), 5,000 warm-up steps, weight decay 1e-2, random resized crop + flip, label smoothing 0.1, and a linear "
    "head with bias on the raw embedding (--head). Run it under torchrun to use several GPUs; run it again with the "
    "same --out to resume after a kill.",
    _TRAIN_ONLY)


def register(app: typer.Typer) -> None:
    """Add ``robustsig finetune`` and ``robustsig train`` to the app."""
    app.command("finetune")(finetune)
    app.command("train")(train)
