"""Training objectives: one loss per method, plugged into the one loop of :mod:`advbook.training.train`.

An objective is a function ``(model, x, y, cfg, ctx) -> (loss, logits, record)`` registered with
its own frozen configuration class (``Objective(fn, config=VIRConfig, base=...)``), defined next
to it: a :class:`~advbook.training.train.TrainConfig` holds the schedule, the objective's name and
``hyper``, an instance of that class, and the loss reads its hyperparameters from
``cfg.hyper`` (``cfg.hyper.eps``, ``cfg.hyper.beta``). ``record`` is ``None`` or a dict of
per-sample tensors (a reweighting method's weights and their parts), which the loop saves per
epoch for audit. ``ctx`` (:class:`StepContext`) carries what a loss may need besides the batch:
a seed for its randomness, the epoch, the batch's indices into the training split, and a
teacher network for distillation.

Every field of a configuration has a *keyword*, its flat name (``at_eps``, ``vir_beta``): the
name :meth:`TrainConfig.build <advbook.training.train.TrainConfig.build>` takes it by and the
name it has in the cache key. The same keyword in two configurations means the same setting
(``at_eps`` in PGD-AT's and in VIR-AT's). A model's key holds the schedule and its objective's
own fields only, so adding an objective or a field leaves the cached models of the others valid.

A reweighting method names a ``base`` objective: during its burn-in (epochs before its
``reweight_from``) the loop runs the base objective itself, with the base's configuration made
of the same keywords (:func:`advbook.training.registry.base_hyper`), so the first epochs of, say, VIR-AT and PGD-AT are
the same computation and one cached burn-in serves both.

Where a method's paper and its reference code differ, we follow the code (see each function).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from advbook.training import reweight
from advbook.training.framework import (Objective, StepContext, check_registry, hyper_keywords, in_eval_mode,
                                        keywords, kw_field)
from advbook.attacks.core import linf_start, pgd, sign_ascent
from advbook.attacks.threats import THREATS

__all__ = ["StepContext", "Objective", "OBJECTIVES", "kd_loss", "train_attack", "in_eval_mode", "kw_field", "keywords",
           "hyper_keywords", "StandardConfig", "AttackConfig", "PGDATConfig", "KDConfig",
           "TRADESConfig", "MARTConfig", "GAIRATConfig", "MAILConfig", "VIRConfig", "VIRTRADESConfig"]


@dataclasses.dataclass(frozen=True)
class StandardConfig:
    """Cross-entropy on the (augmented) clean images: nothing beyond the schedule."""


def _standard(model, x, y, cfg, ctx: StepContext):
    logits = model(x)
    return F.cross_entropy(logits, y), logits, None


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The training attack of TRADES, MART, GAIRAT, MAIL and VIR (:func:`train_attack`): L-inf PGD
    as their reference codes run it, so the norm is fixed (it stays in the key as ``at_norm``,
    which keeps it the same as PGD-AT's for a shared burn-in, but it is no setting)."""
    norm: str = kw_field("at_norm", "linf", init=False)
    eps: float = kw_field("at_eps", 8 / 255)
    step_size: float = kw_field("at_step_size", 2 / 255)
    steps: int = kw_field("at_steps", 10)


@dataclasses.dataclass(frozen=True)
class PGDATConfig(AttackConfig):
    """PGD-AT (Madry et al.): :func:`advbook.attacks.pgd` in any of its threat models."""
    norm: str = kw_field("at_norm", "linf")

    def __post_init__(self):
        if self.norm not in THREATS:
            raise ValueError(f"at_norm must be one of {', '.join(THREATS)}, got {self.norm!r}")


def _pgd_at(model, x, y, cfg, ctx: StepContext):
    """PGD adversarial training (Madry et al., 2018): cross-entropy on PGD examples with a random
    start. The examples are generated with the model in eval mode (as the TRADES reference code
    does), so the attack's forward passes do not update the batch-norm statistics."""
    with in_eval_mode(model):
        at = cfg.hyper
        x_adv = pgd(model, x, y, norm=at.norm, eps=at.eps, step_size=at.step_size, steps=at.steps,
                    random_start=True, stop_on_success=False, seed=ctx.seed).x_adv
    logits = model(x_adv.contiguous(memory_format=torch.channels_last))
    return F.cross_entropy(logits, y), logits, None


def kd_loss(*, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            tau: float, lam: float) -> torch.Tensor:
    """HOL Eq. 5: ``(1 - lam) * L_kd + lam * L_ce``, averaged over the batch.

    Every argument is keyword-only: the two logits have the same shape, and swapping them would
    silently distil the teacher towards the student.

    ``L_kd`` is the KL divergence from the teacher's to the student's softmax at temperature
    ``tau``, multiplied by ``tau**2`` as in Hinton et al. (2015), so that its gradients keep their
    size when ``tau`` changes; Eq. 5 leaves the scale out, and without it ``tau = 30`` would make
    the distillation term about 900 times weaker than at ``tau = 1``. ``L_ce`` is the
    cross-entropy with the true labels at temperature 1.
    """
    if tau <= 0 or not 0.0 <= lam <= 1.0:
        raise ValueError(f"tau must be > 0 and lam in [0, 1], got tau={tau}, lam={lam}")
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / tau, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1.0 - lam) * tau ** 2 * kl + lam * F.cross_entropy(student_logits, labels)


@dataclasses.dataclass(frozen=True)
class KDConfig:
    """Distillation, HOL Eq. 5 (:func:`kd_loss`)."""
    tau: float = kw_field("kd_tau", 4.0)     # temperature
    lam: float = kw_field("kd_lambda", 0.2)  # weight of the cross-entropy with the labels


def _kd(model, x, y, cfg, ctx: StepContext):
    with torch.no_grad():
        teacher_logits = ctx.teacher(x)
    logits = model(x)
    return (kd_loss(student_logits=logits, teacher_logits=teacher_logits.float(), labels=y, tau=cfg.hyper.tau,
                    lam=cfg.hyper.lam), logits, None)


def train_attack(model, x, y, cfg, ctx: StepContext, *, loss: str = "ce", start: str = "gauss",
                 count: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf PGD as the reference training codes of TRADES, MART, GAIRAT and MAIL run it.

    Model in eval mode; start at ``x + 0.001 N(0, 1)`` (``gauss``: TRADES, MART, MAIL, VIR's
    Algorithm 1) or uniformly in the ball (``uniform``: GAIRAT's Madry setting); sign steps of
    ``cfg.hyper.step_size``, projection on the ``cfg.hyper.eps`` ball and [0, 1]. The ascended loss is
    the cross-entropy (``ce``) or TRADES' ``KL(f(x) || f(x'))`` (``kl``). With ``count``, also
    returns GAIRAT's kappa: the number of iterates (before each step) still classified correctly.
    """
    at = cfg.hyper  # an AttackConfig
    g = torch.Generator(device=x.device).manual_seed(ctx.seed)
    if start == "uniform":
        x_adv = linf_start(x, eps=at.eps, generator=g)
    elif start == "gauss":
        x_adv = x + 0.001 * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    else:
        raise ValueError(f"unknown start {start!r}; valid: gauss, uniform")
    if loss not in ("ce", "kl"):
        raise ValueError(f"unknown loss {loss!r}; valid: ce, kl")
    kappa = torch.zeros(len(x), dtype=torch.long, device=x.device)

    def count_correct(logits):
        kappa.add_((logits.argmax(1) == y).long())

    def objective(logits):
        logits = logits.float()
        return (F.cross_entropy(logits, y, reduction="sum") if loss == "ce"
                else F.kl_div(F.log_softmax(logits, 1), p_nat, reduction="sum"))

    with in_eval_mode(model):
        with torch.no_grad():
            p_nat = F.softmax(model(x).float(), 1) if loss == "kl" else None
        x_adv = sign_ascent(model, x, x_start=x_adv, objective=objective, eps=at.eps,
                            step_size=at.step_size, steps=at.steps, observe=count_correct if count else None)
    x_adv = torch.min(torch.max(x_adv.detach(), x - at.eps), x + at.eps).clamp(0, 1)
    return x_adv.contiguous(memory_format=torch.channels_last), kappa


@torch.no_grad()
def _eval_logits(model, *inputs):
    """Logits in eval mode, without gradients: the values a weight is computed from."""
    with in_eval_mode(model):
        return [model(v).float() for v in inputs]


@dataclasses.dataclass(frozen=True)
class TRADESConfig(AttackConfig):
    beta: float = kw_field("trades_beta", 6.0)  # TRADES' 1/lambda (VIR: 4.0 for ResNet-18)


def _trades(model, x, y, cfg, ctx):
    """TRADES (Zhang et al., 2019), reference ``trades.py``: ``CE(f(x), y) + beta KL(f(x) || f(x'))``,
    the KL summed over classes and averaged over the batch."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="kl")
    logits, logits_adv = model(x), model(x_adv)
    kl = reweight.kl_per_sample(logits_p=logits, logits_q=logits_adv)
    return F.cross_entropy(logits, y) + cfg.hyper.beta * kl.mean(), logits, None


@dataclasses.dataclass(frozen=True)
class MARTConfig(AttackConfig):
    beta: float = kw_field("mart_beta", 5.0)  # weight of the KL term


def _mart(model, x, y, cfg, ctx):
    """MART (Wang et al., 2020), reference ``mart.py``: boosted CE on x' plus
    ``beta * KL(f(x) || f(x')) * (1 - p_y(x))``, averaged over the batch."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="ce")
    logits, logits_adv = model(x), model(x_adv)
    adv_probs = F.softmax(logits_adv.float(), 1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits.float(), 1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = (nat_probs * (torch.log(nat_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(1)
    return loss_adv + cfg.hyper.beta * (kl * (1.0000001 - true_probs)).mean(), logits_adv, None


@dataclasses.dataclass(frozen=True)
class GAIRATConfig(AttackConfig):
    lam: float = kw_field("gair_lambda", -1.0)      # lambda of the tanh weights
    reweight_from: int = kw_field("reweight_from", 0)  # PGD-AT before this epoch (0-based)


def _gairat(model, x, y, cfg, ctx):
    """GAIRAT, reference ``GAIRAT.py``: CE on x' weighted by :func:`reweight.gair_weights`."""
    x_adv, kappa = train_attack(model, x, y, cfg, ctx, loss="ce", start="uniform", count=True)
    logits_adv = model(x_adv)
    w = reweight.gair_weights(kappa, steps=cfg.hyper.steps, lam=cfg.hyper.lam)
    return (F.cross_entropy(logits_adv, y, reduction="none") * w).mean(), logits_adv, {"kappa": kappa, "w": w}


@dataclasses.dataclass(frozen=True)
class MAILConfig(AttackConfig):
    bias: float = kw_field("mail_bias", -0.5)   # MAIL's README, MAIL-AT command (see reweight.py)
    slope: float = kw_field("mail_slope", 10.0)
    reweight_from: int = kw_field("reweight_from", 0)  # PGD-AT before this epoch (0-based)


def _mail_at(model, x, y, cfg, ctx):
    """MAIL-AT, reference ``mail_loss.py`` (method ``at``): CE on x' weighted by :func:`reweight.mail_weights`."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="ce")
    logits_adv = model(x_adv)
    w = reweight.mail_weights(logits_adv.detach(), y, bias=cfg.hyper.bias, slope=cfg.hyper.slope)
    record = {"pm": reweight.probability_margin(logits_adv.detach(), y), "w": w}
    return (F.cross_entropy(logits_adv, y, reduction="none") * w).mean(), logits_adv, record


# Which weight multiplies each sample's loss. "full" is VIR's w = S_v S_d + beta; "sv" and "sd" use one
# factor alone (the ablations of VIR Tables 6-7). The last two are our controls, not the paper's:
# "mean" gives every sample the batch mean of VIR's weights (the same loss scale as VIR, no
# reweighting), "norm" divides VIR's weights by their batch mean (the reweighting without the change
# of scale, as GAIRAT's code normalises its weights). Both are detached values, like w itself.
VIR_USE = {"full": lambda p: p["w"], "sv": lambda p: p["S_v"], "sd": lambda p: p["S_d"],
           "mean": lambda p: p["w"].mean().expand_as(p["w"]).clone(), "norm": lambda p: p["w"] / p["w"].mean()}


@dataclasses.dataclass(frozen=True)
class VIRConfig(AttackConfig):
    """VIR-AT's weights (VIR Eq. 5-7); VIR §5.3 uses alpha, gamma, beta = 7, 10, 0.007."""
    alpha: float = kw_field("vir_alpha", 7.0)
    gamma: float = kw_field("vir_gamma", 10.0)
    beta: float = kw_field("vir_beta", 0.007)
    use: str = kw_field("vir_use", "full")  # see VIR_USE: full, sv, sd (ablations), mean, norm (our controls)
    reweight_from: int = kw_field("reweight_from", 0)  # the base objective before this epoch (0-based)

    def __post_init__(self):
        if self.use not in VIR_USE:
            raise ValueError(f"vir_use must be one of {', '.join(VIR_USE)}, got {self.use!r}")


def _vir_weights(model, x, y, *, x_adv, cfg):
    """VIR's weights (Eq. 5–7) from eval-mode outputs on x and x', and their parts. ``vir_use``
    picks the full weight or one factor alone (the ablations of VIR Tables 6–7)."""
    logits_nat, logits_adv = _eval_logits(model, x, x_adv)
    vir = cfg.hyper
    parts = reweight.vir_parts(logits_nat=logits_nat, logits_adv=logits_adv, y=y, alpha=vir.alpha,
                               gamma=vir.gamma, beta=vir.beta)
    w = VIR_USE[vir.use](parts)
    return w, {**parts, "w": w}  # the record holds the weight actually applied


def _vir_at(model, x, y, cfg, ctx):
    """VIR-AT, Eq. 8 and Algorithm 1: CE on x' weighted by w = S_v S_d + beta."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="ce")
    w, parts = _vir_weights(model, x, y, x_adv=x_adv, cfg=cfg)
    logits_adv = model(x_adv)
    return (F.cross_entropy(logits_adv, y, reduction="none") * w).mean(), logits_adv, parts


@dataclasses.dataclass(frozen=True)
class VIRTRADESConfig(VIRConfig):
    """VIR-TRADES: VIR's weights (§5.3: 8, 3, 1.6) on TRADES' KL term, whose weight is ``trades_beta``."""
    trades_beta: float = kw_field("trades_beta", 6.0)


def _vir_trades(model, x, y, cfg, ctx):
    """VIR-TRADES, Eq. 10: TRADES with each sample's KL term weighted by w."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="kl")
    w, parts = _vir_weights(model, x, y, x_adv=x_adv, cfg=cfg)
    logits, logits_adv = model(x), model(x_adv)
    kl = reweight.kl_per_sample(logits_p=logits, logits_q=logits_adv)
    return F.cross_entropy(logits, y) + cfg.hyper.trades_beta * (w * kl).mean(), logits, parts


# The objectives of the HOL and VIR chapters; :data:`advbook.training.registry.OBJECTIVES` adds the
# other chapters' and is the one the training loop reads.
OBJECTIVES: dict[str, Objective] = {
    "standard": Objective(_standard, config=StandardConfig),
    "pgd_at": Objective(_pgd_at, config=PGDATConfig),
    "kd": Objective(_kd, config=KDConfig, needs_teacher=True),
    "trades": Objective(_trades, config=TRADESConfig),
    "mart": Objective(_mart, config=MARTConfig),
    "gairat": Objective(_gairat, config=GAIRATConfig, base="pgd_at"),
    "mail_at": Objective(_mail_at, config=MAILConfig, base="pgd_at"),
    "vir_at": Objective(_vir_at, config=VIRConfig, base="pgd_at"),
    "vir_trades": Objective(_vir_trades, config=VIRTRADESConfig, base="trades"),
}


check_registry(OBJECTIVES)
