"""HOL §9: the Eq. 5 loss, transfer-set selection, and a student that learns from its teacher."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from advbook import data
from advbook.analysis import distill
from advbook.training import train
from advbook.training.objectives import kd_loss


def test_kd_loss_matches_its_formula_on_a_hand_case():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[0.5, 1.5, 0.0]])
    y = torch.tensor([1])
    tau, lam = 2.0, 0.3
    p_t = np.exp(t.numpy()[0] / tau) / np.exp(t.numpy()[0] / tau).sum()
    p_s = np.exp(s.numpy()[0] / tau) / np.exp(s.numpy()[0] / tau).sum()
    kl = float((p_t * np.log(p_t / p_s)).sum())
    ce = float(-np.log(np.exp(s.numpy()[0, 1]) / np.exp(s.numpy()[0]).sum()))
    expected = (1 - lam) * tau ** 2 * kl + lam * ce
    loss = kd_loss(student_logits=s, teacher_logits=t, labels=y, tau=tau, lam=lam)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_takes_the_two_logits_by_name_only():
    s, t, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.5, 1.5, 0.0]]), torch.tensor([1])
    with pytest.raises(TypeError):
        kd_loss(s, t, y, tau=2.0, lam=0.3)
    # the swap the keywords rule out is not harmless: KL is not symmetric and the CE reads the student
    forward = kd_loss(student_logits=s, teacher_logits=t, labels=y, tau=2.0, lam=0.3)
    swapped = kd_loss(student_logits=t, teacher_logits=s, labels=y, tau=2.0, lam=0.3)
    assert abs(forward.item() - swapped.item()) > 1e-3


def test_kd_loss_limits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    def kd(student, teacher, **kw):
        return kd_loss(student_logits=student, teacher_logits=teacher, labels=y, **kw)

    assert kd(s, t, tau=30.0, lam=1.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert kd(s, s, tau=8.0, lam=0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd(s, t, tau=8.0, lam=0.0).item() > 0


def test_kd_loss_rejects_bad_hyperparameters():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"tau must be > 0 and lam in \[0, 1\], got tau=0.0, lam=0.2"):
        kd_loss(student_logits=s, teacher_logits=s, labels=torch.zeros(2, dtype=torch.long), tau=0.0, lam=0.2)


LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
SCORES = pd.DataFrame({"ddb": [0.3, 0.1, 0.2, 0.9, 0.5, 0.7, 0.4, 0.4, 0.8, 0.05],
                       "T": [0.2, 0.9, 0.5, 0.1, 0.6, 0.3, 0.7, 0.7, 0.1, 0.4]})


def test_closest_takes_the_smallest_ddb_of_every_class():
    idx = distill.select_transfer_set(criterion="closest", labels=LABELS, per_class=2, scores=SCORES)
    assert idx.tolist() == [1, 2, 4, 5, 6, 9]  # ties (6, 7 at 0.4) broken by position


def test_trust_takes_the_highest_trust_of_every_class():
    idx = distill.select_transfer_set(criterion="trust", labels=LABELS, per_class=2, scores=SCORES)
    assert idx.tolist() == [1, 2, 4, 5, 6, 7]


def test_random_is_balanced_and_seeded():
    labels = np.repeat(np.arange(5), 40)
    a = distill.select_transfer_set(criterion="random", labels=labels, per_class=7, seed=3)
    b = distill.select_transfer_set(criterion="random", labels=labels, per_class=7, seed=3)
    c = distill.select_transfer_set(criterion="random", labels=labels, per_class=7, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert np.bincount(labels[a.numpy()]).tolist() == [7] * 5
    assert len(set(a.tolist())) == 35


def test_selection_rejects_bad_input_with_the_valid_choices():
    with pytest.raises(ValueError, match="unknown criterion 'best'; valid: random, closest, trust"):
        distill.select_transfer_set(criterion="best", labels=LABELS, per_class=1, scores=SCORES)
    with pytest.raises(ValueError, match=r"per_class must be in \[1, 3\]"):
        distill.select_transfer_set(criterion="trust", labels=LABELS, per_class=4, scores=SCORES)
    with pytest.raises(ValueError, match="criterion 'trust' needs a scores frame with column 'T'"):
        distill.select_transfer_set(criterion="trust", labels=LABELS, per_class=1)


def test_score_pool_orders_scores_like_their_measures(synth, tiny_model):
    x = data.to_float(synth.train.images[:40])
    pool = distill.score_pool(tiny_model, x, attack="deepfool", attack_kwargs=dict(steps=20, overshoot=0.02),
                              attack_batch_size=40, batch_size_eval=100)
    assert len(pool) == 40
    assert pool[["d_hat", "f_hat", "T"]].stack().between(0, 1).all()
    assert (pool["ddb"].rank() == pool["d_hat"].rank()).all()
    assert (pool["flipping_frequency"].rank() == (-pool["f_hat"]).rank()).all()


def test_kd_needs_a_teacher(synth):
    with pytest.raises(ValueError, match="objective 'kd' needs a teacher model"):
        train.train_model(model_name="tiny_cnn", dataset=synth, cfg=train.TrainConfig(objective="kd"), seed=0)


def test_cache_key_reads_only_the_objectives_own_fields():
    std = train.TrainConfig()
    assert set(std.key_fields()) == set(train.SCHEDULE) | {"objective"}
    with pytest.raises(ValueError, match=r"^objective 'standard' takes no 'kd_tau', 'at_eps' \(a setting of pgd_at, "
                                         r"kd, .*\); valid: epochs, .*, objective$"):
        train.TrainConfig.build(kd_tau=30.0, at_eps=0.1)  # a foreign setting cannot reach the key
    kd = train.TrainConfig(objective="kd")
    assert kd.key_fields() == train.TrainConfig.build(objective="kd", kd_tau=4.0, kd_lambda=0.2).key_fields()
    assert kd.key_fields() != train.TrainConfig.build(objective="kd", kd_tau=30.0).key_fields()
    assert kd.key_fields() != train.TrainConfig.build(objective="kd", kd_lambda=0.5).key_fields()
    assert "at_eps" not in kd.key_fields() and "kd_tau" not in std.key_fields()


def test_distil_student_gives_the_kd_objective_its_tau_and_lambda(synth, tiny_model, monkeypatch):
    from pathlib import Path

    seen = []
    monkeypatch.setattr(distill, "train_model", lambda **kw: seen.append(kw["cfg"]))
    teacher = train.TrainedModel(tiny_model, "t", Path("-"), {}, from_cache=True)
    distill.distil_student(student="tiny_cnn", dataset=synth, teacher=teacher, train_index=None, tau=3.0, lam=0.4,
                           epochs=2, batch_size=50, lr=0.1, weight_decay=1e-4, seed=0, device="cpu")
    assert seen[0].objective == "kd" and (seen[0].hyper.tau, seen[0].hyper.lam) == (3.0, 0.4)
    assert (seen[0].epochs, seen[0].batch_size, seen[0].lr, seen[0].weight_decay) == (2, 50, 0.1, 1e-4)


class Permuted(torch.nn.Module):
    """A teacher that answers with a fixed permutation of another model's classes."""

    def __init__(self, model, perm):
        super().__init__()
        self.model, self.perm = model, perm

    def forward(self, x):
        return self.model(x)[:, self.perm]


def test_student_follows_the_teacher_at_lambda_0_and_the_labels_at_lambda_1(synth, tiny_model):
    from pathlib import Path

    perm = torch.tensor([1, 2, 3, 0])
    teacher = train.TrainedModel(Permuted(tiny_model, perm).eval(), "permuted", Path("-"), {}, from_cache=True)
    x, y = data.to_float(synth.train.images), synth.train.labels
    said = train.predict(teacher.model, x).argmax(1)
    kw = dict(student="tiny_cnn", dataset=synth, teacher=teacher, train_index=None, tau=4.0, epochs=8,
              batch_size=50, lr=0.05, weight_decay=5e-4, seed=1, device="cpu")
    mimic = train.predict(distill.distil_student(lam=0.0, **kw).model, x).argmax(1)
    assert (mimic == said).float().mean() > 0.7
    assert (mimic == y).float().mean() < 0.3  # it learned the teacher's permuted answers, not the labels
    honest = distill.distil_student(lam=1.0, **kw)
    assert (train.predict(honest.model, x).argmax(1) == y).float().mean() > 0.7
    assert honest.meta["teacher"] == "permuted"
    acc = distill.student_accuracy(honest.model, synth.train.images, y)
    assert acc.dtype == torch.bool and acc.shape == y.shape


def test_student_key_follows_the_teacher(synth):
    a = train.model_key(model_name="tiny_cnn", dataset=synth, train_index=None, seed=0,
                        cfg=train.TrainConfig(objective="kd"), teacher_key="a")
    b = train.model_key(model_name="tiny_cnn", dataset=synth, train_index=None, seed=0,
                        cfg=train.TrainConfig(objective="kd"), teacher_key="b")
    assert a != b
