"""The steps of the CKA analysis: one per pair and dataset, with the paper's minibatch estimator (a paired pass) or
the pooled one (from the stores)."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from robustsig.errors import DataError, InputError
from robustsig.metrics.cka import MIN_UNBIASED_ROWS
from robustsig.study.analyses.cka.estimators import MINIBATCH, layer_cka, paired_cka
from robustsig.study.analyses.cka.options import H, CkaOptions, CkaPair, CkaRow, match_layers, pair_layers, with_h
from robustsig.study.analysis import AnalysisTask, InputRecord, RunContext, has_rows, model_subject
from robustsig.study.results import jsonable


def _layer_names(model: str, asked: list[str] | None, available: list[str]) -> list[str]:
    """The layers of ``model`` to compare: those asked (default: every tap), then :data:`H`."""
    if H in available:
        raise InputError(f"analyses.cka: model {model!r} has a layer tap named {H!r}, the name of the head's input "
                         "in cka.csv; rename the tap")
    names = list(asked) if asked is not None else list(available)
    absent = [name for name in names if name not in available and name != H]
    if absent:
        raise InputError(f"analyses.cka: model {model!r} has no layer {absent}; its layer taps are "
                         f"{available or 'none'} (use layers: all, or names among them; {H} is always compared)")
    return with_h(names)


class CkaTask(AnalysisTask):
    """CKA per layer of one pair of models on one dataset."""

    tag = "cka"

    def __init__(self, pair: CkaPair, options: CkaOptions, dataset: str, needs: tuple[str, ...]) -> None:
        super().__init__(f"cka:{pair.model_a}:{pair.model_b}:{dataset}",
                         f"{pair.model_a} vs {pair.model_b} on {dataset}", needs, (pair.model_a, pair.model_b))
        self.pair = pair
        self.options = options
        self.dataset = dataset

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, CkaRow, model_a=self.pair.model_a, model_b=self.pair.model_b,
                        dataset=self.dataset)

    def _write(self, ctx: RunContext, rows: list[CkaRow], inputs: list[Any], parameters: dict[str, Any]) -> None:
        pair = self.pair
        ctx.results.replace(CkaRow, rows, model_a=pair.model_a, model_b=pair.model_b, dataset=self.dataset)
        ctx.results.record(CkaRow, inputs, parameters)

    def _summary(self, values: dict[tuple[str, str], float], layers: list[list[str]], note: str) -> str:
        shown = ", ".join(f"{value:.2f}" for value in list(values.values())[:6])
        undefined = sum(value != value for value in values.values())
        if undefined:
            note += f"; undefined for {undefined} pair(s) (a constant representation)"
        how = "every layer against every layer" if self.pair.cross else (
            "in order" if len(layers[0]) == len(layers[1]) else "matched by relative depth")
        return (f"{len(values)} layer pair(s) ({len(layers[0])} x {len(layers[1])} layers, {how}): "
                f"{shown}{' ...' if len(values) > 6 else ''}{note}")


class MinibatchCkaTask(CkaTask):
    """The paper's estimator: a paired pass of both models over the dataset (see the module notes)."""

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        pair, options = self.pair, self.options
        return jsonable({"models": [ctx.classifiers.identity(model_subject(model))
                                    for model in (pair.model_a, pair.model_b)],
                         "dataset": ctx.description(self.dataset), "layers": pair_layers(pair), "last": H,
                         "cross": pair.cross, "estimator": "minibatch", "minibatch": options.minibatch,
                         "autocast": ctx.autocast})

    def compute(self, ctx: RunContext) -> str:
        pair, options = self.pair, self.options
        classifiers = [ctx.classifiers.get(model_subject(model)) for model in (pair.model_a, pair.model_b)]
        layers = [_layer_names(model, asked, classifier.layers)
                  for model, classifier, asked in zip((pair.model_a, pair.model_b), classifiers, pair_layers(pair))]
        pairs = match_layers(layers[0], layers[1], pair.cross)
        used = [list(dict.fromkeys(a for a, _ in pairs)), list(dict.fromkeys(b for _, b in pairs))]
        result = paired_cka(*classifiers, ctx.dataset(self.dataset), *used, minibatch=options.minibatch,
                            device=ctx.device, autocast=ctx.autocast, workers=ctx.config.workers,
                            progress=ctx.progress and sys.stderr.isatty())
        values = {(a, b): float(result.values[used[0].index(a), used[1].index(b)]) for a, b in pairs}
        rows = [CkaRow(pair.model_a, pair.model_b, a, b, values[(a, b)], self.dataset, "minibatch") for a, b in pairs]
        inputs = [InputRecord(model, self.dataset, "", result.images) for model in (pair.model_a, pair.model_b)]
        self._write(ctx, rows, inputs, {"estimator": "minibatch (the paper's: torch_cka, flattened layer outputs, "
                                        "unbiased HSIC summed over minibatches)", "minibatch": options.minibatch})
        note = (f"; {result.left_out} image(s) of a last minibatch under {MIN_UNBIASED_ROWS} left out"
                if result.left_out else "")
        return self._summary(values, used, f" (minibatch, {result.images} images{note})")


class PooledCkaTask(CkaTask):
    """The ``pooled`` estimator: CKA of the pooled layer activations in the stores."""

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        pair, options = self.pair, self.options
        return {"stores": [ctx.store(model_subject(model), self.dataset).digest
                           for model in (pair.model_a, pair.model_b)],
                "layers": pair_layers(pair), "last": H, "cross": pair.cross, "kernel": options.kernel,
                "unbiased": options.unbiased, "pooling": options.pooling, "estimator": "pooled",
                "minibatch": MINIBATCH if options.kernel != "linear" else None}

    def compute(self, ctx: RunContext) -> str:
        pair, options = self.pair, self.options
        verified = [ctx.store(model_subject(model), self.dataset) for model in (pair.model_a, pair.model_b)]
        store_a, store_b = (item.store for item in verified)
        layers = [_layer_names(model, asked, store.layers)
                  for model, store, asked in zip((pair.model_a, pair.model_b), (store_a, store_b), pair_layers(pair))]
        if not store_a.read("ids").equal(store_b.read("ids")):
            raise DataError(f"the stores of {pair.model_a} and {pair.model_b} on {self.dataset} hold different images "
                            "(different undecodable images were skipped?); re-extract both")
        pairs = match_layers(layers[0], layers[1], pair.cross)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined pairs are NaN, counted in the summary
            values = layer_cka(store_a, store_b, pairs, options.kernel, options.unbiased)
        rows = [CkaRow(pair.model_a, pair.model_b, a, b, values[(a, b)], self.dataset, "pooled") for a, b in pairs]
        self._write(ctx, rows, [item.record(model, self.dataset)
                                for item, model in zip(verified, (pair.model_a, pair.model_b))],
                    {"estimator": "pooled", "kernel": options.kernel, "unbiased": options.unbiased,
                     "pooling": options.pooling,
                     "method": "LinearCKA (exact, streamed)" if options.kernel == "linear"
                     else f"MinibatchCKA over {MINIBATCH}-image minibatches"})
        return self._summary(values, layers, f" (pooled, {options.kernel})")
