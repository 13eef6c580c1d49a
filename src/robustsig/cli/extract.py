"""``robustsig extract``: a model spec and a dataset -> an activation store (reused, resumed, torchrun-aware)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from robustsig.cli._output import emit_json, format_table, printable


def extract_command(
    spec: str = typer.Argument(..., help="Model spec: openclip:ViT-B-32@openai, timm:resnet50, torchvision:resnet50, "
                                         "hf:PATH, bundled:mobilenet_v2."),
    dataset: str = typer.Argument(..., help="KIND:ROOT, e.g. folder:photos/ or imagenet:/data/imagenet/val."),
    data_option: list[str] = typer.Option([], "--data-option", "-O", help="Dataset option KEY=VALUE (repeatable), "
                                          "e.g. -O ground_truth=/data/LOC_val_solution.csv or -O mappings=DIR."),
    out: Path = typer.Option(..., "--out", "-o", help="Store directory (created; reused when it holds this "
                                                      "extraction, resumed when unfinished)."),
    layers: str = typer.Option("", help="Layer taps to record too: comma-separated names, or 'all'."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    workers: int = typer.Option(-1, help="DataLoader workers (-1: automatic)."),
    device: str = typer.Option("", help="auto, cpu, cuda (this rank's GPU) or cuda:N (default: "
                                        "auto: this rank's GPU if any, else CPU)."),
    dtype: str = typer.Option("float32", help="Stored precision: float32, float16 or bfloat16."),
    autocast: str = typer.Option("", help="Run the model under autocast: fp16 or bf16 (default: off)."),
    pooling: str = typer.Option("auto", help="Layer pooling: auto, cls or mean."),
    topk: int = typer.Option(0, help="Keep only the k largest logits (0: keep all)."),
    shard_size: int = typer.Option(4096, help="Samples per shard file (the unit of resumption)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store of other settings (model, layers, "
                                   "dtype...) in --out. Not needed when only the dataset's files changed: the "
                                   "store is updated, computing only the rows of added or changed images."),
    rehash: bool = typer.Option(False, "--rehash", help="Read every image to key the store, instead of trusting the "
                                "stat cache for files whose size, times and inode are unchanged (also "
                                "ROBUSTSIG_REHASH=1)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (no progress bars)."),
) -> None:
    """Run a model over a dataset once and store h, logits, labels and layers for cheap analyses.

    Under `torchrun --nproc_per_node N -m robustsig extract ...` each process extracts its own shards.
    Example: `robustsig extract bundled:mobilenet_v2 folder:photos/ --out store/`.
    """
    from robustsig._progress import quiet
    from robustsig.data.registry import open_dataset, parse_dataset_options, parse_dataset_spec
    from robustsig.distributed import resolve_device, world_from_env
    from robustsig.extraction.extractor import describe_check, extract
    from robustsig.models.factory import load_classifier

    world = world_from_env()
    target = resolve_device(device or None, world)
    kind, root = parse_dataset_spec(dataset)
    data = open_dataset(kind, root, **parse_dataset_options(data_option))
    classifier = load_classifier(spec, device=target)
    with quiet() if as_json else nullcontext():
        store = extract(classifier, data, out, layers=("all" if layers == "all" else
                                                       [name.strip() for name in layers.split(",") if name.strip()]),
                        batch_size=batch_size, num_workers=None if workers < 0 else workers, device=target,
                        dtype=dtype, autocast=autocast or None, pooling=pooling, logits_topk=topk or None,
                        shard_size=shard_size, overwrite=overwrite, rehash=rehash, progress=not as_json)
    if not world.is_main:
        return
    summary = store.summary
    if as_json:
        emit_json({"store": str(store.path), "keys": store.keys, "rows": store.num_rows, "summary": summary,
                   "skipped": store.skipped, "check": store.check})
        return
    note = describe_check(store.check or {})
    if note:
        verb = {"reused": "reused the store", "update": "updated the store"}.get(store.check["status"], "extracted")
        typer.echo(printable(f"{verb}: {note}"), err=True)
    typer.echo(format_table([{"store": summary["store"], "images": summary["images"], "skipped": summary["skipped"],
                              "computed": summary["computed"], "seconds": float(summary["seconds"]),
                              "images/s": float(summary["images_per_s"] or 0)}], floatfmt=".1f"))
    for item in store.skipped[:10]:
        what = item.get("path") or item.get("key") or item["id"]
        why = f" ({item['reason']})" if item.get("reason") else ""
        typer.echo(printable(f"skipped ({'undecodable' if 'id' in item else 'unlisted'}): {what}{why}"), err=True)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)
