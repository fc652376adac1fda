"""Verdict rules: the standard error, the margin of a claimed winner, and the judgement."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from advbook.analysis import verdict
from advbook.book import report


def test_max_standard_error_is_the_binomial_worst_case():
    assert verdict.max_standard_error(400) == pytest.approx(2.5)
    assert verdict.max_standard_error(10000) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive number of images, got 0"):
        verdict.max_standard_error(0)


@pytest.mark.parametrize("gaps, expected", [
    ([6.0, 5.1], "holds"),
    ([-6.0, -5.1], "does not hold"),
    ([6.0, -5.1], "partly holds"),
    ([6.0, 4.9], "inconclusive: 1 of 2 gaps are within two standard errors"),
    ([0.5, -0.5, 1.0], "inconclusive: 3 of 3 gaps are within two standard errors"),
    ([6.0, math.nan], "inconclusive: 1 of 2 gaps are within two standard errors"),
])
def test_judge_needs_every_margin_beyond_two_standard_errors(gaps, expected):
    assert verdict.judge(gaps, noise=2.5) == expected


def test_judge_rejects_no_margins():
    with pytest.raises(ValueError, match="at least one margin"):
        verdict.judge([], noise=1.0)


def test_margin_is_over_the_best_of_the_others():
    mean = pd.DataFrame({"pgd": [50.0, 47.0, 49.0], "cw": [40.0, 42.0, 30.0]}, index=["vir_at", "gairat", "mail_at"])
    assert verdict.margin(mean, "vir_at", mean.index, "pgd") == pytest.approx(1.0)          # itself excluded
    assert verdict.margin(mean, "vir_at", ["gairat", "mail_at"], "cw") == pytest.approx(-2.0)
    assert math.isnan(verdict.margin(mean, "vir_trades", mean.index, "pgd"))               # winner not run
    assert math.isnan(verdict.margin(mean, "vir_at", ["mart"], "pgd"))                       # no rival run


def test_seeds_label_and_best_agreement_sentence():
    assert verdict.seeds_label(1) == "1 seed" and verdict.seeds_label(4) == "4 seeds"
    ours = pd.DataFrame([["full", "pgd", 50.0, 0], ["sv", "pgd", 45.0, 0], ["full", "cw", 30.0, 0], ["sv", "cw", 31.0, 0]],
                        columns=["variant", "evaluation", "accuracy", "seed"])
    text = report.best_agreement(ours, "VIR-T6", row="variant")
    assert "**1 of 2**" in text and "ours: cw: sv, pgd: full" in text and "paper: cw: full, pgd: full" in text
