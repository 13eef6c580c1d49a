"""The Wise-FT report on every shift (App. G, Figs. 15-16: "the activation kurtosis is computed for both ImageNet
tests and ImageNet shifts"): the kurtosis panel draws the id set solid and the mean over the shift sets dashed, the
table gives both. The values themselves are checked against the stores in test_study_run.py."""

from __future__ import annotations

import numpy as np
import pytest

from robustsig.report import tables
from robustsig.study.analyses.wiseft import (WiseFtRow, WiseFtSignatureRow, shift_kurtosis, wiseft_figure,
                                             wiseft_table)

ALPHAS = (0.0, 0.5, 1.0)
# kurtosis per (alpha, dataset): the id set "val", two shift sets
KURTOSIS = {"val": (20.0, 12.0, 5.0), "sketch": (30.0, 16.0, 6.0), "v2": (22.0, 14.0, 4.0)}


def rows() -> tuple[list[WiseFtRow], list[WiseFtSignatureRow]]:
    wiseft = [WiseFtRow("p", a, 0.6 + 0.1 * a, 0.4, 0.05 - 0.05 * a, KURTOSIS["val"][i], None)
              for i, a in enumerate(ALPHAS)]
    signatures = [WiseFtSignatureRow("p", a, name, values[i], 50) for i, a in enumerate(ALPHAS)
                  for name, values in KURTOSIS.items()]
    return wiseft, signatures


def test_the_shift_kurtosis_is_the_mean_over_every_set_but_the_id_set():
    _, signatures = rows()
    means = shift_kurtosis(signatures, "val")
    assert means == {("p", a): pytest.approx((KURTOSIS["sketch"][i] + KURTOSIS["v2"][i]) / 2)
                     for i, a in enumerate(ALPHAS)}
    assert shift_kurtosis(signatures, None) == means  # default: the first set, the one each step writes first
    assert shift_kurtosis(signatures, "sketch")[("p", 0.0)] == pytest.approx(21.0)
    assert shift_kurtosis([], "val") == {}


def test_the_kurtosis_panel_draws_the_id_set_solid_and_the_shift_sets_dashed():
    wiseft, signatures = rows()
    figure = wiseft_figure(wiseft, shift_kurtosis(signatures, "val"))
    panel = next(ax for ax in figure.axes if ax.get_ylabel() == "kurtosis")
    solid, dashed = panel.lines
    assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"
    assert solid.get_label() == "p (I)" and dashed.get_label() == "p (S)"
    np.testing.assert_allclose(solid.get_ydata(), KURTOSIS["val"])
    np.testing.assert_allclose(dashed.get_ydata(), [26.0, 15.0, 5.0])
    np.testing.assert_allclose(dashed.get_xdata(), ALPHAS)
    assert len(wiseft_figure(wiseft).axes[2].lines) == 1  # no shift kurtosis known: the id curve alone


def test_the_table_gives_the_id_and_the_shift_kurtosis():
    wiseft, signatures = rows()
    table = wiseft_table(wiseft, shift_kurtosis(signatures, "val"))
    lines = tables.to_csv(table).splitlines()
    assert lines[0] == "Pair,alpha,ACC(I) (%),ACC(S) (%),ER (%),Kurtosis (I),Kurtosis (S),Unique concepts"
    assert lines[2] == "p,0.5,65.0,40.0,+2.5,12.0,15.0,"
    assert "wiseft_signatures" in table.sources and "mean over the shift sets" in table.caption
    plain = wiseft_table(wiseft)
    assert "Kurtosis (S)" not in tables.to_csv(plain).splitlines()[0] and plain.sources == ("wiseft",)
