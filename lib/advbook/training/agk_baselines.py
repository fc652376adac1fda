"""Baselines of the AGK chapter (AGKD-BML supplement, Tables 1, 4 and 5) that no other chapter has:

* ``bilateral``: Bilateral AT (Wang & Zhang, ICCV 2019): a one-step *targeted* attack from a random
  start toward the most confusing class, and training on adversarial labels (label smoothing whose
  mass on the wrong classes grows with their clean loss);
* ``feature_scatter``: Feature Scattering (Zhang & Wang, NeurIPS 2019): a one-step attack that
  maximises the Sinkhorn optimal-transport cost between the batch's clean and adversarial logits,
  then label-smoothed cross-entropy on the adversarial batch;
* ``cat_ce`` and ``cat_mix``: CAT (Cheng et al. 2020): a per-sample budget that grows at each visit
  and shrinks back when the attack succeeds, capped, with Dirichlet label smoothing weighted by the
  budget; ``cat_mix`` adds a C&W hinge to the loss.

Reference code, read before writing each function (file and line cited there):
``wjyouch/bilateral-adversarial-training`` (``train.py``, ``train.sh``; TensorFlow) for Bilateral AT,
``Haichao-Zhang/FeatureScatter`` (``attack_methods.py``, ``ot.py``, ``utils.py``, ``fs_main.py``) for
Feature Scattering, and ``hirokiadachi/Customized-Adversarial-Training`` (``train.py``), a third-party
PyTorch reimplementation (the CAT authors released none), for CAT.

Conventions shared with the project's other objectives (:mod:`advbook.training.rrm`): inputs stay
in [0, 1] with the normalisation inside the model, so the references' budgets in [-1, 1] units
(``8/255*2``) are our ``8/255``; the attacks run with the model in eval mode (the references do:
``is_train: False`` in Bilateral AT's attack, an ``eval()`` copy in Feature Scattering's); a random
start is clipped to [0, 1] (:func:`~advbook.attacks.core.linf_start`; the two references clip only
after the step); and the L-inf norm of the attacks is fixed and stays in the key as ``at_norm``.
``at_eps``, ``at_step_size`` and ``at_steps`` mean what they mean for PGD-AT.

CAT's per-sample budgets must outlive an epoch: they live in ``ctx.run_state`` (one dict for the
whole run, saved in every epoch's checkpoint and restored on resume by the training loop), keyed by
the sample's position in the training split, ``ctx.index``.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from advbook.attacks.core import linf_start, sign_ascent, without_true
from advbook.training.framework import Objective, StepContext, check_registry, in_eval_mode, kw_field

__all__ = ["OBJECTIVES", "BilateralConfig", "FeatureScatterConfig", "CATConfig", "CATMixConfig", "TARGETS",
           "soft_cross_entropy", "uniform_smoothing", "most_confusing_target", "random_target", "bilateral_labels",
           "bilateral_example", "cosine_cost", "sinkhorn_plan", "transport_cost", "feature_scatter_example",
           "dirichlet_smoothing", "cat_next_eps", "cat_example", "cw_hinge"]


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _steps(value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"at_steps must be an int >= 1, got {value!r}")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i -sum_k targets_ik log softmax(logits)_ik``: the cross-entropy with soft labels that
    the three references train on (FeatureScatter ``utils.py`` ``softCrossEntropy`` l.40-52; Bilateral
    ``train.py`` l.92-93, ``softmax_cross_entropy_with_logits`` then the mean; CAT ``train.py``
    ``Loss_func.xent``, with ``log(softmax)`` where we take the stabler ``log_softmax``)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def uniform_smoothing(y: torch.Tensor, *, num_classes: int, delta: float) -> torch.Tensor:
    """Label smoothing that keeps ``1 - delta`` on the true class and spreads ``delta`` evenly over
    the ``num_classes - 1`` others (FeatureScatter ``utils.py`` ``label_smoothing`` l.27-30:
    ``(1 - delta - delta/(K-1)) * onehot + delta/(K-1)``), in ``float32`` on ``y``'s device."""
    if not 0 <= delta <= 1 or num_classes < 2:
        raise ValueError(f"delta must be in [0, 1] and num_classes >= 2, got delta={delta}, num_classes={num_classes}")
    out = torch.full((len(y), num_classes), delta / (num_classes - 1), device=y.device)
    return out.scatter(1, y[:, None], 1 - delta)


# --- Bilateral AT ------------------------------------------------------------------------------------

def most_confusing_target(logits: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """The wrong class with the largest clean logit ("MC", ``train.py`` l.148-150: the true logit set to
    -1e4, then the argmax), the target of the paper's R-MC-LA models and of ``train.sh``.
    ``generator`` is unused: every target rule takes one."""
    return without_true(logits, y).argmax(1)


def random_target(logits: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """A wrong class drawn uniformly ("RAND", ``train.py`` l.151-156, the README's R-RAND-LA), from
    ``generator`` (on the CPU, so the draw is the same on every device)."""
    k = logits.shape[1]
    shift = torch.randint(1, k, (len(y),), generator=generator).to(y.device)
    return (y + shift) % k


TARGETS = {"mc": most_confusing_target, "random": random_target}


@dataclasses.dataclass(frozen=True)
class BilateralConfig:
    """Bilateral AT's CIFAR-10 settings (``train.sh``): budget 8 and step 8 (in [-1, 1] units, l.140-144
    of ``train.py`` divide by 255 and double: our 8/255), one step (``--num_steps=1``; the supplement's
    time-matched variant uses 4), random start, target ``mc``, ``--multi=9``; ``gamma = 0.01`` is
    ``adv_labels``' fixed default (l.208), in the key but no setting. The reference's weight decay
    (2e-4) and step schedule are the schedule's business, not the objective's."""
    norm: str = kw_field("at_norm", "linf", init=False)
    eps: float = kw_field("at_eps", 8 / 255)
    step_size: float = kw_field("at_step_size", 8 / 255)
    steps: int = kw_field("at_steps", 1)
    target: str = kw_field("bilateral_target", "mc")
    multi: float = kw_field("bilateral_multi", 9.0)
    gamma: float = kw_field("bilateral_gamma", 0.01, init=False)

    def __post_init__(self):
        _positive("at_eps", self.eps)
        _positive("at_step_size", self.step_size)
        _steps(self.steps)
        if self.target not in TARGETS:
            raise ValueError(f"bilateral_target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        _positive("bilateral_multi", self.multi)


def bilateral_labels(probs: torch.Tensor, y: torch.Tensor, *, multi: float, gamma: float = 0.01) -> torch.Tensor:
    """Bilateral AT's adversarial labels (``train.py`` ``adv_labels`` l.208-225), from the clean
    softmax ``probs``. With ``L = -log(p + 1e-8)`` and, over the wrong classes, ``m = min L`` and
    ``M = max L``: a wrong class gets mass proportional to ``L_j - m + gamma`` (the less likely
    the class, the more mass), the wrong classes get ``delta = 1 / (1 + multi (M - m + gamma) / D)``
    in all, where ``D = sum_{j != y} (L_j - m + gamma)``, and the true class keeps ``1 - delta``.
    Uniform ``probs`` give every wrong class ``delta / (K - 1)`` with ``delta = 1 / (1 + multi / (K - 1))``
    (one half at K = 10 and multi = 9). Computed in float64 (the reference's numpy), returned as float32."""
    L = -torch.log(probs.double() + 1e-8)
    true = F.one_hot(y, L.shape[1]).bool()
    wrong = L.masked_fill(true, float("inf"))
    low = wrong.amin(1, keepdim=True)
    high = L.masked_fill(true, float("-inf")).amax(1, keepdim=True)
    mass = (L - low + gamma).masked_fill(true, 0.0)
    denom = mass.sum(1, keepdim=True)
    delta = 1 / (1 + multi * (high - low + gamma) / denom)
    return torch.where(true, 1 - delta, delta / denom * mass).float()


def bilateral_example(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, eps: float,
                      step_size: float, steps: int, seed: int) -> torch.Tensor:
    """The targeted attack of ``train.py`` ``adv_attack`` (l.137-205): a uniform start in the L-inf
    ``eps``-ball (clipped to [0, 1]), then ``steps`` sign steps *down* the summed cross-entropy to
    ``target`` (l.102, ``x - step_size * sign(grad)`` l.199), each projected on the ball and on [0, 1]."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    start = linf_start(x, eps=eps, generator=g)
    return sign_ascent(model, x, x_start=start, eps=eps, step_size=step_size, steps=steps,
                       objective=lambda logits: -F.cross_entropy(logits, target, reduction="sum"))


def _bilateral(model, x, y, cfg, ctx: StepContext):
    """Bilateral AT (``train.py`` l.251-286): the clean logits in eval mode give the target and the
    adversarial labels, the attack runs in eval mode, and the model trains (train mode) on the
    adversarial batch with the adversarial labels (``label_adversary=True``)."""
    h = cfg.hyper
    with in_eval_mode(model):
        with torch.no_grad():
            clean = model(x).float()
        target = TARGETS[h.target](clean, y, generator=torch.Generator().manual_seed(ctx.seed))
        x_adv = bilateral_example(model, x, target, eps=h.eps, step_size=h.step_size, steps=h.steps, seed=ctx.seed)
    labels = bilateral_labels(F.softmax(clean, dim=1), y, multi=h.multi, gamma=h.gamma)
    logits = model(x_adv.contiguous(memory_format=torch.channels_last))
    return soft_cross_entropy(logits, labels), logits, None


# --- Feature Scattering --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeatureScatterConfig:
    """Feature Scattering's CIFAR-10 settings (``fs_main.py`` l.192-198): budget and step 8/255*2 in
    [-1, 1] units (our 8/255), one step (the supplement's time-matched variant uses 2), random start,
    label smoothing 0.5. The Sinkhorn settings are those of ``ot.py`` (l.19-22, l.37-41): entropic
    regularisation 0.01, at most 100 iterations, stop once the dual ``u`` moves by less than 0.1 in
    L1; they are fixed (in the key, no settings)."""
    norm: str = kw_field("at_norm", "linf", init=False)
    eps: float = kw_field("at_eps", 8 / 255)
    step_size: float = kw_field("at_step_size", 8 / 255)
    steps: int = kw_field("at_steps", 1)
    smoothing: float = kw_field("fs_smoothing", 0.5)
    reg: float = kw_field("fs_sinkhorn_reg", 0.01, init=False)
    iters: int = kw_field("fs_sinkhorn_iters", 100, init=False)
    tol: float = kw_field("fs_sinkhorn_tol", 0.1, init=False)

    def __post_init__(self):
        _positive("at_eps", self.eps)
        _positive("at_step_size", self.step_size)
        _steps(self.steps)
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"fs_smoothing must be in [0, 1), got {self.smoothing}")


def cosine_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The (m, n) matrix ``max(0, 1 - cos(a_i, b_j))`` (``ot.py`` ``cost_matrix_cos`` l.115-127,
    ``nn.CosineSimilarity(dim=2, eps=1e-6)``)."""
    return (1 - F.cosine_similarity(a[:, None, :], b[None, :, :], dim=2, eps=1e-6)).clamp_min(0)


def sinkhorn_plan(cost: torch.Tensor, *, reg: float, iters: int, tol: float) -> torch.Tensor:
    """The entropic transport plan between uniform marginals for ``cost`` (m, n), as ``ot.py``'s
    ``sinkhorn`` (l.28-86) computes it, differentiable through its iterations.

    Log-domain Sinkhorn on the duals: ``M = (-C + u_i + v_j) / reg``;
    ``u <- reg (log mu - log(sum_j exp M + 1e-6)) + u``, then the same for ``v`` on the columns;
    stop after ``iters`` iterations or once ``sum |u - u_prev| < tol``; the plan is ``exp(M)``.
    The ``1e-6`` (the reference's guard against log 0) and the stopping rule are kept, as are the
    plain exp-sum (not a max-shifted logsumexp) - so this is the reference's plan, which POT's
    ``sinkhorn_log`` reproduces only when both run to convergence: POT checks the marginals every
    10 iterations, not the dual's change, and has no ``1e-6``. That is why this is our own code and
    the tests compare it with POT at convergence (``ot.sinkhorn2``, torch backend)."""
    if cost.dim() != 2 or min(cost.shape) < 1:
        raise ValueError(f"cost must be an (m, n) matrix, got shape {tuple(cost.shape)}")
    m, n = cost.shape
    log_mu = torch.full((m,), -math.log(m), dtype=cost.dtype, device=cost.device)
    log_nu = torch.full((n,), -math.log(n), dtype=cost.dtype, device=cost.device)
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)

    def scaled(u, v):
        return (-cost + u[:, None] + v[None, :]) / reg

    for _ in range(iters):
        u_prev = u
        u = reg * (log_mu - torch.log(torch.exp(scaled(u, v)).sum(1) + 1e-6)) + u
        v = reg * (log_nu - torch.log(torch.exp(scaled(u, v)).sum(0) + 1e-6)) + v
        if (u - u_prev).abs().sum().item() < tol:
            break
    return torch.exp(scaled(u, v))


def transport_cost(clean: torch.Tensor, adv: torch.Tensor, *, reg: float = 0.01, iters: int = 100,
                   tol: float = 0.1) -> torch.Tensor:
    """Feature Scattering's loss ``sum(T * C)`` (``ot.py`` ``sinkhorn_loss_joint_IPOT`` l.16-25) for the
    cosine cost between the clean and adversarial batches (their logits in the reference,
    ``attack_methods.py`` l.197-199) and its Sinkhorn plan ``T``."""
    cost = cosine_cost(clean, adv)
    return (sinkhorn_plan(cost, reg=reg, iters=iters, tol=tol) * cost).sum()


def feature_scatter_example(model: torch.nn.Module, x: torch.Tensor, *, eps: float, step_size: float, steps: int,
                            seed: int, reg: float = 0.01, iters: int = 100, tol: float = 0.1) -> torch.Tensor:
    """The attack of ``attack_methods.py`` ``Attack_FeaScatter`` (l.147-213): a uniform start in the
    ``eps``-ball (clipped to [0, 1]), then ``steps`` sign steps *up* :func:`transport_cost` between
    the clean batch's logits (fixed, computed once) and the current batch's, each projected on the
    ball and on [0, 1]. Labels play no part: the batch is scattered as a whole."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        clean = model(x).float()
    start = linf_start(x, eps=eps, generator=g)
    return sign_ascent(model, x, x_start=start, eps=eps, step_size=step_size, steps=steps,
                       objective=lambda logits: transport_cost(clean, logits.float(), reg=reg, iters=iters, tol=tol))


def _feature_scatter(model, x, y, cfg, ctx: StepContext):
    """Feature Scattering (``attack_methods.py`` l.204-213): the example from an eval-mode copy, then
    the soft cross-entropy of the model (train mode) on it with labels smoothed by ``fs_smoothing``.
    The reference runs that train-mode forward pass after every attack step and keeps the last; with
    more than one step its earlier passes only move the batch-norm statistics, so we run the last one
    alone (the same for the default single step)."""
    h = cfg.hyper
    with in_eval_mode(model):
        x_adv = feature_scatter_example(model, x, eps=h.eps, step_size=h.step_size, steps=h.steps, seed=ctx.seed,
                                        reg=h.reg, iters=h.iters, tol=h.tol)
    logits = model(x_adv.contiguous(memory_format=torch.channels_last))
    labels = uniform_smoothing(y, num_classes=logits.shape[1], delta=h.smoothing)
    return soft_cross_entropy(logits, labels), logits, None


# --- CAT -----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CATConfig:
    """CAT's settings. The budget schedule (``cat_eta`` 0.0025 per visit, ``cat_eps_max`` 0.035) is the
    chapter's reading of Cheng et al. (the issue's notes: the paper is not at hand here, and the
    reimplementation's defaults are eta 5e-3 and a cap of 8/255); ``cat_c`` 10 scales the budget into
    the smoothing weight (reimplementation ``train.py`` ``--c``), so the cap leaves 0.35 of the mass
    to the Dirichlet draw. The attack is L-inf PGD of ``at_steps`` 10 steps of ``at_step_size`` 2/255
    (``--num_steps``, ``--alpha``) from the clean image."""
    norm: str = kw_field("at_norm", "linf", init=False)
    step_size: float = kw_field("at_step_size", 2 / 255)
    steps: int = kw_field("at_steps", 10)
    eta: float = kw_field("cat_eta", 0.0025)
    eps_max: float = kw_field("cat_eps_max", 0.035)
    c: float = kw_field("cat_c", 10.0)

    def __post_init__(self):
        _positive("at_step_size", self.step_size)
        _steps(self.steps)
        _positive("cat_eta", self.eta)
        _positive("cat_eps_max", self.eps_max)
        if not 0 < self.c * self.eps_max <= 1:
            raise ValueError(f"cat_c * cat_eps_max must be in (0, 1] (the smoothing weight), got "
                             f"{self.c} * {self.eps_max} = {self.c * self.eps_max}")


@dataclasses.dataclass(frozen=True)
class CATMixConfig(CATConfig):
    """CAT-MIX: CAT's settings and the confidence ``cat_kappa`` of its C&W hinge (:func:`cw_hinge`;
    10, the reimplementation's ``--kappa``)."""
    kappa: float = kw_field("cat_kappa", 10.0)

    def __post_init__(self):
        super().__post_init__()
        if not self.kappa >= 0:
            raise ValueError(f"cat_kappa must be >= 0, got {self.kappa}")


def dirichlet_smoothing(y: torch.Tensor, eps: torch.Tensor, *, c: float, num_classes: int,
                        generator: torch.Generator) -> torch.Tensor:
    """CAT's labels ``(1 - c eps_i) onehot(y_i) + c eps_i u_i``, ``u_i ~ Dirichlet(1, ..., 1)``
    (reimplementation ``train.py`` ``label_smoothing``), so ``E[label] = (1 - c eps) onehot + c eps / K``.
    ``u`` is drawn as independent Exp(1) variables divided by their sum (a flat Dirichlet exactly),
    from ``generator`` on the CPU in float64: seeded and the same on every device (the reference's
    ``np.random.dirichlet`` follows the global numpy seed)."""
    e = torch.empty(len(y), num_classes, dtype=torch.float64).exponential_(generator=generator)
    u = (e / e.sum(1, keepdim=True)).to(y.device)
    w = (c * eps.double().to(y.device))[:, None]
    return ((1 - w) * F.one_hot(y, num_classes).double() + w * u).float()


def cat_next_eps(eps: torch.Tensor, *, fooled: torch.Tensor, eta: float, eps_max: float) -> torch.Tensor:
    """A visit's budget update (reimplementation ``train.py`` ``train``): grown by ``eta`` before the
    attack, back by ``eta`` where the attack fooled the model, then capped at ``eps_max``:
    ``min(eps + eta (1 - fooled), eps_max)``. The attack itself runs at ``eps + eta``, which can pass
    the cap by ``eta`` (the reference caps only after it)."""
    return torch.clamp_max(eps + eta * (~fooled).to(eps.dtype), eps_max)


def cw_hinge(logits: torch.Tensor, y: torch.Tensor, *, kappa: float) -> torch.Tensor:
    """Per sample ``max(max_{j != y} z_j - z_y, -kappa)``: the C&W loss (Carlini & Wagner 2017, f6 with
    confidence kappa) that CAT-MIX adds. The reimplementation writes ``max(p_false - p_true, kappa)`` on
    probabilities (``Loss_func.mix``), which with its kappa = 10 is the constant 10 and trains nothing;
    we read it as the C&W hinge on logits it names."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return torch.clamp_min(without_true(logits, y).amax(1) - true, -kappa)


def _cat_loss(logits, labels, y, kappa: float | None) -> torch.Tensor:
    """The summed CE with soft labels, plus the hinge for CAT-MIX (``Loss_func``), per sample."""
    loss = -(labels * F.log_softmax(logits, dim=1)).sum(1)
    return loss if kappa is None else loss + cw_hinge(logits, y, kappa=kappa)


def cat_example(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, *,
                eps: torch.Tensor, step_size: float, steps: int, kappa: float | None = None) -> torch.Tensor:
    """CAT's inner maximisation (``inner_maximization``): ``steps`` sign steps up the summed CAT loss
    (soft labels ``labels``, plus the hinge when ``kappa`` is given) from the clean image, each projected
    on the per-sample ball ``|x_adv - x|_inf <= eps_i`` and on [0, 1]. The reimplementation restarts
    every step from the clean input (``x = inputs.requires_grad_()`` in its loop), so its ten steps are
    one step of 2/255 on an accumulated gradient; we run the PGD the paper describes."""
    radius = eps.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))
    x_adv = x.detach()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_cat_loss(model(x_adv), labels, y, kappa).sum(), x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + step_size * grad.sign(), x - radius), x + radius).clamp(0, 1)
    return x_adv.detach()


def _run_eps(ctx: StepContext) -> torch.Tensor:
    """The run's per-sample budgets (float64, CPU), zeros for samples not yet seen, long enough for the
    batch's positions."""
    need = int(ctx.index.max()) + 1
    eps = ctx.run_state.get("cat_eps", torch.zeros(0, dtype=torch.float64))
    if len(eps) < need:
        eps = torch.cat([eps, torch.zeros(need - len(eps), dtype=torch.float64)])
    ctx.run_state["cat_eps"] = eps
    return eps


def _cat(model, x, y, cfg, ctx: StepContext):
    """One CAT visit (reimplementation ``train.py`` ``train``): labels smoothed with the stored budget,
    the attack at budget + eta in eval mode, the model's (train-mode) prediction on the example decides
    the new budget (:func:`cat_next_eps`), and the loss uses fresh labels smoothed with the new budget.
    Both Dirichlet draws come from ``ctx.seed``. The record is each sample's new budget."""
    h = cfg.hyper
    kappa = getattr(h, "kappa", None)
    eps_all = _run_eps(ctx)
    idx = ctx.index.cpu()
    eps = eps_all[idx]
    g = torch.Generator().manual_seed(ctx.seed)
    k = model.head.out_features
    with in_eval_mode(model):
        attack_labels = dirichlet_smoothing(y, eps, c=h.c, num_classes=k, generator=g)
        x_adv = cat_example(model, x, y, attack_labels, eps=eps + h.eta, step_size=h.step_size, steps=h.steps,
                            kappa=kappa)
    logits = model(x_adv.contiguous(memory_format=torch.channels_last))
    new = cat_next_eps(eps, fooled=(logits.argmax(1) != y).cpu(), eta=h.eta, eps_max=h.eps_max)
    eps_all[idx] = new
    labels = dirichlet_smoothing(y, new, c=h.c, num_classes=k, generator=g)
    return _cat_loss(logits, labels, y, kappa).mean(), logits, {"cat_eps": new.float()}


OBJECTIVES: dict[str, Objective] = {
    "bilateral": Objective(_bilateral, config=BilateralConfig),
    "feature_scatter": Objective(_feature_scatter, config=FeatureScatterConfig),
    "cat_ce": Objective(_cat, config=CATConfig),
    "cat_mix": Objective(_cat, config=CATMixConfig),
}


check_registry(OBJECTIVES)
