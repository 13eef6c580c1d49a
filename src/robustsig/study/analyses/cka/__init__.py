"""CKA per layer between the configured pairs of models, on the id set and every shift set (or on the one
``dataset`` given): ``cka.csv``, one row per layer pair and dataset, saying which estimator made it.

Estimators (``estimator``):

- ``minibatch`` (the default, the paper's, App. B): PyTorch-Model-Compare's (``torch_cka``), which Crabbé et al.
  ran. The same minibatches of ``minibatch`` images go through both models in one *paired pass*; each layer's
  output is flattened (``flatten(1)``: every token or position, not pooled), and only the ``n x n`` Gram matrix
  of the minibatch is kept (:class:`robustsig.MinibatchCKAMatrix`); unbiased HSIC summed over the minibatches. A
  last minibatch of fewer than 4 decodable images is left out (the estimator is undefined on it; torch_cka fails
  there), and the log and provenance say how many images were.
  Why a paired pass rather than Gram matrices stored at extraction: it is torch_cka's procedure exactly (the same
  batches through both models, whatever their preprocessing), it needs no store space (per-batch Grams of every
  layer would add ``N x minibatch`` values per layer to every store, about 2.4 GB per model over the paper's six
  ImageNet sets at 256) and no coupling of the estimator to extraction's batches, shards, resumes and skipped
  images; its cost is one more forward pass of each pair's two models per dataset (what torch_cka costs), paid
  again only when a model, a dataset or an option changes (the step is keyed by all of them).
- ``pooled``: CKA over every image of the layer activations pooled per image at extraction (``pooling``), streamed
  from the stores: the linear kernel with :class:`robustsig.LinearCKA` (the exact streaming twin of
  :func:`robustsig.cka`, biased or unbiased HSIC), the RBF kernel with :class:`robustsig.MinibatchCKA` (Nguyen et
  al.'s sum over minibatches of :data:`MINIBATCH` images, so ``unbiased`` has no effect there).

Layers: ``layers: all`` (or no ``layers``) takes every layer tap of each model. Every curve ends with ``h``, the
head's input (what :meth:`robustsig.Classifier.encode` returns: the representation the paper analyses, and where
App. B sees "a large drop in CKA ... in the last layer"), after the last tap: the minibatch estimator takes it from
the same forward pass as the taps, the pooled one from the stores' ``h``; ``cka.csv`` names it ``h``. Without
``cross``, layers are matched one to one: ``h`` with ``h``, the taps in order when both models have as many, else
by relative depth (each tap of the shallower model with the tap of the deeper one at the nearest relative depth
``index / (count - 1)``). With ``cross: true`` every layer of ``model_a`` (``h`` last) is compared with every layer
of ``model_b`` (the heatmap of Fig. 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from robustsig.study.analyses.cka.options import (H, CkaOptions, CkaPair, CkaRow, datasets_of, layer_requests,
                                                  match_layers, pair_layers, planned, with_h)
from robustsig.study.analyses.cka.report import cka_section
from robustsig.study.analyses.cka.tasks import MinibatchCkaTask, PooledCkaTask
from robustsig.study.analysis import (Analysis, LayerRequest, Planner, model_subject, unknown_datasets,
                                      unknown_models)
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig

__all__ = ["H", "Cka", "CkaOptions", "CkaPair", "CkaRow", "datasets_of", "match_layers", "pair_layers", "planned",
           "with_h"]


class Cka(Analysis):
    """CKA per layer between the configured pairs (see the module notes)."""

    name = "cka"
    title = "CKA per layer"
    Options = CkaOptions
    tables = (CkaRow,)

    def check(self, config: StudyConfig) -> list[str]:
        options = config.analyses.cka
        problems = unknown_datasets(config, [("analyses.cka.dataset", options.dataset)])
        for i, pair in enumerate(options.pairs):
            problems += unknown_models(config, [(f"analyses.cka.pairs[{i}].model_a", pair.model_a),
                                                (f"analyses.cka.pairs[{i}].model_b", pair.model_b)])
            problems += unknown_datasets(config, [(f"analyses.cka.pairs[{i}].dataset", pair.dataset)])
        return problems

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        pairs = [pair for pair in section["pairs"] if pair["model_a"] in models and pair["model_b"] in models]
        return {**section, "pairs": pairs} if pairs else None

    def layer_requests(self, config: StudyConfig) -> dict[tuple[str, str], LayerRequest]:
        return layer_requests(config)

    def store_pooling(self, config: StudyConfig) -> str | None:
        return config.analyses.cka.pooling

    def plan_pool(self, planner: Planner, config: StudyConfig) -> None:
        options = config.analyses.cka
        for pair, dataset in planned(config):
            if options.estimator == "minibatch":
                planner.add(MinibatchCkaTask(pair, options, dataset, ()))
            else:
                needs = tuple(planner.store(model_subject(model), dataset) for model in (pair.model_a, pair.model_b))
                planner.add(PooledCkaTask(pair, options, dataset, needs))

    def keeps(self, row: Any, config: StudyConfig) -> bool:
        """A row of a pair and dataset that the config still plans."""
        return (row.model_a, row.model_b, row.dataset) in {(pair.model_a, pair.model_b, dataset)
                                                           for pair, dataset in planned(config)}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        return cka_section(page, models)
