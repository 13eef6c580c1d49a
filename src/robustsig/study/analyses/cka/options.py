"""The options of the CKA analysis (``analyses.cka``), its table and its plan: which pairs, layers and datasets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from robustsig.study.analysis import AnalysisOptions, LayerRequest, Section, column, result_table
from robustsig.study.sections import Layers

if TYPE_CHECKING:
    from robustsig.study.config import StudyConfig


H = "h"
"""The name of the head's input ``h`` (what :meth:`robustsig.Classifier.encode` returns, the representation the paper
analyses) among the layers of a CKA pair: the last point of every curve, after the last layer tap."""


class CkaPair(Section):
    model_a: str = Field(description="a model name")
    model_b: str = Field(description="a model name")
    layers: Layers = Field(default=None, description="layer names of model_a, or 'all'; h (the head's input) is "
                                                     "always added as the last point")
    layers_b: Layers = Field(default=None, description="layer names of model_b (default: the same as layers)")
    cross: bool = Field(default=False, description="every layer of a against every layer of b (a heatmap)")
    dataset: str | None = Field(default=None, description="only this dataset for this pair (default: the "
                                                          "analysis's datasets)")


class CkaOptions(AnalysisOptions):
    """Layer-by-layer CKA between paired models."""

    pairs: list[CkaPair] = Field(min_length=1, description="a list of {model_a, model_b, layers}")
    kernel: Literal["linear", "rbf"] = "linear"
    unbiased: bool = False
    pooling: Literal["auto", "cls", "mean"] = "auto"
    dataset: str | None = Field(default=None, description="the only dataset to compute it on (default: the id set "
                                                          "and every shift set)")
    estimator: Literal["minibatch", "pooled"] = Field(
        default="minibatch", description="minibatch: the paper's (torch_cka: flattened layer outputs, unbiased HSIC "
                                         "summed over minibatches, both models in one pass); pooled: CKA over every "
                                         "image of the pooled layers in the stores (kernel, unbiased, pooling)")
    minibatch: int = Field(default=256, ge=4, description="images per minibatch of the minibatch estimator")

    @model_validator(mode="after")
    def _linear_minibatch(self) -> CkaOptions:
        if self.estimator == "minibatch" and self.kernel != "linear":
            raise ValueError(f"kernel {self.kernel!r} needs estimator: pooled; the minibatch estimator (the paper's, "
                             "torch_cka) is linear")
        return self



@result_table
@dataclass(frozen=True)
class CkaRow:
    """CKA between a layer of one model and a layer of another, on the same images."""

    TABLE: ClassVar[str] = "cka"
    KEY: ClassVar[tuple[str, ...]] = ("model_a", "model_b", "layer_a", "layer_b", "dataset")
    model_a: str = column("first model")
    model_b: str = column("second model")
    layer_a: str = column("layer of model_a (rows are written in layer order); h: the head's input, last")
    layer_b: str = column("layer of model_b; h: the head's input")
    cka: float = column("CKA: in [0, 1] for the biased estimator; the unbiased one (the paper's minibatch "
                        "estimator) can be slightly negative near independence")
    dataset: str = column("the images it is computed on (the id set and each shift set)")
    estimator: str = column("minibatch (the paper's, torch_cka) or pooled (see docs/study.md)")



def with_h(layers: Sequence[str]) -> list[str]:
    """``layers`` in order with :data:`H` as the last point (moved there when listed elsewhere).

    >>> with_h(["block0", "h", "block1"])
    ['block0', 'block1', 'h']
    """
    return [name for name in layers if name != H] + [H]


def datasets_of(config: StudyConfig, pair: CkaPair | None = None) -> list[str]:
    """The datasets CKA is computed on (for ``pair``): the pair's ``dataset``, else the analysis's, else the id set
    and every shift set."""
    options = config.analyses.cka
    if pair is not None and pair.dataset:
        return [pair.dataset]
    if options is not None and options.dataset:
        return [options.dataset]
    return [entry.name for entry in config.datasets.evaluation()]


def planned(config: StudyConfig) -> list[tuple[CkaPair, str]]:
    """Every (pair, dataset) of the config's CKA, dataset by dataset (the id set first)."""
    if config.analyses.cka is None:
        return []
    order = {name: i for i, name in enumerate(entry.name for entry in config.datasets.evaluation())}
    items = [(pair, dataset) for pair in config.analyses.cka.pairs for dataset in datasets_of(config, pair)]
    return sorted(items, key=lambda item: order.get(item[1], len(order)))


def pair_layers(pair: CkaPair) -> tuple[list[str] | None, list[str] | None]:
    """The layers asked for ``model_a`` and ``model_b`` (None: every tap of the model)."""
    layers_b = pair.layers_b if pair.layers_b is not None else pair.layers
    return pair.layers, layers_b


def layer_requests(config: StudyConfig) -> dict[tuple[str, str], LayerRequest]:
    """``(model, dataset) -> layers`` its store must hold for the CKA pairs of ``config`` (all of them; none for
    the minibatch estimator)."""
    if not config.analyses.enabled("cka") or config.analyses.cka.estimator != "pooled":
        return {}  # the minibatch estimator runs the models itself (a paired pass): no layers in the stores
    requests: dict[tuple[str, str], LayerRequest] = {}
    for pair, dataset in planned(config):
        for model, layers in zip((pair.model_a, pair.model_b), pair_layers(pair)):
            current = requests.get((model, dataset), ())
            if layers is None or current == "all":
                requests[(model, dataset)] = "all"
            else:
                taps = [name for name in layers if name != H]  # h is in every store
                requests[(model, dataset)] = tuple(dict.fromkeys([*current, *taps]))
    return requests


def match_layers(layers_a: Sequence[str], layers_b: Sequence[str], cross: bool) -> list[tuple[str, str]]:
    """The (layer of a, layer of b) pairs to compare, in layer order (see the module docstring); :data:`H` of both
    models (the head's input, the last point of every curve) is always paired with itself.

    >>> match_layers(["a0", "a1", "a2", "h"], ["b0", "b1", "b2", "b3", "b4", "h"], cross=False)
    [('a0', 'b0'), ('a1', 'b2'), ('a2', 'b4'), ('h', 'h')]
    """
    if cross:
        return [(a, b) for a in layers_a for b in layers_b]
    if H in layers_a and H in layers_b:
        blocks = match_layers([a for a in layers_a if a != H], [b for b in layers_b if b != H], cross=False)
        return [*blocks, (H, H)]
    if len(layers_a) == len(layers_b):
        return list(zip(layers_a, layers_b))
    short, long = (layers_a, layers_b) if len(layers_a) < len(layers_b) else (layers_b, layers_a)
    span = max(len(short) - 1, 1)
    partners = [long[round(i * (len(long) - 1) / span)] for i in range(len(short))]
    return list(zip(short, partners)) if short is layers_a else list(zip(partners, short))
