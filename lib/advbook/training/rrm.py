"""Training objectives of the RRM chapter (robust representation matching, Vaishnavi et al.).

* ``fgsm_rs``: Fast AT (Wong, Rice & Kolter 2020), FGSM from a uniform random start;
* ``free_at``: Free AT (Shafahi et al. 2019), minibatch replays with a persistent perturbation;
* ``rrm``: the student's cross-entropy, weighted by lambda, plus the cosine distance of its features
  to those of a robust teacher (clean inputs only: no attack during training);
* ``kd_rrm``: the knowledge-distillation baseline of the RRM code, at its temperature.

The textbook distillation loss (Hinton et al.) is :mod:`advbook.training.objectives`' ``kd``
(``kd_tau=30, kd_lambda=0`` is its RRM setting); ``kd_rrm`` is the reference code's variant, which
differs from it by a temperature applied twice and a mean over classes (see :func:`kd_rrm_loss`).

Reference code: github.com/Ethos-lab/robust-representation-matching (``l_inf/train_rrm.py``,
``l_inf/train_free.py``, ``l_inf/train_pgd.py``, ``l_2/train_kdloss.py``). Its schedules (cyclic or
cosine, per optimizer step) are replaced by the project's one-cycle schedule; Free AT's replays are
optimizer steps of that schedule (:func:`advbook.training.train.train_step`).

Registered by :mod:`advbook.training.registry`; the configurations follow
:mod:`advbook.training.objectives` (frozen dataclasses of keyword fields). ``at_eps`` means the same
in every configuration that has it; the L-inf norm of the two attacks is fixed and stays in the key
as ``at_norm``, as for TRADES' training attack.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from advbook.attacks.core import linf_start, sign_ascent
from advbook.training.framework import Objective, StepContext, check_registry, in_eval_mode, kw_field

__all__ = ["OBJECTIVES", "FGSMRSConfig", "FreeATConfig", "RRMConfig", "KDRRMConfig", "fgsm_rs_example",
           "rrm_loss", "kd_rrm_loss"]


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclasses.dataclass(frozen=True)
class FGSMRSConfig:
    """Fast AT's budget and step: ``fgsm_alpha`` times ``at_eps`` (Wong et al. find 1.25 the largest
    step that does not make the training collapse, "catastrophic overfitting", at 8/255)."""
    norm: str = kw_field("at_norm", "linf", init=False)
    eps: float = kw_field("at_eps", 8 / 255)
    alpha: float = kw_field("fgsm_alpha", 1.25)

    def __post_init__(self):
        _positive("at_eps", self.eps)
        _positive("fgsm_alpha", self.alpha)


def fgsm_rs_example(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                    seed: int) -> torch.Tensor:
    """FGSM from a random start: ``x0`` uniform in the L-inf ``eps``-ball (clipped to [0, 1]), one sign
    step of ``alpha * eps`` on the cross-entropy, projected on the ball and on [0, 1].

    This is :func:`advbook.attacks.pgd` with ``steps=1, step_size=alpha * eps, random_start=True,
    stop_on_success=False, seed=seed``, bit for bit (same start, same summed cross-entropy, same step
    and projection; the tests check it), run through :func:`~advbook.attacks.core.sign_ascent` so
    that it costs one forward and one backward pass, as Wong et al.'s: ``pgd`` would add two
    forward passes (its last iterate's flags and the success check), a third more work on a method
    whose point is its cost. Wong et al.'s code (locuslab/fast_adversarial,
    ``CIFAR10/train_fgsm.py`` l.105-119) does the same steps: a uniform start in the ball, ``x +
    delta`` clamped to [0, 1], one sign step of ``alpha`` (10/255 = 1.25 eps), clamped to the ball
    and to [0, 1] again."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    start = linf_start(x, eps=eps, generator=g)
    return sign_ascent(model, x, x_start=start, objective=lambda logits: F.cross_entropy(logits, y, reduction="sum"),
                       eps=eps, step_size=alpha * eps, steps=1)


def _fgsm_rs(model, x, y, cfg, ctx: StepContext):
    """Fast AT: cross-entropy on :func:`fgsm_rs_example`. The example is generated with the model in
    eval mode, as ``pgd_at`` does (one convention for all our training attacks: the attack's forward
    pass does not update the batch-norm statistics); Wong et al.'s code attacks in train mode
    (``model.train()``, l.73, for the whole loop)."""
    with in_eval_mode(model):
        x_adv = fgsm_rs_example(model, x, y, eps=cfg.hyper.eps, alpha=cfg.hyper.alpha, seed=ctx.seed)
    logits = model(x_adv.contiguous(memory_format=torch.channels_last))
    return F.cross_entropy(logits, y), logits, None


@dataclasses.dataclass(frozen=True)
class FreeATConfig:
    """Free AT's budget and its number of minibatch replays m (``free_m``). The reference
    (``l_inf/train_free.py`` l.28-35) trains 12 epochs of m = 8 replays, each an optimizer step, with
    a cyclic learning rate peaking at 0.04; here the project's one-cycle schedule runs over the
    ``epochs * batches * m`` optimizer steps. ``replays`` is the attribute the training loop reads."""
    norm: str = kw_field("at_norm", "linf", init=False)
    eps: float = kw_field("at_eps", 8 / 255)
    replays: int = kw_field("free_m", 8)

    def __post_init__(self):
        _positive("at_eps", self.eps)
        if not isinstance(self.replays, int) or isinstance(self.replays, bool) or self.replays < 1:
            raise ValueError(f"free_m must be an int >= 1, got {self.replays!r}")


def _free_at(model, x, y, cfg, ctx: StepContext):
    """Free AT as ``l_inf/train_free.py`` l.124-140: each replay trains on ``x + delta`` and takes the
    gradient ascent step on ``delta`` from the same backward pass, in train mode throughout (one
    forward-backward serves the attack and the update: that is what makes it "free").

    ``delta`` persists from replay to replay and from batch to batch, in ``ctx.state``: zeros at the
    first call of an epoch, sized to that batch (a smaller last batch uses ``delta[:n]``). Each call
    first applies the previous call's ascent step, ``delta = clamp(delta + eps * sign(grad), -eps,
    eps)`` (l.134-135, step size eps), with the gradient the loop's backward left on the previous
    input's perturbation, then clamps ``delta[:n]`` so that ``x + delta`` lies in [0, 1] (l.136) and
    trains on ``x + delta`` with ``delta`` a leaf that requires a gradient.

    Two deviations. The reference clamps to [0, 1] against the batch just used, so the first replay
    of the next batch may see pixels outside [0, 1]; we clamp against the batch about to be used, as
    every input of this project lies in [0, 1]. The reference keeps ``delta`` across epochs; the loop
    gives each epoch a fresh ``ctx.state``, so a run resumed from an epoch's checkpoint is
    bit-identical to an uninterrupted one (the reference's first batch of an epoch starts from the
    last batch's perturbation, ours from zero, once per epoch). The ascent step of the epoch's last
    replay is never applied: it would only matter to the next epoch."""
    eps, state = cfg.hyper.eps, ctx.state
    delta, previous = state.get("free_delta"), state.get("free_leaf")
    n = len(x)
    if delta is None:
        delta = torch.zeros_like(x)
    elif len(delta) < n:  # only if a later batch is larger than the epoch's first: zeros for the rest
        delta = torch.cat([delta, torch.zeros_like(x[len(delta):])])
    if previous is not None and previous.grad is not None:
        m = len(previous)
        delta[:m] = (delta[:m] + eps * previous.grad.sign()).clamp(-eps, eps)
    delta[:n] = torch.max(torch.min(delta[:n], 1 - x), -x)
    leaf = delta[:n].clone().requires_grad_(True)
    state["free_delta"], state["free_leaf"] = delta, leaf
    logits = model(x + leaf)
    return F.cross_entropy(logits, y), logits, None


@dataclasses.dataclass(frozen=True)
class RRMConfig:
    """RRM's weight of the cross-entropy, lambda: 0.005 in the reference README's L-inf CIFAR-10
    commands (``--xent-weight 0.005``), 5e-5 in its L2 ones (``l_2/README.md``)."""
    lam: float = kw_field("rrm_lambda", 0.005)

    def __post_init__(self):
        if not self.lam >= 0:
            raise ValueError(f"rrm_lambda must be >= 0, got {self.lam}")


def rrm_loss(*, logits: torch.Tensor, labels: torch.Tensor, student_features: torch.Tensor,
             teacher_features: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * CE(logits, labels) + mean(1 - cos(g_S(x), g_T(x)))``, the cosine per sample over the
    feature dimension (``nn.CosineSimilarity(dim=1, eps=1e-6)``, ``l_inf/train_rrm.py`` l.104).

    The reference's loss (l.147-150) is ``xent_weight * CE + feat_weight * mean(cos)`` with
    ``feat_weight = -1``, i.e. ``lam * CE - mean(cos)``: ours adds the constant 1, so the gradients
    are the same and the loss is 0 when the student's features are the teacher's and ``lam = 0``.
    Keyword-only: swapping the two feature tensors would not change the value but would put the
    gradient on the teacher."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    cos = F.cosine_similarity(student_features, teacher_features, dim=1, eps=1e-6)
    return lam * F.cross_entropy(logits, labels) + (1 - cos).mean()


def _rrm(model, x, y, cfg, ctx: StepContext):
    """RRM on the clean (augmented) batch: the teacher, frozen in eval mode (the loop sets it), gives
    its penultimate features without gradients (l.138-140); the student's features and logits come
    from one forward pass (``with_latent=True`` in the reference). The student's features must have
    the teacher's dimension: the loop builds it so (``match_features``)."""
    with torch.no_grad():
        teacher_features = ctx.teacher.features(x).float()
    features = model.features(x)
    logits = model.head(features)
    return (rrm_loss(logits=logits, labels=y, student_features=features, teacher_features=teacher_features,
                     lam=cfg.hyper.lam), logits, None)


@dataclasses.dataclass(frozen=True)
class KDRRMConfig:
    """The temperature of the RRM code's KD baseline (``l_2/train_kdloss.py`` l.52: 30), under the
    keyword of :class:`~advbook.training.objectives.KDConfig`'s temperature, ``kd_tau``."""
    tau: float = kw_field("kd_tau", 30.0)

    def __post_init__(self):
        _positive("kd_tau", self.tau)


def kd_rrm_loss(*, student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """The RRM code's KD loss (``l_2/train_kdloss.py`` l.96-98 with ``alpha = 1``):
    ``T^2 * KLDivLoss()(log_softmax(s / T), softmax(t / T))`` where ``s`` and ``t`` are the outputs
    of models built with ``temperature=T`` (``cifar_models/resnet.py`` l.118 divides the logits by T
    inside the model), so the logits are divided by T twice, and ``KLDivLoss``'s default reduction
    ``"mean"`` averages over the batch *and* the classes.

    Our networks output raw logits, so both divisions happen here; a student trained with this loss
    has logits T times the reference's, with the same argmax and the same attacks' success (an
    attack on its cross-entropy sees a T times sharper softmax). Against the textbook ``kd`` with
    ``kd_lambda=0`` (``T^2 KL`` at temperature T, averaged over the batch only): this is ``kd``
    at temperature T of the logits divided by T, divided by the number of classes. Keyword-only:
    swapping the logits would distil the teacher towards the student."""
    _positive("tau", tau)
    log_p_student = F.log_softmax(student_logits / tau / tau, dim=1)
    p_teacher = F.softmax(teacher_logits.float() / tau / tau, dim=1)
    # KLDivLoss(reduction="mean") is this mean of the element-wise terms, spelt out: torch warns that
    # its "mean" will become "batchmean" (no division by the classes), which would change the loss
    return tau ** 2 * F.kl_div(log_p_student, p_teacher, reduction="none").mean()


def _kd_rrm(model, x, y, cfg, ctx: StepContext):
    with torch.no_grad():
        teacher_logits = ctx.teacher(x)
    logits = model(x)
    return kd_rrm_loss(student_logits=logits, teacher_logits=teacher_logits, tau=cfg.hyper.tau), logits, None


OBJECTIVES: dict[str, Objective] = {
    "fgsm_rs": Objective(_fgsm_rs, config=FGSMRSConfig),
    "free_at": Objective(_free_at, config=FreeATConfig),
    "rrm": Objective(_rrm, config=RRMConfig, needs_teacher=True, match_features=True),
    "kd_rrm": Objective(_kd_rrm, config=KDRRMConfig, needs_teacher=True),
}


check_registry(OBJECTIVES)
