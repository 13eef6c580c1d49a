"""``robustsig cka A B``: CKA between two activation files holding the same samples in the same order."""

from __future__ import annotations

from contextlib import nullcontext

import typer

from robustsig.cli._output import emit_json
from robustsig.errors import InputError

ACTIVATION_KEYS = ("h", "activations", "features")


def minibatch_bounds(n: int, size: int, smallest: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of minibatches of ``size`` rows; a last batch under ``smallest`` rows joins the one before."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < smallest:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def cka_command(
    a: str = typer.Argument(..., help="Activations A (samples x features): FILE.npy or FILE.safetensors[:KEY]."),
    b: str = typer.Argument(..., help="Activations B of the same samples, same order."),
    kernel: str = typer.Option("linear", help="linear (any number of samples, streamed) or rbf."),
    unbiased: bool = typer.Option(False, "--unbiased", help="Unbiased HSIC estimator (Song et al. 2012)."),
    minibatch: int = typer.Option(None, "--minibatch", help="Minibatch CKA (Nguyen et al. 2021) over batches of this "
                                                            "many rows (>= 4); needed for rbf on large sets."),
    sigma: float = typer.Option(1.0, help="RBF bandwidth, a multiple of the median pairwise distance."),
    batch_size: int = typer.Option(8192, help="Rows read at a time (linear kernel)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Centered kernel alignment between two representations (1: the same up to rotation and scale)."""
    from robustsig._progress import progress, quiet
    from robustsig.cli._arrays import describe, open_array
    from robustsig.metrics.cka import MIN_UNBIASED_ROWS, LinearCKA, MinibatchCKA, cka

    X = open_array(a, "activations A", ACTIVATION_KEYS)
    Y = open_array(b, "activations B", ACTIVATION_KEYS)
    for spec, array in ((a, X), (b, Y)):
        if len(array.shape) != 2:
            raise InputError(f"{spec!r} must be 2-D (samples x features), got shape {tuple(array.shape)}")
    n = int(X.shape[0])
    if int(Y.shape[0]) != n:
        raise InputError(f"{a!r} has {n} rows and {b!r} has {Y.shape[0]}: CKA compares the same samples")
    if batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    with quiet() if as_json else nullcontext():
        if minibatch is not None:
            if minibatch < MIN_UNBIASED_ROWS:
                raise InputError(f"--minibatch must be at least {MIN_UNBIASED_ROWS} (the unbiased HSIC estimator), "
                                 f"got {minibatch}")
            estimator = MinibatchCKA(kernel=kernel, sigma=sigma)
            bounds = minibatch_bounds(n, minibatch, MIN_UNBIASED_ROWS)
            for start, stop in progress(bounds, desc="minibatch CKA", unit="batch"):
                estimator.update(X[start:stop], Y[start:stop])
            value = estimator.compute()
        elif kernel == "linear":
            streamed = LinearCKA(unbiased)
            with progress(total=n, desc="linear CKA", unit="rows") as bar:
                for start in range(0, n, batch_size):
                    streamed.update(X[start:start + batch_size], Y[start:start + batch_size])
                    bar.update(min(batch_size, n - start))
            value = streamed.compute()
        else:
            value = cka(X, Y, kernel=kernel, unbiased=unbiased, sigma=sigma)
    method = f"minibatch of {minibatch}, unbiased" if minibatch is not None else ("unbiased" if unbiased else "biased")
    if as_json:
        emit_json({"cka": value, "kernel": kernel, "estimator": method, "samples": n,
                   "a": describe(a, X), "b": describe(b, Y), **({"sigma": sigma} if kernel == "rbf" else {})})
        return
    typer.echo(f"CKA ({kernel} kernel, {method}) between {a} ({X.shape[1]} features) and {b} ({Y.shape[1]} features) "
               f"over {n} samples: {value:.4f}")


def register(app: typer.Typer) -> None:
    app.command("cka")(cka_command)
