"""The options of the predict_er analysis (``analyses.predict_er``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PositiveInt

from robustsig.study.analysis import AnalysisOptions


class PredictErOptions(AnalysisOptions):
    """Signatures as ER predictors: the signature table, leave-one-model-out prediction of ER against the label-free
    baselines DoC and ATC, and Wise-FT tracking (robustsig.study.analyses.predict_er)."""

    label_free: bool = Field(default=True, description="DoC and ATC predicted ER from the stored logits")
    combination: list[str] | None = Field(default=None, description="signatures the ridge combination uses "
                                          "(default: every signature known for every model)")
    resamples: PositiveInt = Field(default=2000, description="bootstrap resamples of the models (of the groups)")
    seed: int = 0
    groups: list[Annotated[list[str], Field(min_length=1)]] | None = Field(
        default=None, description="lists of models that share weights (a model, its finetuned copies, the Wise-FT "
        "models between them): a predictor never fits on a model of the held-out model's group (leave one group "
        "out) and the bootstrap draws whole groups. Models listed nowhere are their own group; each Wise-FT pair's "
        "two models are joined automatically")
