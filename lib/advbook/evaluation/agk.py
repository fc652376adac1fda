"""The AGK chapter's experiments (AGKD-BML, Wang et al. 2021, and its supplement): the naturally
trained teacher, the methods compared with AGKD-BML, and their evaluation under the attacks of the
supplement's Table 1 (AGK-T1).

A *method* is a key of :data:`METHODS`; each maps a page's parameters ``P`` to the configuration that
the project's one training loop (:func:`advbook.training.train.train_model`) runs, so every model is
cached, resumable and keyed by everything that decides its weights:

==================  ===================================================================================
``um``              undefended: natural training (objective ``standard``); also the teacher
``at``              PGD adversarial training (Madry et al.; ``pgd_at``)
``alp``             adversarial logit pairing (Kannan et al.; ``alp``)
``sml``             single-directional metric learning (Mao et al. 2019; ``sml``)
``bml``             AGKD-BML without the attention distillation (the paper's BML ablation)
``agkd``            AGKD-BML without the triplet (the paper's AGKD ablation); starts from the teacher
``agkd_bml``        the released AGKD-BML loss; starts from the teacher (``--nat_init``)
``agkd_gc_orig``    ``agkd`` distilling Grad-CAM of the original class (AGK-T3's "GC-orig")
``agkd_gc_false``   ``agkd`` distilling Grad-CAM of the false (predicted) class (AGK-T3's "GC-false")
``agkd_cam_avg``    ``agkd`` distilling the class-averaged CAM (AGK-T3's "CAM-avg", Zhou et al. 2016)
``bilateral``       Bilateral AT (Wang & Zhang 2019), one-step targeted attack
``feature_scatter`` Feature Scattering (Zhang & Wang 2019), one Sinkhorn-cost step
``cat_ce``          CAT (Cheng et al. 2020), per-sample budgets, cross-entropy
``cat_mix``         CAT-MIX: CAT with the C&W hinge added
==================  ===================================================================================

**Which settings come from the page.** Every method gets the page's schedule (``epochs``,
``batch_size``, ``lr``, ``weight_decay``; momentum, warm-up and augmentation stay the loop's
defaults) and trains ``P["model"]`` on the same class-balanced subset (``train_per_class`` per
class, ``seed``). The training attack is shared as the supplement's Table 1 asks ("all attack
budgets in training are eps = 8 ... for an apples to apples comparison"): ``at_eps``, and for the
multi-step methods ``at_step_size`` and ``at_steps``. The one-step methods (Bilateral AT, Feature
Scattering) keep their own single step, whose size is the budget (``at_step_size = at_eps``,
``at_steps = 1``), as their references (Bilateral AT's ``train.sh``, Feature Scattering's
``fs_main.py`` l.192-198: budget and step 8/255, one step) and their configurations in
:mod:`advbook.training.agk_baselines` do: the page's ``at_steps`` would turn them into other methods
(the supplement's time-matched variants of AGK-T4, 4 and 2 steps, are ``method_config(...).replace(
at_steps=...)``). CAT has no fixed budget (per-sample, grown up to ``cat_eps_max``), so it takes
the step size and steps only. Every other setting of a method's objective (``mart_beta``,
``bml_lambda``, ``alp_lambda``, ``pool_per_class``, ...) is taken from ``P`` where ``P`` has its
keyword, else the objective's default: a keyword means the same setting in every objective that has
it (:mod:`advbook.training.framework`). A method's *fixed* keywords are part of what the method is
and win over ``P``: the three AGK-T3 variants are ``agkd`` with ``agk_attention`` fixed to their map
(:data:`advbook.training.agk.ATTENTION_MAPS`), and ``agkd`` and ``agkd_bml`` have it fixed to the
released code's ``"channel"``, so a page's ``agk_attention`` never turns one method into another (a
page picks the map by the method's name).

**The teacher** (:func:`train_teacher`) is naturally trained with the page's schedule on the same
images, with ``teacher_epochs`` and ``teacher_lr`` where ``P`` has them. With neither, its
configuration is ``um``'s, so the teacher *is* the undefended model, cached once; it has the students'
architecture, as the AGKD students start from its weights (:func:`~advbook.training.train.build_student`).

**The evaluation** (:func:`evaluate_methods`) runs the supplement's Table 1 columns through
:func:`advbook.evaluation.evaluate.evaluate` (its ``cw`` is L-inf PGD on the CW margin loss, the
supplement's "CW(n)"; MIM is momentum iterative FGSM), every attack at ``eval_eps``; the step counts
are the table's, the step size (not given by the supplement) ``eval_step_size``, MIM's
``mim_step_size`` where ``P`` has it. Optionally AutoAttack (AGK-T2) and black-box transfer from
surrogate models (AGK-T5).
"""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch

from advbook.data.cifar import Dataset, balanced_subset
from advbook.evaluation.evaluate import evaluate
from advbook.training.train import SCHEDULE, TrainConfig, TrainedModel, train_model

__all__ = ["pick", "METHODS", "NEEDS_TEACHER", "SHARED_SCHEDULE", "SHARED_ATTACK", "ONE_STEP", "T1_EVALUATIONS",
           "method_config", "teacher_config", "train_index", "train_teacher", "train_methods",
           "attacks_for", "evaluate_methods"]

SHARED_SCHEDULE = ("epochs", "batch_size", "lr", "weight_decay")   # the page's, for every method
SHARED_ATTACK = ("at_eps", "at_step_size", "at_steps")             # the page's, where the objective has them
ONE_STEP = ("bilateral", "feature_scatter")                        # their own single step of size at_eps

# method -> (objective, its fixed keywords), the paper's names on the left
_METHOD: dict[str, tuple[str, dict]] = {
    "um": ("standard", {}), "at": ("pgd_at", {}), "alp": ("alp", {}), "sml": ("sml", {}), "bml": ("bml", {}),
    "agkd": ("agkd", {"agk_attention": "channel"}), "agkd_bml": ("agkd_bml", {"agk_attention": "channel"}),
    "bilateral": ("bilateral", {}),
    "feature_scatter": ("feature_scatter", {}), "cat_ce": ("cat_ce", {}), "cat_mix": ("cat_mix", {}),
    # AGK-T3's attention ablation (supplement Table 3)
    "agkd_gc_orig": ("agkd", {"agk_attention": "gradcam_orig"}),
    "agkd_gc_false": ("agkd", {"agk_attention": "gradcam_false"}),
    "agkd_cam_avg": ("agkd", {"agk_attention": "cam_average"}),
}


def _config(method: str) -> Callable[[dict], TrainConfig]:
    objective, fixed = _METHOD[method]

    def build(P: dict) -> TrainConfig:
        own = set(TrainConfig.keywords(objective)) - set(SCHEDULE) - {"objective"}
        kw = {k: P[k] for k in SHARED_SCHEDULE}
        kw |= {k: P[k] for k in sorted(own) if k in P}   # shared attack keys and the method's own
        if method in ONE_STEP:
            kw |= {"at_step_size": P["at_eps"], "at_steps": 1}
        return TrainConfig.build(objective=objective, **(kw | fixed))   # the method's fixed keywords win

    build.__name__ = f"config_{method}"
    return build


METHODS: dict[str, Callable[[dict], TrainConfig]] = {m: _config(m) for m in _METHOD}
NEEDS_TEACHER = ("agkd", "agkd_bml", "agkd_gc_orig", "agkd_gc_false", "agkd_cam_avg")

# AGK-T1's columns (supplement Table 1): evaluation name -> (kind, steps); the names are the ones the
# accuracy rows, the per-image flags and the claims use.
T1_EVALUATIONS: dict[str, tuple[str, int | None]] = {
    "fgsm": ("fgsm", None), "bim:10": ("bim", 10), "pgd:10": ("pgd", 10), "pgd:20": ("pgd", 20),
    "cw:10": ("cw", 10), "cw:20": ("cw", 20), "mim:40": ("mim", 40)}


def method_config(name: str, P: dict) -> TrainConfig:
    """``METHODS[name](P)``; an unknown ``name`` is refused in one line naming the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](P)


def teacher_config(P: dict) -> TrainConfig:
    """Natural training with the page's schedule, ``teacher_epochs`` and ``teacher_lr`` where ``P``
    has them: without them the configuration (and so the cached model) is ``um``'s."""
    over = {k: P[f"teacher_{k}"] for k in ("epochs", "lr") if f"teacher_{k}" in P}
    return TrainConfig.build(objective="standard", **({k: P[k] for k in SHARED_SCHEDULE} | over))


def train_index(P: dict, dataset: Dataset) -> torch.Tensor:
    """The training images of every model of the chapter: ``train_per_class`` per class (``seed``)."""
    return balanced_subset(dataset.train.labels, n_per_class=P["train_per_class"], seed=P["seed"])


def train_teacher(P: dict, *, dataset: Dataset, device) -> TrainedModel:
    """The naturally trained teacher (``P["model"]``, the students' architecture), trained or loaded."""
    return train_model(model_name=P["model"], dataset=dataset, cfg=teacher_config(P), seed=P["seed"],
                       train_index=train_index(P, dataset), device=device)


def train_methods(names, *, P: dict, dataset: Dataset, teacher: TrainedModel | None, device,
                  on_model: Callable[[TrainedModel], None] | None = None) -> dict[str, TrainedModel]:
    """Train (or load) each method of ``names`` on the chapter's images, in order; ``on_model`` is
    called with each model as it is ready; a name given twice is trained once. Unknown names, and a method of :data:`NEEDS_TEACHER`
    without ``teacher``, are refused before any training."""
    configs = {n: method_config(n, P) for n in names}  # every name and config checked before training
    needing = [n for n in configs if n in NEEDS_TEACHER]
    if teacher is None and needing:
        raise ValueError(f"methods {', '.join(needing)} start from and distil a teacher: give teacher=")
    index = train_index(P, dataset)
    out = {}
    for name, cfg in configs.items():
        out[name] = train_model(model_name=P["model"], dataset=dataset, cfg=cfg, seed=P["seed"], train_index=index,
                                device=device, teacher=teacher if name in NEEDS_TEACHER else None)
        if on_model is not None:
            on_model(out[name])
    return out


def pick(models: dict[str, TrainedModel], names) -> dict[str, TrainedModel]:
    """The models of ``names``, in that order (a page's table uses some of the models it trained);
    a name that was not trained is refused, naming those that were."""
    missing = [n for n in names if n not in models]
    if missing:
        raise ValueError(f"no model for {', '.join(missing)}; trained: {', '.join(models)}")
    return {n: models[n] for n in names}


def attacks_for(P: dict, *, autoattack: bool = False, surrogates=()) -> dict[str, dict]:
    """The settings of AGK-T1's evaluations (:data:`T1_EVALUATIONS`) at ``eval_eps``: FGSM one step of
    the budget; BIM, PGD, CW the table's steps of ``eval_step_size`` (PGD and CW from a random start
    seeded by ``seed``, CW's margin 50 being :func:`~advbook.evaluation.evaluate.evaluate`'s); MIM 40
    steps of ``mim_step_size`` (else ``eval_step_size``), decay 1. ``autoattack``: AutoAttack's
    standard version (AGK-T2). ``surrogates``: names of surrogate models, one ``transfer:<name>``
    evaluation each (AGK-T5's black box): L-inf PGD of ``transfer_steps`` steps (else 20, Table 1's
    longest PGD) crafted on that model. With ``aa_version = "custom"`` in ``P``, AutoAttack runs only
    ``aa_parts``, with the standard version's settings (a reduced budget the evaluation labels)."""
    eps, step = P["eval_eps"], P["eval_step_size"]
    out = {}
    for name, (kind, steps) in T1_EVALUATIONS.items():
        if kind == "fgsm":
            out[name] = {"eps": eps}
        elif kind == "bim":
            out[name] = {"eps": eps, "step_size": step, "steps": steps}
        elif kind == "mim":
            out[name] = {"eps": eps, "step_size": P.get("mim_step_size", step), "steps": steps}
        else:  # pgd and cw: random start
            out[name] = {"eps": eps, "step_size": step, "steps": steps, "seed": P["seed"]}
    if autoattack:  # the page's version (aa_version, aa_parts) where it has one, else the standard version
        out["autoattack"] = {"eps": eps, "seed": P["seed"]}
        if P.get("aa_version", "standard") != "standard":
            out["autoattack"] |= {"version": P["aa_version"], "parts": list(P["aa_parts"])}
    for s in surrogates:
        out[f"transfer:{s}"] = {"surrogate": s, "eps": eps, "step_size": step, "steps": P.get("transfer_steps", 20),
                                "seed": P["seed"]}
    return out


def evaluate_methods(models: dict[str, TrainedModel], *, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                     P: dict, surrogates: dict[str, torch.nn.Module] | None = None,
                     autoattack: bool = False, only=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every model on the same test images ``x`` (labels ``y``, positions ``index`` in the test split)
    under ``natural`` and :func:`attacks_for`'s evaluations (``surrogates``: name -> model or
    TrainedModel, each adding a transfer evaluation). Returns the accuracy rows (method, evaluation, accuracy in %, seed, n,
    seconds, ran: what ran, by :func:`~advbook.evaluation.evaluate.display_name`) and the per-image
    flags (seed, index, method, evaluation, robust); each row's accuracy is 100 x the mean of its
    flags. ``only``: the names of :data:`T1_EVALUATIONS` to run (default all of them; AutoAttack and
    the transfers are added as asked). The settings are checked (by ``evaluate``), and ``only``,
    before the first model is attacked."""
    if len(index) != len(x):
        raise ValueError(f"index must give the test position of each of the {len(x)} images, got {len(index)}")
    unknown = [e for e in (only or ()) if e not in T1_EVALUATIONS]
    if unknown:
        raise ValueError(f"unknown evaluation {unknown[0]!r} in only; valid: {', '.join(T1_EVALUATIONS)}")
    surrogates = {k: getattr(m, "model", m) for k, m in (surrogates or {}).items()}   # TrainedModel or module
    attacks = attacks_for(P, autoattack=autoattack, surrogates=tuple(surrogates))
    if only is not None:
        attacks = {k: v for k, v in attacks.items() if k in only or k not in T1_EVALUATIONS}
    rows, flags = [], []
    for name, m in models.items():
        res = evaluate(m.model, x, y, attacks=attacks, batch_size=P.get("eval_batch_size", 500), surrogates=surrogates)
        for evaluation in ("natural", *attacks):
            robust = res.robust[evaluation].to_numpy(bool)
            rows.append({"method": name, "evaluation": evaluation, "accuracy": 100 * robust.mean(), "seed": P["seed"],
                         "n": len(robust), "seconds": res.seconds.get(evaluation, 0.0), "ran": res.ran[evaluation]})
            flags.append(pd.DataFrame({"seed": P["seed"], "index": index.cpu().numpy(), "method": name,
                                       "evaluation": evaluation, "robust": robust}))
    return pd.DataFrame(rows), pd.concat(flags, ignore_index=True)
