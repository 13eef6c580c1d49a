"""``robustsig analyze``: bring your own activations, labels and head -> kurtosis, outlier dimensions, direction
importance, privileged directions and pruning curves. Activations stream from disk in row chunks."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from typing import Any

import typer

from robustsig.cli._output import emit_json, format_table
from robustsig.errors import InputError

ACTIVATION_KEYS = ("h", "activations", "features")
LABEL_KEYS = ("labels", "targets", "y")
HEAD_KEYS = ("weight", "W", "head.weight", "fc.weight")


def parse_fractions(text: str) -> list[float]:
    """``"0:1:0.05"`` (start:stop:step, stop included) or ``"0,0.5,0.9"`` -> fractions."""
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0:
                raise ValueError("step must be positive")
            count = int(round((stop - start) / step))
            values = [start + i * step for i in range(count + 1)]
            return [round(v, 12) for v in values if v <= stop + 1e-9]
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError as error:
        raise InputError(f"--fractions must be START:STOP:STEP or a comma-separated list, got {text!r} ({error})") \
            from None


def _load_scoring(path: str) -> dict[str, Any]:
    """The pruning curve's scoring rule from a JSON file: ``{"class_indices": [...]}`` (the scored logit subset,
    labels are logit indices: ImageNet-R/-A) or ``{"class_map": [[...], ...]}`` (classes made of several logits,
    labels are class numbers: ObjectNet)."""
    if not os.path.isfile(path):
        raise InputError(f"scoring file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"scoring file {path!r} is not valid JSON: {error}") from error
    if isinstance(data, dict) and len(data) == 1:
        if isinstance(data.get("class_indices"), list) and data["class_indices"]:
            return {"class_mask": data["class_indices"]}
        if isinstance(data.get("class_map"), list) and data["class_map"]:
            return {"class_map": data["class_map"]}
    raise InputError(f"scoring file {path!r} must hold an object with one key: 'class_indices' (list of scored logit "
                     "indices; labels are logit indices) or 'class_map' (list of lists of logit indices; labels are "
                     "class numbers)")


def _bias_spec(head_spec: str, head: Any) -> str | None:
    """The bias next to a safetensors head (``weight`` -> ``bias``, an nn.Linear state dict), if there is one."""
    from robustsig.cli._arrays import safetensors_keys, split_spec

    key = getattr(head, "key", None)
    if key is None:
        return None
    path, _ = split_spec(head_spec)
    candidate = key[: -len("weight")] + "bias" if key.endswith("weight") else None
    return f"{path}:{candidate}" if candidate in safetensors_keys(path) else None


def analyze_command(
    activations: str = typer.Argument(..., help="Activations h (samples x features): FILE.npy or "
                                                "FILE.safetensors[:KEY]."),
    head: str = typer.Option(..., "--head", help="Head weight W (classes x features): .npy or .safetensors[:KEY] "
                                                 "(an nn.Linear state dict's bias is used too)."),
    labels: str = typer.Option(None, "--labels", help="Integer labels (one per row) for the pruning curves."),
    bias: str = typer.Option(None, "--bias", help="Head bias (classes): .npy or .safetensors[:KEY]."),
    scoring: str = typer.Option(None, "--scoring", help="JSON file with the scoring rule: {\"class_indices\": [...]} "
                                                      "(scored logit subset: ImageNet-R/-A) or {\"class_map\": "
                                                      "[[...], ...]} (ObjectNet)."),
    fractions: str = typer.Option("0:1:0.05", help="Pruned fractions: START:STOP:STEP or a comma list."),
    orders: str = typer.Option("singular,importance,random", help="Pruning orders to compute (comma list)."),
    factor: float = typer.Option(5.0, help="Privileged: importance >= FACTOR x mean importance."),
    outlier_factor: float = typer.Option(5.0, help="Outlier dimension: mean |h_i| >= FACTOR x the mean over dims."),
    top: int = typer.Option(10, help="Directions listed by importance."),
    seed: int = typer.Option(0, help="Seed of the random pruning order."),
    batch_size: int = typer.Option(8192, help="Rows read at a time."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
) -> None:
    """Outlier features and privileged directions of a head on your activations, and its pruning curves."""
    from robustsig._progress import progress, quiet
    from robustsig.cli._arrays import describe, open_array, read_all
    from robustsig.metrics.directions import ImportanceAccumulator, head_svd, importance_spearman, \
        privileged_directions
    from robustsig.metrics.kurtosis import KurtosisAccumulator
    from robustsig.metrics.pruning import ORDERS, PruningAccumulator

    order_list = [o.strip() for o in orders.split(",") if o.strip()]
    unknown = [o for o in order_list if o not in ORDERS]
    if unknown:
        raise InputError(f"--orders: unknown order(s) {', '.join(unknown)}; choose from {', '.join(ORDERS)}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    fraction_list = parse_fractions(fractions)

    h = open_array(activations, "activations", ACTIVATION_KEYS)
    if len(h.shape) != 2:
        raise InputError(f"activations {activations!r} must be 2-D (samples x features), got shape {tuple(h.shape)}")
    n, d = (int(v) for v in h.shape)
    head_array = open_array(head, "head", HEAD_KEYS)
    W = read_all(head_array)
    if W.ndim != 2 or W.shape[1] != d:
        raise InputError(f"head {head!r} has shape {tuple(W.shape)} but the activations have {d} features: the head "
                         f"must be classes x {d}")
    bias = bias or _bias_spec(head, head_array)
    b = read_all(open_array(bias, "bias")) if bias else None
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise InputError(f"bias {bias!r} has shape {tuple(b.shape)}; the head has {W.shape[0]} classes")
    y = None
    if labels is not None:
        y = read_all(open_array(labels, "labels", LABEL_KEYS)).flatten()
        if y.shape[0] != n:
            raise InputError(f"labels {labels!r} has {y.shape[0]} entries but activations {activations!r} has {n} rows")
    rule = _load_scoring(scoring) if scoring else {}

    with quiet() if as_json else nullcontext():
        svd = head_svd(W)
        kurtosis, importance_acc = KurtosisAccumulator(), ImportanceAccumulator(svd)
        with progress(total=n, desc="kurtosis, importance", unit="rows") as bar:
            for start in range(0, n, batch_size):
                chunk = h[start:start + batch_size]
                kurtosis.update(chunk)
                importance_acc.update(chunk)
                bar.update(len(chunk))
        importance = importance_acc.compute()
        curves = {}
        if y is not None:
            accs = {o: PruningAccumulator(svd, b, fraction_list, o, importance=importance, seed=seed,
                                          **rule) for o in order_list}
            with progress(total=n, desc="pruning curves", unit="rows") as bar:
                for start in range(0, n, batch_size):
                    chunk, chunk_labels = h[start:start + batch_size], y[start:start + batch_size]
                    for acc in accs.values():
                        acc.update(chunk, chunk_labels)
                    bar.update(len(chunk))
            curves = {o: acc.compute() for o, acc in accs.items()}

    outliers = kurtosis.outlier_dimensions(outlier_factor)
    privileged = privileged_directions(importance, factor)
    ranking = importance.argsort(descending=True, stable=True)[:top].tolist()
    mean_importance = float(importance.mean())
    document = {
        "activations": describe(activations, h), "head": {"file": head, "shape": list(W.shape), "rank": svd.rank},
        "bias": bias, "labels": labels,
        "kurtosis": kurtosis.compute(),
        "outlier_dimensions": [{"dimension": int(i), "score": float(s)}
                               for i, s in zip(outliers.indices, outliers.scores)],
        "spearman_singular_importance": importance_spearman(svd.s, importance) if svd.rank > 1 else None,
        "privileged_directions": [{"direction": int(i), "ratio": float(r), "importance": float(importance[i]),
                                   "singular_value": float(svd.s[i])}
                                  for i, r in zip(privileged.indices, privileged.ratios)],
        "top_directions": [{"direction": i, "importance": float(importance[i]),
                            "ratio": float(importance[i]) / mean_importance, "singular_value": float(svd.s[i])}
                           for i in ranking],
        "importance": importance.tolist(), "singular_values": svd.s.tolist(),
        "pruning": {o: curve.rows() for o, curve in curves.items()},
    }
    if as_json:
        emit_json(document)
        return
    _print_report(document, factor, outlier_factor, curves)


def _print_report(doc: dict[str, Any], factor: float, outlier_factor: float, curves: dict[str, Any]) -> None:
    n, d = doc["activations"]["shape"]
    typer.echo(f"activations {doc['activations']['file']}: {n} x {d}; head {doc['head']['file']}: "
               f"{doc['head']['shape'][0]} x {doc['head']['shape'][1]} (rank {doc['head']['rank']})"
               f"{', bias ' + doc['bias'] if doc['bias'] else ', no bias'}")
    typer.echo(f"activation kurtosis: {doc['kurtosis']:.3f} (Gaussian activations: 3)")
    if doc["outlier_dimensions"]:
        listed = ", ".join(f"{o['dimension']} ({o['score']:.1f}x)" for o in doc["outlier_dimensions"][:20])
        typer.echo(f"outlier dimensions (mean |h_i| >= {outlier_factor:g}x the average): {listed}")
    else:
        typer.echo(f"outlier dimensions (mean |h_i| >= {outlier_factor:g}x the average): none")
    if doc["spearman_singular_importance"] is not None:
        typer.echo(f"Spearman(singular value, importance): {doc['spearman_singular_importance']:.3f}")
    names = ", ".join(f"{p['direction']} ({p['ratio']:.1f}x)" for p in doc["privileged_directions"]) or "none"
    typer.echo(f"privileged directions (importance >= {factor:g}x the mean): {names}")
    typer.echo("")
    typer.echo(format_table(doc["top_directions"], ["direction", "importance", "ratio", "singular_value"],
                            floatfmt=".4g"))
    if curves:
        typer.echo("")
        first = next(iter(curves.values()))
        rows = [{"fraction pruned": f, "kept": int(k), **{f"{o} acc %": 100 * float(c['accuracy'][i])
                                                           for o, c in curves.items()}}
                for i, (f, k) in enumerate(zip(first["fraction"], first["n_kept"]))]
        typer.echo(format_table(rows, floatfmt=".2f"))


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)
