"""The options of the predict_er analysis (``analyses.predict_er``)."""

from __future__ import annotations

from pydantic import Field, PositiveInt

from robustsig.study.analysis import AnalysisOptions


class PredictErOptions(AnalysisOptions):
    """Signatures as ER predictors: the signature table, leave-one-model-out prediction of ER against the label-free
    baselines DoC and ATC, and Wise-FT tracking (robustsig.study.analyses.predict_er)."""

    label_free: bool = Field(default=True, description="DoC and ATC predicted ER from the stored logits")
    combination: list[str] | None = Field(default=None, description="signatures the ridge combination uses "
                                          "(default: every signature known for every model)")
    resamples: PositiveInt = Field(default=2000, description="bootstrap resamples of the models")
    seed: int = 0
