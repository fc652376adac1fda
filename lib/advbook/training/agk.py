"""Training objectives of the AGK chapter (AGKD-BML, Wang et al. 2021) and its metric-learning baseline.

* ``agkd_bml``: the released AGKD-BML loss (``hongw579/AGKD-BML``, ``main.py`` l.106-152): label-smoothed
  cross-entropy on x1', MART's regulariser, the L1 distance between the student's attention on the
  adversarial images and a naturally trained teacher's on the clean ones, and the angular triplet;
* ``bml``: the same without the attention distillation (the paper's BML ablation);
* ``agkd``: the same without the triplet (the paper's AGKD ablation);
* ``agk_attention`` (``agkd`` and ``agkd_bml`` only) picks the distilled map, :data:`ATTENTION_MAPS`:
  ``"channel"``, the released code's class-irrelevant channel sum (the default), or the AGK-T3
  ablation's (supplement §3, Table 3; no released code): ``"gradcam_orig"``, the student's Grad-CAM of
  the original class on x1' (and of t on x2') against the teacher's of the same class on the clean
  image; ``"gradcam_false"``, the student's Grad-CAM of the class it predicts on x1' (x2') against the
  teacher's of the original class on x1 (t on x2); ``"cam_average"``, the CAM averaged over all
  classes, student on x1', x2' against teacher on x1, x2. All are built from the step's one pass;
* ``sml``: Mao et al. 2019's single-directional metric learning (``columbia/Metric_Learning_Adversarial_
  Robustness``, ``train_update_fast_triplet.py`` with ``config_cifar.json``): cross-entropy on PGD
  examples plus angular triplets with the adversarial example as anchor and the hardest negative.

**The released AGKD-BML batch** (``main.py`` l.111-121). For a batch (x1, y1): t is x1's most
confusing class, the largest clean logit of the student (eval mode) other than y1 (``utils.py``
l.68-72); x1' is targeted PGD from x1 toward t; x2 is a random training image of class t and x2' is
targeted PGD from x2 toward y1. The attacks go in both directions (y1 -> t and t -> y1): that is what
"bi-directional" is in the code, which computes **one** triplet, anchor x1', positive x1, negative x2'
(l.135). ``bml_reverse=True`` adds the reverse triplet (anchor x2', positive x2, negative x1'), as
Mao et al.'s code does with ``Use_B_Bp_A`` (``train_update_fast_triplet.py`` l.321-326); it is off by
default because the AGKD-BML code does not compute it. The student sees [x1', x1, x2'] as one batch in
train mode (l.119-121); the teacher [x1, x2] in eval mode (l.122).

**Where x2 comes from.** The reference draws x2 from the whole training set by class
(``utils.py`` l.95-112, ``i_class_idx``); an objective of this loop sees its batch only. Here x2 is
drawn, uniformly and seeded by ``ctx.seed``, among the images of class t in a *pool*: the batch itself
and, per class, the ``pool_per_class`` most recent (augmented) images of the epoch's earlier batches,
kept in ``ctx.state`` (reset at each epoch, so resumed runs stay bit-identical). On CIFAR-10 with
batches of 128 every class is in the pool from the first batch on; with many classes (Tiny ImageNet's
200) the first batches of an epoch lack some, and t is then the most confusing class among the classes
the pool holds (the reference's t is never restricted). SML's hardest negatives come from the same pool
(its code mines them among 10 x batch clean images drawn afresh, ``mul_num``, l.588-626).

**The student starts from the teacher** in the reference (``--nat_init``, on by default, ``argument.py``
l.20; ``main.py`` l.345-346): ``agkd`` and ``agkd_bml`` set ``Objective.init_from_teacher``, so
:func:`advbook.training.train.build_student` loads the teacher's weights into the student (same
architecture required) and the student's cache key records that start. ``bml`` and ``sml`` have no
teacher and start from the seeded initialisation. From scratch, on tiny data, the AGKD runs are slow and
unstable at large learning rates (MART's boosting term on examples aimed at the most confusing class).

**Units.** The reference scales images to [-1, 1] (``main.py`` l.286): its eps 8/255*2 and step
2/255*2 (l.311-316) are our 8/255 and 2/255 on [0, 1] images. Attacks run in eval mode, as the
reference's (l.44, l.66), so they do not change the batch-norm statistics.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch
import torch.nn.functional as F

from advbook.attacks.core import linf_start, pgd, sign_ascent, without_true
from advbook.models.attention import (cam_average, cam_average_from_map, channel_attention, grad_cam,
                                      grad_cam_from_map)
from advbook.training.agk_baselines import soft_cross_entropy, uniform_smoothing
from advbook.training.framework import Objective, StepContext, check_registry, in_eval_mode, kw_field
from advbook.training.reweight import kl_per_sample

__all__ = ["OBJECTIVES", "ATTENTION_MAPS", "SMLConfig", "BMLConfig", "AGKDConfig", "AGKDBMLConfig", "angular_distance",
           "angular_triplet", "attention_l1", "label_smoothed_ce", "mart_regulariser", "most_confusing",
           "ClassPool"]


# ---------------------------------------------------------------------------------------------------
# Losses (pure functions of tensors)

def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample ``1 - |cos(a, b)|`` over the flattened non-batch dimensions: AGKD-BML's
    ``angular_distance`` (``utils.py`` l.44-53) and Mao et al.'s ``'cos'`` distance (``utils.py``
    l.122-128). The absolute value is both codes' choice (Mao et al.: "both -1 and 1 indicate
    similarity"); the cosine is clipped to [-1, 1] as the AGKD-BML code clips it from above. Norms
    are floored at 1e-12 (the codes divide by them unguarded or add 1e-20 under the root)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return 1 - cos.clamp(-1, 1).abs()


def angular_triplet(*, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                    reg: float) -> torch.Tensor:
    """``mean(max(0, margin + D(a, p) - D(a, n))) + reg * (mean(a^2) + mean(p^2) + mean(n^2))`` with
    ``D`` :func:`angular_distance`: AGKD-BML's ``triplet_loss`` (``utils.py`` l.59-66) and, identical
    in form, Mao et al.'s (``utils.py`` l.150-155, whose ``mean(a*a + p*p + n*n)`` is the same sum of
    means). The norm term keeps the features from growing, the triplet being scale free.
    Keyword-only: the three tensors have the same shape and each plays another role."""
    if margin < 0 or reg < 0:
        raise ValueError(f"margin and reg must be >= 0, got margin={margin}, reg={reg}")
    hinge = (margin + angular_distance(anchor, positive) - angular_distance(anchor, negative)).clamp_min(0)
    norm = sum(v.float().pow(2).mean() for v in (anchor, positive, negative))
    return hinge.mean() + reg * norm


def attention_l1(*, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """``F.l1_loss`` (mean over samples and positions) between two attention maps, as ``main.py``
    l.140-146; the teacher's map is detached (the reference detaches the teacher's features)."""
    if student_map.shape != teacher_map.shape:
        raise ValueError(f"attention maps differ in shape: {tuple(student_map.shape)} and {tuple(teacher_map.shape)}")
    return F.l1_loss(student_map.float(), teacher_map.detach().float())


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, *, smoothing: float) -> torch.Tensor:
    """Cross-entropy with ``1 - s`` on the label and ``s / (C - 1)`` on each other class, averaged over
    the batch: ``softmax_crossentropy_labelsmooth`` (``utils.py`` l.12-23; s = 0.5, ``main.py`` l.320),
    the same smoothing as Feature Scattering's, so both baselines' functions serve
    (:func:`~advbook.training.agk_baselines.uniform_smoothing`, ``soft_cross_entropy``). Not
    ``F.cross_entropy(label_smoothing=s)``, which puts ``s / C`` on every class, the label's too."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    targets = uniform_smoothing(labels, num_classes=logits.shape[1], delta=smoothing)
    return soft_cross_entropy(logits.float(), targets)


def mart_regulariser(*, logits_nat: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor,
                     beta: float) -> torch.Tensor:
    """MART's terms beyond the cross-entropy, as AGKD-BML's ``mart_loss`` (``utils.py`` l.83-93): the
    boosting term ``-log(1.0001 - p'_z)`` on the most probable wrong class z of x', plus ``beta`` times
    ``KL(p(x) || p(x'))`` weighted by ``1 - p_y(x)``, both averaged over the batch. The AGKD-BML code
    replaces MART's cross-entropy on x' by its label-smoothed one, so it is left out here; with it,
    this is :mod:`advbook.training.objectives`' ``mart`` loss (whose KL term adds 1e-12 inside the
    logarithms; :func:`~advbook.training.reweight.kl_per_sample` uses log-softmax instead)."""
    adv_probs = F.softmax(logits_adv.float(), 1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == labels, top2[:, -2], top2[:, -1])
    boost = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    true_probs = F.softmax(logits_nat.float(), 1).gather(1, labels[:, None]).squeeze(1)
    kl = kl_per_sample(logits_p=logits_nat, logits_q=logits_adv)
    return boost + beta * (kl * (1.0000001 - true_probs)).mean()


def most_confusing(logits: torch.Tensor, labels: torch.Tensor, *, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample the class of the largest logit other than the label (``MC_labels``, ``utils.py``
    l.68-72), among the ``allowed`` classes (a bool mask over the classes) if given. Raises if a
    sample has no allowed class besides its label."""
    scores = without_true(logits.float(), labels)
    if allowed is not None:
        scores = scores.masked_fill(~allowed[None, :], float("-inf"))
    if not torch.isfinite(scores.amax(1)).all():
        raise ValueError("the pool holds no image of a class other than some sample's label; "
                         "AGKD-BML needs images of at least two classes")
    return scores.argmax(1)


# ---------------------------------------------------------------------------------------------------
# The pool of recent training images, per class, kept in ctx.state

@dataclasses.dataclass
class ClassPool:
    """Images (detached) and labels: the current batch first, then up to ``per_class`` images per class
    from the epoch's earlier batches. :meth:`of` builds it and stores the next batch's bank in
    ``state[key]``."""
    x: torch.Tensor
    y: torch.Tensor

    @staticmethod
    def of(x: torch.Tensor, y: torch.Tensor, *, state: dict, key: str, per_class: int,
           num_classes: int) -> "ClassPool":
        bank = state.get(key)
        pool = ClassPool(x.detach(), y) if bank is None else ClassPool(torch.cat([x.detach(), bank.x]),
                                                                         torch.cat([y, bank.y]))
        # the next bank: of the old bank and this batch, each class's per_class most recent images
        merged_x = x.detach() if bank is None else torch.cat([bank.x, x.detach()])
        merged_y = y if bank is None else torch.cat([bank.y, y])
        one_hot = F.one_hot(merged_y, num_classes)
        later = one_hot.flip(0).cumsum(0).flip(0) - one_hot   # same-class images after each one
        keep = later.gather(1, merged_y[:, None]).squeeze(1) < per_class
        state[key] = ClassPool(merged_x[keep], merged_y[keep])
        return pool

    def classes(self, num_classes: int) -> torch.Tensor:
        """Bool mask of the classes the pool holds."""
        return torch.zeros(num_classes, dtype=torch.bool, device=self.y.device).index_fill(0, self.y, True)

    def draw(self, classes: torch.Tensor, *, generator: torch.Generator, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """For each entry of ``classes``, the index of a uniformly drawn pool image of that class (not
        the pool index in ``exclude``, where given and where another exists; -1 if none exists)."""
        scores = torch.rand(len(classes), len(self.y), generator=generator, device=self.y.device)
        ok = self.y[None, :] == classes[:, None]
        if exclude is not None:
            others = ok.clone()
            others[torch.arange(len(classes), device=ok.device), exclude] = False
            ok = torch.where(others.any(1, keepdim=True), others, ok)
        scores = scores.masked_fill(~ok, -1.0)
        best = scores.argmax(1)
        return torch.where(ok.any(1), best, torch.full_like(best, -1))


# ---------------------------------------------------------------------------------------------------
# The distilled attention maps (agk_attention): the released code's and the AGK-T3 ablation's
#
# Each function takes the student ``model``, the ``teacher``, the step's one student pass over
# [x1', x1, x2', (x2)] (``fmaps``, ``logits``; n images each), the clean images ``x`` (x1) and
# ``x2``, x1's labels ``y`` and x2's class ``t``, and returns the two pairs the L1 compares:
# ((student on x1', teacher on x1), (student on x2', teacher on x2)). The student's maps carry
# gradients; the teacher's are computed without (eval mode, as ``main.py`` l.122).

Pair = tuple[torch.Tensor, torch.Tensor]


def _channel_maps(*, model, teacher, fmaps, logits, n, x, x2, y, t) -> tuple[Pair, Pair]:
    """The released code's class-irrelevant attention (``main.py`` l.140-146): the channel sum of the
    last feature map, min-max normalised (:func:`~advbook.models.attention.channel_attention`)."""
    with torch.no_grad():
        teacher_maps = teacher.feature_map(torch.cat([x, x2]))
    student, teacher = channel_attention(fmaps[:3 * n]), channel_attention(teacher_maps)
    return (student[:n], teacher[:n]), (student[2 * n:], teacher[n:])


def _gradcam_maps(*, model, teacher, fmaps, logits, n, x, x2, y, t, false_class: bool) -> tuple[Pair, Pair]:
    """Grad-CAM (:func:`~advbook.models.attention.grad_cam`) of one class per image; no released code
    (supplement §3, Table 3), so these are our readings of its two sentences.

    The teacher's map is always of the image's own class: y on x1, t on x2 (x2 is drawn from class t).
    The student's map on x1' is of y (``false_class=False``, "GC-orig") or of the class the student
    predicts on x1' (``false_class=True``, "GC-false", the supplement's "false class (actual prediction
    on AE)"): the detached argmax of this step's x1' logits, the ones the loss and the training
    accuracy read (train mode), which is y where the attack failed. GC-false thus pulls the map of the
    class the attack led to onto where the teacher sees the original object (the supplement's point 2).
    Likewise on x2': t, or the student's prediction.

    No second pass through the body: the student's map is built from ``fmaps`` of the step's one pass
    (:func:`~advbook.models.attention.grad_cam_from_map` runs only the tail after the map, which is
    per image, so each image gets its own gradient although the pass normalised the whole batch),
    with ``create_graph=True``: the L1 reaches the body through the map and the head through the
    Grad-CAM weights (a double backward). The batch-norm statistics are updated once per step, as
    with the channel map."""
    adv = torch.cat([fmaps[:n], fmaps[2 * n:3 * n]])
    if false_class:
        student_classes = torch.cat([logits[:n], logits[2 * n:3 * n]]).detach().argmax(1)
    else:
        student_classes = torch.cat([y, t])
    student = grad_cam_from_map(model, adv, student_classes, create_graph=True)
    teacher_maps = grad_cam(teacher, torch.cat([x, x2]), torch.cat([y, t]))   # detached
    return (student[:n], teacher_maps[:n]), (student[n:], teacher_maps[n:])


def _cam_average_maps(*, model, teacher, fmaps, logits, n, x, x2, y, t) -> tuple[Pair, Pair]:
    """CAM averaged over all classes (Zhou et al. 2016; the supplement's "CAM-avg", no released code):
    :func:`~advbook.models.attention.cam_average` of the student on x1', x2' and of the teacher on x1,
    x2. The student's is built from ``fmaps`` of the step's one pass
    (:func:`~advbook.models.attention.cam_average_from_map`: the read-out's mean weight times the
    map, differentiable as it stands), so no second pass and one batch-norm update per step."""
    student = cam_average_from_map(model, torch.cat([fmaps[:n], fmaps[2 * n:3 * n]]))
    with torch.no_grad():
        teacher_maps = cam_average(teacher, torch.cat([x, x2]))
    return (student[:n], teacher_maps[:n]), (student[n:], teacher_maps[n:])


ATTENTION_MAPS: dict[str, Callable[..., tuple[Pair, Pair]]] = {
    "channel": _channel_maps,
    "gradcam_orig": functools.partial(_gradcam_maps, false_class=False),
    "gradcam_false": functools.partial(_gradcam_maps, false_class=True),
    "cam_average": _cam_average_maps,
}


# ---------------------------------------------------------------------------------------------------
# Configurations

def _int_at_least(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _at_checks(cfg) -> None:
    if not cfg.eps > 0 or not cfg.step_size > 0:
        raise ValueError(f"at_eps and at_step_size must be > 0, got {cfg.eps}, {cfg.step_size}")
    _int_at_least("at_steps", cfg.steps, 1)
    _int_at_least("pool_per_class", cfg.pool_per_class, 0)


def _nonnegative(cfg, *names: str) -> None:
    """``ValueError`` naming the first of the fields ``names`` that is negative, by its keyword."""
    keyword = {f.name: f.metadata["keyword"] for f in dataclasses.fields(cfg)}
    for name in names:
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{keyword[name]} must be >= 0, got {getattr(cfg, name)}")


def _boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SMLConfig:
    """Mao et al.'s CIFAR-10 settings (``config_cifar.json``): PGD of 7 steps of 2/255 within 8/255
    from a random start (``epsilon``, ``num_steps``, ``step_size``: 8, 7, 2 on [0, 255]); triplet
    margin 0.03 (``margin_list``), weight 2 (``lamda_triplet``), norm weight 1e-3
    (``regularize_lambda``); the clean positive gets uniform noise of 8/255 (``nat_noise_level``,
    ``add_noise_to_X``, l.649-651). ``pool_per_class``: how many images per class the pool keeps from
    the epoch's earlier batches (see the module docstring; ours, not the reference's)."""
    norm: str = kw_field("at_norm", "linf", init=False)
    eps: float = kw_field("at_eps", 8 / 255)
    step_size: float = kw_field("at_step_size", 2 / 255)
    steps: int = kw_field("at_steps", 7)
    margin: float = kw_field("sml_margin", 0.03)
    lam: float = kw_field("sml_lambda", 2.0)
    reg: float = kw_field("sml_reg", 1e-3)
    noise: float = kw_field("sml_noise", 8 / 255)
    pool_per_class: int = kw_field("pool_per_class", 8)

    def __post_init__(self):
        _at_checks(self)
        _nonnegative(self, "margin", "lam", "reg", "noise")


@dataclasses.dataclass(frozen=True)
class _AGKSettings:
    """The released AGKD-BML settings every variant shares (``main.py`` l.307-322, ``argument.py``
    l.17): both attacks 10 steps of 2/255 within 8/255 from a random start, label smoothing 0.5, MART
    with beta 6 (``--mart`` on by default; ``agk_mart=False`` is the main paper's 2-step model without
    it). ``pool_per_class`` as in :class:`SMLConfig`: where x2 is drawn from. Not an objective's
    configuration itself: :class:`AGKDConfig` adds the attention, :class:`BMLConfig` the triplet."""
    norm: str = kw_field("at_norm", "linf", init=False)
    eps: float = kw_field("at_eps", 8 / 255)
    step_size: float = kw_field("at_step_size", 2 / 255)
    steps: int = kw_field("at_steps", 10)
    smoothing: float = kw_field("agk_smoothing", 0.5)
    mart: bool = kw_field("agk_mart", True)
    beta: float = kw_field("mart_beta", 6.0)
    pool_per_class: int = kw_field("pool_per_class", 8)

    def __post_init__(self):
        _at_checks(self)
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"agk_smoothing must be in [0, 1), got {self.smoothing}")
        _boolean("agk_mart", self.mart)
        _nonnegative(self, "beta")


@dataclasses.dataclass(frozen=True)
class AGKDConfig(_AGKSettings):
    """The shared settings and the distilled attention map, ``agk_attention``, a key of
    :data:`ATTENTION_MAPS`: ``"channel"`` (the released code's, the default) or one of the AGK-T3
    ablation's (supplement Table 3). The setting exists only where attention is distilled (``agkd``,
    ``agkd_bml``); it enters the cache key only when it is not ``"channel"``, so the keys of the
    models trained before it existed stay valid (``kw_field(keyed_when_set=True)``)."""
    attention: str = kw_field("agk_attention", "channel", keyed_when_set=True)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.attention, str) or self.attention not in ATTENTION_MAPS:
            raise ValueError(f"unknown agk_attention {self.attention!r}; valid: {', '.join(ATTENTION_MAPS)}")


@dataclasses.dataclass(frozen=True)
class BMLConfig(_AGKSettings):
    """The shared settings and the triplet's: margin 0.03 (``margin_A_Ap_B``), weight 2 (``lam1``),
    norm weight 1e-3 (``lam2``); ``bml_reverse`` adds the reverse triplet (see the module
    docstring). No attention setting: BML distils none."""
    margin: float = kw_field("bml_margin", 0.03)
    lam: float = kw_field("bml_lambda", 2.0)
    reg: float = kw_field("bml_reg", 1e-3)
    reverse: bool = kw_field("bml_reverse", False)

    def __post_init__(self):
        super().__post_init__()
        _nonnegative(self, "margin", "lam", "reg")
        _boolean("bml_reverse", self.reverse)


@dataclasses.dataclass(frozen=True)
class AGKDBMLConfig(BMLConfig, AGKDConfig):
    """The full released loss: the shared settings, the attention (:class:`AGKDConfig`) and the
    triplet (:class:`BMLConfig`); each parent's ``__post_init__`` checks its own fields."""


# ---------------------------------------------------------------------------------------------------
# Objectives

def _parts(model, x):
    """Feature map, penultimate features and logits from one pass through ``model``."""
    fmap = model.feature_map(x)
    features = model.features_from_map(fmap)
    return fmap, features, model.head(features)


def _targeted(model, x, target, *, cfg, generator):
    """Targeted L-inf PGD: descent on the cross-entropy toward ``target`` (``perturb_PGD(targeted=True)``
    and ``targeted_MC``, ``main.py`` l.40-77): a uniform start in the ball, then sign steps, each
    projected on the ball and on [0, 1]. The reference's start is not clipped to the image range
    until the first step; ours is (:func:`~advbook.attacks.core.linf_start`)."""
    start = linf_start(x, eps=cfg.eps, generator=generator)
    return sign_ascent(model, x, x_start=start, eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps,
                       objective=lambda logits: -F.cross_entropy(logits.float(), target, reduction="sum"))


def _agk(model, x, y, cfg, ctx: StepContext, *, attention: bool, triplet: bool):
    """One AGKD-BML step (``main.py`` l.106-152), with the attention terms and the triplet switched by
    the objective; the attention map is ``hyper.attention``'s of :data:`ATTENTION_MAPS`. Returns the
    x1' logits, those the reference's training accuracy reads (l.155)."""
    hyper = cfg.hyper
    g = torch.Generator(device=x.device).manual_seed(ctx.seed)
    with in_eval_mode(model):
        with torch.no_grad():
            logits_nat = model(x)
        num_classes = logits_nat.shape[1]
        pool = ClassPool.of(x, y, state=ctx.state, key="agk_pool", per_class=hyper.pool_per_class,
                            num_classes=num_classes)
        t = most_confusing(logits_nat, y, allowed=pool.classes(num_classes))
        x1_adv = _targeted(model, x, t, cfg=hyper, generator=g)
        x2 = pool.x[pool.draw(t, generator=g)]
        x2_adv = _targeted(model, x2, y, cfg=hyper, generator=g)
    n = len(x)
    inputs = [x1_adv, x, x2_adv] + ([x2] if triplet and hyper.reverse else [])  # x2 only for the reverse triplet
    fmaps, feats, logits = _parts(model, torch.cat(inputs).contiguous(memory_format=torch.channels_last))
    logits_adv, logits_clean = logits[:n], logits[n:2 * n]
    loss = label_smoothed_ce(logits_adv, y, smoothing=hyper.smoothing)
    if hyper.mart:
        loss = loss + mart_regulariser(logits_nat=logits_clean, logits_adv=logits_adv, labels=y, beta=hyper.beta)
    if attention:
        first, second = ATTENTION_MAPS[hyper.attention](model=model, teacher=ctx.teacher, fmaps=fmaps, logits=logits,
                                                        n=n, x=x, x2=x2, y=y, t=t)
        loss = loss + attention_l1(student_map=first[0], teacher_map=first[1])
        loss = loss + attention_l1(student_map=second[0], teacher_map=second[1])
    if triplet:
        f1_adv, f1, f2_adv = feats[:n], feats[n:2 * n], feats[2 * n:3 * n]
        trip = angular_triplet(anchor=f1_adv, positive=f1, negative=f2_adv, margin=hyper.margin, reg=hyper.reg)
        if hyper.reverse:
            f2 = feats[3 * n:]
            trip = trip + angular_triplet(anchor=f2_adv, positive=f2, negative=f1_adv, margin=hyper.margin,
                                          reg=hyper.reg)
        loss = loss + hyper.lam * trip
    return loss, logits_adv, None


def _agkd_bml(model, x, y, cfg, ctx):
    return _agk(model, x, y, cfg, ctx, attention=True, triplet=True)


def _bml(model, x, y, cfg, ctx):
    return _agk(model, x, y, cfg, ctx, attention=False, triplet=True)


def _agkd(model, x, y, cfg, ctx):
    return _agk(model, x, y, cfg, ctx, attention=True, triplet=False)


def _sml(model, x, y, cfg, ctx: StepContext):
    """Mao et al.'s step (``train_update_fast_triplet.py`` l.586-679 and l.366-393 with the CIFAR
    config): A' = untargeted PGD from a random start (eval mode; ``pgd_attack_GPU.py``); B, the
    hardest negative, is the pool image of another class whose eval-mode features have the largest
    cosine with A''s (``compute_vector_dist_toall_except_own``, ``utils.py`` l.384-414: that code
    zeroes the same-class scores instead of excluding them, which differs only when every cosine is
    negative); A1 is another pool image of A's class (``get_next_data_basedon_class``; A itself if the
    pool has none); the clean positive A gets uniform noise of ``sml_noise`` and is rounded to the
    8-bit grid (l.649-651). Loss: ``CE(f(A'), y) + lam * (T(A', A, B) + T(A', A1, B))``
    (``train_flag_adv_only``: no clean cross-entropy; ``Use_A_Ap_B``, ``Use_A1_Ap_B`` with one A1),
    T the angular triplet on the penultimate features (``triplet_loss_layers: ["x4"]``). The
    reference passes A, A', A1 and B through the network separately; here they are one batch in
    train mode, as in AGKD-BML and ALP."""
    hyper = cfg.hyper
    # pgd's random start draws from a generator seeded with ctx.seed: the pool draw and the noise get
    # another stream, so that they are not the start's numbers again
    g = torch.Generator(device=x.device).manual_seed(ctx.seed + 1)
    with in_eval_mode(model):
        x_adv = pgd(model, x, y, norm=hyper.norm, eps=hyper.eps, step_size=hyper.step_size, steps=hyper.steps,
                    random_start=True, stop_on_success=False, seed=ctx.seed).x_adv
        with torch.no_grad():
            adv_feats = model.features(x_adv)
            num_classes = model.head.out_features
            pool = ClassPool.of(x, y, state=ctx.state, key="sml_pool", per_class=hyper.pool_per_class,
                                num_classes=num_classes)
            pool_feats = model.features(pool.x)
    n = len(x)
    cos = F.normalize(adv_feats.float(), dim=1) @ F.normalize(pool_feats.float(), dim=1).T
    cos = cos.masked_fill(pool.y[None, :] == y[:, None], float("-inf"))
    if not torch.isfinite(cos.amax(1)).all():
        raise ValueError("the pool holds no image of a class other than some sample's label; "
                         "SML needs images of at least two classes")
    negative = pool.x[cos.argmax(1)]
    a1 = pool.draw(y, generator=g, exclude=torch.arange(n, device=x.device))  # the batch comes first
    noise = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * hyper.noise
    x_noisy = ((x + noise) * 255).round().clamp(0, 255) / 255
    both = torch.cat([x_adv, x_noisy, pool.x[a1], negative]).contiguous(memory_format=torch.channels_last)
    feats = model.features(both)
    f_adv, f_nat, f_a1, f_neg = feats.split(n)
    logits_adv = model.head(f_adv)
    trip = (angular_triplet(anchor=f_adv, positive=f_nat, negative=f_neg, margin=hyper.margin, reg=hyper.reg)
            + angular_triplet(anchor=f_adv, positive=f_a1, negative=f_neg, margin=hyper.margin, reg=hyper.reg))
    return F.cross_entropy(logits_adv, y) + hyper.lam * trip, logits_adv, None


OBJECTIVES: dict[str, Objective] = {
    "sml": Objective(_sml, config=SMLConfig),
    "bml": Objective(_bml, config=BMLConfig),
    "agkd": Objective(_agkd, config=AGKDConfig, needs_teacher=True, init_from_teacher=True),
    "agkd_bml": Objective(_agkd_bml, config=AGKDBMLConfig, needs_teacher=True, init_from_teacher=True),
}


check_registry(OBJECTIVES)
