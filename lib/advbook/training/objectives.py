"""Training objectives: one loss per method, plugged into the one loop of :mod:`advbook.training.train`.

An objective is a function ``(model, x, y, cfg, ctx) -> (loss, logits, record)`` together with
the names of the :class:`~advbook.training.train.TrainConfig` fields it reads beyond the common ones.
``record`` is ``None`` or a dict of per-sample tensors (a reweighting method's weights and their
parts), which the loop saves per epoch for audit.
Only those fields enter a model's cache key, so adding a field for a new objective leaves the
cached models of the others valid. ``ctx`` (:class:`StepContext`) carries what a loss may need
besides the batch: a seed for its randomness, the epoch, the batch's indices into the
training split, and a teacher network for distillation.

A reweighting method names a ``base`` objective: during its burn-in (epochs before
``cfg.reweight_from``) the loop runs the base objective itself, so the first epochs of, say,
VIR-AT and PGD-AT are the same computation and one cached burn-in serves both.

Where a method's paper and its reference code differ, we follow the code (see each function).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from advbook.training import reweight
from advbook.attacks.core import linf_start, pgd, sign_ascent

__all__ = ["StepContext", "Objective", "OBJECTIVES", "kd_loss", "train_attack", "in_eval_mode"]


@contextlib.contextmanager
def in_eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode, then give every submodule back the mode it had
    (train or eval), even if the block raises: an objective's attack must not change the mode
    the training loop (or a test) set."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@dataclasses.dataclass(frozen=True)
class StepContext:
    seed: int                               # for the objective's own randomness (attack starts)
    epoch: int                              # 0-based
    index: torch.Tensor                     # the batch's positions in the training split
    teacher: torch.nn.Module | None = None  # eval mode, same device as the batch


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: Callable
    fields: tuple[str, ...] = ()   # TrainConfig fields it reads beyond the common ones
    needs_teacher: bool = False
    base: str | None = None        # objective run during the burn-in (epochs < cfg.reweight_from)


def _standard(model, x, y, cfg, ctx: StepContext):
    logits = model(x)
    return F.cross_entropy(logits, y), logits, None


def _pgd_at(model, x, y, cfg, ctx: StepContext):
    """PGD adversarial training (Madry et al., 2018): cross-entropy on PGD examples with a random
    start. The examples are generated with the model in eval mode (as the TRADES reference code
    does), so the attack's forward passes do not update the batch-norm statistics."""
    with in_eval_mode(model):
        x_adv = pgd(model, x, y, norm=cfg.at_norm, eps=cfg.at_eps, step_size=cfg.at_step_size, steps=cfg.at_steps,
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


def _kd(model, x, y, cfg, ctx: StepContext):
    with torch.no_grad():
        teacher_logits = ctx.teacher(x)
    logits = model(x)
    return (kd_loss(student_logits=logits, teacher_logits=teacher_logits.float(), labels=y, tau=cfg.kd_tau,
                    lam=cfg.kd_lambda), logits, None)


def train_attack(model, x, y, cfg, ctx: StepContext, *, loss: str = "ce", start: str = "gauss",
                 count: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf PGD as the reference training codes of TRADES, MART, GAIRAT and MAIL run it.

    Model in eval mode; start at ``x + 0.001 N(0, 1)`` (``gauss``: TRADES, MART, MAIL, VIR's
    Algorithm 1) or uniformly in the ball (``uniform``: GAIRAT's Madry setting); sign steps of
    ``cfg.at_step_size``, projection on the ``cfg.at_eps`` ball and [0, 1]. The ascended loss is
    the cross-entropy (``ce``) or TRADES' ``KL(f(x) || f(x'))`` (``kl``). With ``count``, also
    returns GAIRAT's kappa: the number of iterates (before each step) still classified correctly.
    """
    g = torch.Generator(device=x.device).manual_seed(ctx.seed)
    if start == "uniform":
        x_adv = linf_start(x, eps=cfg.at_eps, generator=g)
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
        x_adv = sign_ascent(model, x, x_start=x_adv, objective=objective, eps=cfg.at_eps,
                            step_size=cfg.at_step_size, steps=cfg.at_steps, observe=count_correct if count else None)
    x_adv = torch.min(torch.max(x_adv.detach(), x - cfg.at_eps), x + cfg.at_eps).clamp(0, 1)
    return x_adv.contiguous(memory_format=torch.channels_last), kappa


@torch.no_grad()
def _eval_logits(model, *inputs):
    """Logits in eval mode, without gradients: the values a weight is computed from."""
    with in_eval_mode(model):
        return [model(v).float() for v in inputs]


def _trades(model, x, y, cfg, ctx):
    """TRADES (Zhang et al., 2019), reference ``trades.py``: ``CE(f(x), y) + beta KL(f(x) || f(x'))``,
    the KL summed over classes and averaged over the batch."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="kl")
    logits, logits_adv = model(x), model(x_adv)
    kl = reweight.kl_per_sample(logits_p=logits, logits_q=logits_adv)
    return F.cross_entropy(logits, y) + cfg.trades_beta * kl.mean(), logits, None


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
    return loss_adv + cfg.mart_beta * (kl * (1.0000001 - true_probs)).mean(), logits_adv, None


def _gairat(model, x, y, cfg, ctx):
    """GAIRAT, reference ``GAIRAT.py``: CE on x' weighted by :func:`reweight.gair_weights`."""
    x_adv, kappa = train_attack(model, x, y, cfg, ctx, loss="ce", start="uniform", count=True)
    logits_adv = model(x_adv)
    w = reweight.gair_weights(kappa, steps=cfg.at_steps, lam=cfg.gair_lambda)
    return (F.cross_entropy(logits_adv, y, reduction="none") * w).mean(), logits_adv, {"kappa": kappa, "w": w}


def _mail_at(model, x, y, cfg, ctx):
    """MAIL-AT, reference ``mail_loss.py`` (method ``at``): CE on x' weighted by :func:`reweight.mail_weights`."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="ce")
    logits_adv = model(x_adv)
    w = reweight.mail_weights(logits_adv.detach(), y, bias=cfg.mail_bias, slope=cfg.mail_slope)
    record = {"pm": reweight.probability_margin(logits_adv.detach(), y), "w": w}
    return (F.cross_entropy(logits_adv, y, reduction="none") * w).mean(), logits_adv, record


VIR_USE = {"full": lambda p: p["w"], "sv": lambda p: p["S_v"], "sd": lambda p: p["S_d"]}


def _vir_weights(model, x, y, *, x_adv, cfg):
    """VIR's weights (Eq. 5–7) from eval-mode outputs on x and x', and their parts. ``vir_use``
    picks the full weight or one factor alone (the ablations of VIR Tables 6–7)."""
    logits_nat, logits_adv = _eval_logits(model, x, x_adv)
    parts = reweight.vir_parts(logits_nat=logits_nat, logits_adv=logits_adv, y=y, alpha=cfg.vir_alpha,
                               gamma=cfg.vir_gamma, beta=cfg.vir_beta)
    w = VIR_USE[cfg.vir_use](parts)
    return w, {**parts, "w": w}  # the record holds the weight actually applied


def _vir_at(model, x, y, cfg, ctx):
    """VIR-AT, Eq. 8 and Algorithm 1: CE on x' weighted by w = S_v S_d + beta."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="ce")
    w, parts = _vir_weights(model, x, y, x_adv=x_adv, cfg=cfg)
    logits_adv = model(x_adv)
    return (F.cross_entropy(logits_adv, y, reduction="none") * w).mean(), logits_adv, parts


def _vir_trades(model, x, y, cfg, ctx):
    """VIR-TRADES, Eq. 10: TRADES with each sample's KL term weighted by w."""
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="kl")
    w, parts = _vir_weights(model, x, y, x_adv=x_adv, cfg=cfg)
    logits, logits_adv = model(x), model(x_adv)
    kl = reweight.kl_per_sample(logits_p=logits, logits_q=logits_adv)
    return F.cross_entropy(logits, y) + cfg.trades_beta * (w * kl).mean(), logits, parts


_AT = ("at_norm", "at_eps", "at_step_size", "at_steps")
_VIR = ("vir_alpha", "vir_gamma", "vir_beta", "vir_use", "reweight_from")
OBJECTIVES: dict[str, Objective] = {
    "standard": Objective(_standard),
    "pgd_at": Objective(_pgd_at, _AT),
    "kd": Objective(_kd, ("kd_tau", "kd_lambda"), needs_teacher=True),
    "trades": Objective(_trades, _AT + ("trades_beta",)),
    "mart": Objective(_mart, _AT + ("mart_beta",)),
    "gairat": Objective(_gairat, _AT + ("gair_lambda", "reweight_from"), base="pgd_at"),
    "mail_at": Objective(_mail_at, _AT + ("mail_bias", "mail_slope", "reweight_from"), base="pgd_at"),
    "vir_at": Objective(_vir_at, _AT + _VIR, base="pgd_at"),
    "vir_trades": Objective(_vir_trades, _AT + ("trades_beta",) + _VIR, base="trades"),
}
