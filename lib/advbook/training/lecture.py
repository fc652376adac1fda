"""Training objectives of the lecture's defenses (LEC-F11) not already in the registry.

PGD-AT and TRADES are :mod:`advbook.training.objectives`' ``pgd_at`` and ``trades``; this module adds

* ``alp``: Adversarial Logit Pairing (Kannan, Kurakin & Goodfellow 2018);
* ``temperature_standard``: cross-entropy at temperature T, the teacher of defensive distillation;
* ``distillation``: defensive distillation (Papernot, McDaniel, Wu, Jha & Swami 2016), the student
  trained at temperature T on the teacher's soft labels at T.

**Temperature.** Both distillation objectives divide the network's logits by T inside the loss
only: the network itself is unchanged, and at test time (evaluation, attacks) its logits are used
as they are, which is temperature 1. A network trained at T = 100 thus has logits about 100 times
larger than usual, its softmax at T = 1 is one-hot to float precision, and the cross-entropy's
gradient with respect to the input vanishes: the gradient masking that Carlini & Wagner (2016)
break with a margin loss (:func:`advbook.attacks.adaptive.margin_pgd`).

Both losses are multiplied by T. Their gradient with respect to the logits is then
``softmax(z / T) - target``, the size of standard training's, so the project's learning-rate schedule
is as stable at any T. Papernot et al. do not scale: the gradient is T times smaller. Hinton et
al.'s (2015) T^2 (:func:`~advbook.training.objectives.kd_loss`) makes it T times larger. On tiny_cnn
with the synthetic set at T = 100 and lr 0.05 (our measurements, 3-4 epochs), no factor stayed at
chance (a network with batch norm grows its logits through its last layers only) and T^2 diverged
(logits of 1e5, chance accuracy), while T trained. The factor changes the speed and stability of
training, not the function the loss is minimised by.

Registered by :mod:`advbook.training.registry`; the configurations follow
:mod:`advbook.training.objectives` (frozen dataclasses of keyword fields).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from advbook.attacks.core import pgd
from advbook.training.framework import Objective, StepContext, check_registry, in_eval_mode, kw_field
from advbook.training.objectives import AttackConfig

__all__ = ["OBJECTIVES", "ALPConfig", "TemperatureConfig", "alp_loss", "temperature_ce", "distillation_loss"]


def alp_loss(*, logits_clean: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor,
             lam: float) -> torch.Tensor:
    """ALP's loss as the reference code computes it (``tensorflow/models``,
    ``research/adversarial_logit_pairing/train.py``): the cross-entropy over the mixed minibatch of
    the clean and the adversarial examples, each half weighing 1/2 (Kannan et al.'s "mixed
    minibatch PGD"), plus ``lam`` times the squared difference of the two logits averaged over the
    batch *and* the classes (``tf.losses.mean_squared_error``, i.e. ``||f(x) - f(x')||^2 / C`` per
    sample; the paper's L2 loss leaves the normalisation open). ``lam = 0`` is plain mixed
    adversarial training. Keyword-only: swapping the logits would not change the value, swapping a
    logit and the labels would fail late.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    mixed = F.cross_entropy(torch.cat([logits_clean, logits_adv]), torch.cat([labels, labels]))
    return mixed + lam * F.mse_loss(logits_clean, logits_adv)


@dataclasses.dataclass(frozen=True)
class ALPConfig(AttackConfig):
    """ALP: the training attack's budget and the weight of the pairing term. The attack is L-inf, as
    in Kannan et al. and the reference code (``at_norm`` is in the key but no setting, as for
    TRADES); the reference README trains with ``train_lp_weight=0.5``."""
    lam: float = kw_field("alp_lambda", 0.5)

    def __post_init__(self):
        if not self.lam >= 0:
            raise ValueError(f"alp_lambda must be >= 0, got {self.lam}")


def _alp(model, x, y, cfg, ctx: StepContext):
    """ALP: untargeted L-inf PGD (:func:`advbook.attacks.pgd`) with a random start, generated in
    eval mode as ``pgd_at`` does (the reference code attacks with the model in eval mode too; on
    ImageNet it uses least-likely-class targeted PGD, untargeted PGD being Madry et al.'s CIFAR
    setting). The clean and adversarial halves then pass through the model as one batch, as in the
    reference code, so batch norm normalises them together. Returns the clean half's logits."""
    at = cfg.hyper
    with in_eval_mode(model):
        x_adv = pgd(model, x, y, norm=at.norm, eps=at.eps, step_size=at.step_size, steps=at.steps,
                    random_start=True, stop_on_success=False, seed=ctx.seed).x_adv
    both = torch.cat([x, x_adv]).contiguous(memory_format=torch.channels_last)
    logits_clean, logits_adv = model(both).chunk(2)
    return alp_loss(logits_clean=logits_clean, logits_adv=logits_adv, labels=y, lam=at.lam), logits_clean, None


@dataclasses.dataclass(frozen=True)
class TemperatureConfig:
    """The distillation temperature T; Papernot et al. find T = 100 the most robust on MNIST and CIFAR-10."""
    temperature: float = kw_field("distill_t", 100.0)

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"distill_t must be > 0, got {self.temperature}")


def temperature_ce(logits: torch.Tensor, labels: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """``T * CE(logits / T, labels)``, averaged over the batch: the teacher's loss."""
    return temperature * F.cross_entropy(logits / temperature, labels)


def distillation_loss(*, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """``T * CE(softmax(teacher / T), softmax(student / T))``, averaged over the batch: the
    cross-entropy of the student at T with the teacher's soft labels at T, Papernot et al.'s only
    training signal (no hard labels). Keyword-only: swapping the logits would distil the teacher
    towards the student."""
    soft = F.softmax(teacher_logits.float() / temperature, dim=1)
    return temperature * -(soft * F.log_softmax(student_logits / temperature, dim=1)).sum(1).mean()


def _temperature_standard(model, x, y, cfg, ctx: StepContext):
    logits = model(x)
    return temperature_ce(logits, y, temperature=cfg.hyper.temperature), logits, None


def _distillation(model, x, y, cfg, ctx: StepContext):
    with torch.no_grad():
        teacher_logits = ctx.teacher(x)
    logits = model(x)
    return (distillation_loss(student_logits=logits, teacher_logits=teacher_logits,
                              temperature=cfg.hyper.temperature), logits, None)


OBJECTIVES: dict[str, Objective] = {
    "alp": Objective(_alp, config=ALPConfig),
    "temperature_standard": Objective(_temperature_standard, config=TemperatureConfig),
    "distillation": Objective(_distillation, config=TemperatureConfig, needs_teacher=True),
}


check_registry(OBJECTIVES)
