"""The evaluation suite: per-sample robust flags, their bounds, resume, and reference attacks."""
from __future__ import annotations

import pytest
import torch

from advbook.evaluation import evaluate

EPS = 8 / 255


def test_cw_loss_on_a_hand_case():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    # -clamp(z_y - max_other + kappa, 0): sample 1: 3 - 1 + 0.5 = 2.5; sample 2: 0 - 2 + 0.5 -> clamped to 0
    assert evaluate.cw_loss(logits, y, kappa=0.5).item() == pytest.approx(-2.5)


@pytest.fixture(scope="module")
def result(tiny_model, test_batch):
    x, _, y = test_batch
    attacks = {"fgsm": dict(eps=EPS), "pgd": dict(eps=EPS, step_size=2 / 255, steps=10),
               "cw": dict(eps=EPS, step_size=2 / 255, steps=10), "fmn": dict(eps=EPS, steps=20),
               "autoattack": dict(eps=EPS, version="custom", parts=["apgd-ce"]),
               "square": dict(eps=EPS, n_queries=50)}
    return evaluate.evaluate(tiny_model, x, y, attacks=attacks, batch_size=32)


def test_no_attack_makes_a_wrong_sample_right(result):
    r = result.robust
    for column in r.columns:
        assert not (r[column] & ~r["natural"]).any(), column
    acc = result.accuracy()
    assert acc["worst"] <= acc.drop("worst").min()
    assert acc["pgd"] < acc["natural"]  # the tiny model is not robust at 8/255


def test_iterative_attacks_are_at_least_as_strong_as_fgsm_here(result):
    acc = result.accuracy()
    assert acc["pgd"] <= acc["fgsm"] and acc["autoattack"] <= acc["fgsm"]


def test_a_vanishing_budget_changes_nothing(tiny_model, test_batch):
    x, _, y = test_batch
    res = evaluate.evaluate(tiny_model, x, y, attacks={"pgd": dict(eps=1e-7, step_size=1e-7, steps=3),
                                                        "fgsm": dict(eps=1e-7)})
    assert res.robust["pgd"].equals(res.robust["natural"]) and res.robust["fgsm"].equals(res.robust["natural"])


def test_an_interrupted_evaluation_resumes_from_its_files(tiny_model, test_batch, tmp_path):
    x, _, y = test_batch
    attacks = {"fgsm": dict(eps=EPS), "pgd:5": dict(eps=EPS, step_size=2 / 255, steps=5)}
    first = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert first.seconds["pgd:5"] > 0 and len(list(tmp_path.glob("*.pt"))) == 2
    again = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert again.seconds == {"fgsm": 0.0, "pgd:5": 0.0}
    assert again.robust.equals(first.robust)
    victim = next(tmp_path.glob("pgd_5-*.pt"))
    victim.write_bytes(victim.read_bytes()[:10])  # truncated: recomputed, not trusted
    third = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert third.seconds["pgd:5"] > 0 and third.robust.equals(first.robust)


def test_unknown_evaluation_names_the_valid_ones(tiny_model, test_batch):
    x, _, y = test_batch
    with pytest.raises(ValueError, match="^unknown evaluation\\(s\\) bogus; valid: fgsm, pgd, cw, fmn, autoattack, square, "
                                         "spsa, mde$"):
        evaluate.evaluate(tiny_model, x, y, attacks={"bogus": {}})
    with pytest.raises(ValueError, match="^unknown MDE part\\(s\\) apgd-t; valid: apgd-ce, md, mdmt, fab-t$"):
        evaluate.evaluate(tiny_model, x, y, attacks={"mde": dict(eps=EPS, parts=["md", "apgd-t"])})
