"""The options of the concepts analysis (``analyses.concepts``): the AP matrices, the summary at the threshold, the
threshold sweep, the significance test and the Venn groups all read them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, NonNegativeInt, PositiveInt

from robustsig.metrics.significance import DEFAULT_PERMUTATIONS
from robustsig.study.analysis import AnalysisOptions
from robustsig.study.sections import Basis, unique_values

if TYPE_CHECKING:
    from robustsig.study.config import StudyConfig


ORIENTATION_TITLES = {"positive": "the paper's one-sided AP of h . v_i",
                      "both": "the variant both, max(AP(s), AP(-s))"}
"""How tables and figures name each AP orientation."""


class ConceptsOptions(AnalysisOptions):
    """Concept probing on Broden: AP of every direction for every concept."""

    threshold: float = Field(default=0.9, gt=0, le=1, description="the AP above which a concept is encoded")
    min_positives: PositiveInt = Field(default=10, description="concepts with fewer positive images are skipped")
    bases: Annotated[list[Basis], AfterValidator(unique_values)] = Field(
        default_factory=lambda: ["singular", "neuron"], min_length=1,
        description="directions probed: singular (the head's) and/or neuron (the canonical basis)")
    top_k: PositiveInt = Field(default=3, description="concepts listed for the most privileged direction")
    seed: int = 0
    venn_groups: list[Annotated[list[str], Field(min_length=2)]] | None = Field(
        default=None, description="lists of model names whose concept sets a Venn diagram compares "
                                  "(default: zero-shot, finetuned and supervised per backbone and pretraining)")
    orientation: Literal["positive", "both"] = Field(
        default="positive", description="the AP the derived steps use (threshold sweep, significance, Venn sets, top "
                                        "concepts); positive (the paper's): the AP of the projection h . v_i, with "
                                        "head_svd's sign convention (the largest-magnitude entry of each v_i is "
                                        "positive); both (a variant): max of AP(s) and AP(-s). concepts.csv and "
                                        "concept_thresholds.csv give the counts of both")
    thresholds: Annotated[list[Annotated[float, Field(gt=0, le=1)]], AfterValidator(unique_values)] = Field(
        default_factory=lambda: [0.8, 0.85, 0.9, 0.95], min_length=1,
        description="AP thresholds of the sensitivity sweep (unique concepts and polysemanticity at each)")
    permutations: NonNegativeInt = Field(default=DEFAULT_PERMUTATIONS, description="label permutations per concept "
                                         "of the significance test of the concept counts, at most (a concept stops "
                                         "early once its p-value is settled; 0: no test)")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="false discovery rate of the significant concept count")


def options_of(config: StudyConfig) -> ConceptsOptions:
    """The concepts options (the defaults when only another analysis, such as Wise-FT, asks for concepts)."""
    return config.analyses.concepts or ConceptsOptions()
