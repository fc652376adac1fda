"""The parameters of every section: name, type, range or choices, and a one-line help.

Choices that live next to their implementation (datasets, models, attacks, defenses, ...) are named
here as ``"module:REGISTRY"`` and looked up only when a value is checked, so reading a schema (for
``advbook --help`` or ``advbook params``) imports no training code.

Every value is first checked on its own (type, range, choices; NaN and infinities never pass), then
against the others by the experiment's :data:`RULES` (``f6_criteria`` among ``criteria``,
``n_black <= n_eval``, enough images per class of the dataset, ...), so that a run stops before any
work with one line naming the parameter and what is valid, not minutes later with a traceback.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from advbook.book import schemas_lec   # the LEC chapter's parameters, in their own module
from advbook.book import schemas_rrm   # the RRM chapter's
from advbook.book import schemas_agk   # the AGK chapter's
from advbook.book.param import ATTACK as _ATTACK, COMMON as _COMMON, TRAIN as _TRAIN, Param, ParameterError, parse_value

__all__ = ["Param", "SCHEMAS", "PROFILES", "load_profiles", "parse_value", "ParameterError", "Rule", "RULES",
           "cross_check", "DATASET_SIZES"]

PROFILES = ("smoke", "cpu", "paper", "gpu")   # gpu: so far for the HOL pages only (has_profile)


def load_profiles() -> dict:
    """Every experiment's notebook, title and values per profile (``profiles.toml`` and the chapters'
    ``profiles.d/*.toml``). A profile's table may start from another profile of the same page
    (``from = "paper"``) and list only what it changes: it is returned expanded."""
    from advbook.book import tomls

    table = tomls.load("profiles")
    for name, page in table.items():
        for profile, values in list(page.items()):
            if isinstance(values, dict) and "from" in values:
                base = values["from"]
                if base not in page or not isinstance(page[base], dict) or "from" in page[base]:
                    raise ValueError(f"profile {profile} of {name} starts from {base!r}, which is not a "
                                     f"profile of {name} written out in full")
                page[profile] = {**page[base], **{k: v for k, v in values.items() if k != "from"}}
    return table


def has_profile(experiment: str, profile: str) -> bool:
    """Whether ``experiment`` has values for ``profile`` (every page has smoke, cpu and paper; the
    gpu profile exists for the pages it has been written for)."""
    return isinstance(load_profiles().get(experiment, {}).get(profile), dict)


SCHEMAS: dict[str, dict[str, Param]] = {
    "hol_ddb": {
        **_COMMON, **_TRAIN,
        "n_samples": Param(int, "test images attacked, balanced over classes", 10, 10000),
        "attacks": Param(list, "attacks that estimate DDB and steps", choices="advbook.attacks.core:ATTACKS"),
        "pgd_norm": Param(str, "PGD threat model", choices="advbook.attacks.threats:THREATS"),
        **_ATTACK,
        "eps": Param(float, "PGD budget: L-inf in [0, 1] pixel units; with pgd_norm=l2 an L2 radius, up to 100",
                     1e-6, 100.0),
        "random_start": Param(bool, "PGD starts at a random point of the ball"),
        "ddb_bins": Param(int, "DDB quantile bins for the spread of steps", 2, 100),
    },
    "hol_freq": {
        **_COMMON, **_TRAIN,
        "at_eps": Param(float, "PGD-AT budget (L-inf)", 1e-6, 1.0),
        "at_step_size": Param(float, "PGD-AT step size", 1e-6, 1.0),
        "at_steps": Param(int, "PGD-AT iterations", 1, 100),
        "n_samples": Param(int, "test images evaluated, balanced over classes", 10, 10000),
        "pgd_eps": Param(float, "evaluation PGD budget (L-inf)", 1e-6, 1.0),
        "pgd_step_size": Param(float, "evaluation PGD step size", 1e-6, 1.0),
        "pgd_steps": Param(int, "evaluation PGD iterations", 1, 10000),
        "batch_size_eval": Param(int, "images per forward pass in evaluation", 1, 100000),
        "example_index": Param(int, "test image drawn in HOL-F5", 0, 9999),
    },
    "hol_trust": {
        "dataset": _COMMON["dataset"], "seed": _COMMON["seed"], "device": _COMMON["device"],
        "vgg_model": Param(str, "architecture standing for VGG-11", choices="advbook.models.zoo:MODELS"),
        "n_samples": Param(int, "test images scored, balanced over classes", 20, 10000),
        "calibration_share": Param(float, "share of them that fixes min/max and the clusters", 0.1, 0.9),
        **_ATTACK,
        "ddb_eps": Param(float, "PGD budget for DDB (large: it should not bind)", 1e-6, 1.0),
        "batch_size_eval": Param(int, "images per forward pass for the flipping frequency", 1, 100000),
    },
    "hol_kd": {
        **_COMMON, **{k: v for k, v in _TRAIN.items() if k != "train_per_class"},
        "n_seeds": Param(int, "seeds per student (seed, seed+1, ...): random picks and student weights", 1, 20),
        "pool_per_class": Param(int, "training images per class the teacher scores and selection picks from",
                                1, 5000),
        "budgets": Param(list, "transfer-set sizes, images per class", 1, 5000, item=int),
        "criteria": Param(list, "selection criteria", choices="advbook.analysis.distill:SELECTIONS"),
        "taus": Param(list, "distillation temperatures (Eq. 5)", 0.01, 1000.0, item=float),
        "kd_lambda": Param(float, "weight of the label cross-entropy in Eq. 5", 0.0, 1.0),
        "selection_attack": Param(str, "attack whose DDB ranks the pool", choices="advbook.attacks.core:ATTACKS"),
        **_ATTACK,
        "ddb_eps": Param(float, "PGD budget for DDB (large: it should not bind)", 1e-6, 1.0),
        "n_eval": Param(int, "test images for student accuracy, balanced over classes", 10, 10000),
        "n_flag": Param(int, "test images scored for HOL-F6, balanced over classes", 20, 10000),
        "calibration_share": Param(float, "share of them that fixes min/max and the clusters", 0.1, 0.9),
        "f6_criteria": Param(list, "selection criteria whose students HOL-F6 scores", choices="advbook.analysis.distill:SELECTIONS"),
        "f6_tau": Param(float, "temperature of the students HOL-F6 scores (one of taus)", 0.01, 1000.0),
        "batch_size_eval": Param(int, "images per forward pass for the flipping frequency", 1, 100000),
    },
    "vir_main": {
        **_COMMON, **_TRAIN,
        "n_seeds": Param(int, "seeds per defense (seed, seed+1, ...); tables give mean ± std", 1, 20),
        "defenses": Param(list, "defenses trained and compared", choices="advbook.training.defenses:DEFENSES", exclude=("standard",)),
        "at_eps": Param(float, "training attack budget (L-inf)", 1e-6, 1.0),
        "at_step_size": Param(float, "training attack step size", 1e-6, 1.0),
        "at_steps": Param(int, "training attack iterations", 1, 100),
        "reweight_from": Param(int, "first reweighted epoch (0-based); earlier epochs are the shared burn-in", 0, 1000),
        "trades_beta": Param(float, "TRADES' 1/lambda", 0.0, 100.0),
        "vir_trades_beta": Param(float, "VIR-TRADES' 1/lambda (equal to trades_beta, it forks from TRADES' cached "
                                        "burn-in; another value trains its own burn-in)",
                                 0.0, 100.0),
        "n_eval": Param(int, "test images evaluated, balanced over classes", 10, 10000),
        "eval_eps": Param(float, "evaluation budget (L-inf)", 1e-6, 1.0),
        "pgd_steps": Param(int, "PGD iterations in evaluation (paper: 100)", 1, 10000),
        "pgd_step_size": Param(float, "PGD step size in evaluation (paper: 1/255)", 1e-6, 1.0),
        "cw_steps": Param(int, "iterations of PGD on the CW loss (paper: 20)", 1, 10000),
        "fmn_steps": Param(int, "FMN iterations (paper: 100)", 1, 10000),
        "aa_version": Param(str, "AutoAttack version", choices=("standard", "custom")),
        "aa_parts": Param(list, "AutoAttack's attacks when aa_version=custom",
                          choices=("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")),
        "mde_parts": Param(list, "the MDE ensemble's attacks (paper: all four)", choices="advbook.evaluation.evaluate:MDE_PARTS"),
        "mde_steps": Param(int, "steps of each MD run (reference: 50)", 2, 10000),
        "mde_change_point": Param(int, "MD steps on one margin term before the full margin (reference: 20)", 1, 10000),
        "mde_targets": Param(int, "MD-MT target classes (reference: 9)", 1, 199),
        "eval_batch_size": Param(int, "images per attack batch", 1, 10000),
        "n_black": Param(int, "test images for the black-box attacks (the first of the n_eval subset per class)",
                         10, 10000),
        "square_queries": Param(int, "Square attack queries (paper: 5000)", 1, 100000),
        "spsa_steps": Param(int, "SPSA iterations (paper: 100)", 1, 10000),
        "spsa_samples": Param(int, "SPSA directions per gradient estimate (paper: 256)", 1, 100000),
    },
    "vir_scale": {
        "seed": _COMMON["seed"], "device": _COMMON["device"],
        "tables": Param(list, "tables to regenerate", choices=("T2", "T3", "T4", "T5")),
        "wide_model": Param(str, "architecture of Tables 2 and 5 (paper: wrn34_10); 'none': Table 2 is not run "
                                 "and Table 5 attacks vir_main's models", choices="advbook.models.zoo:MODELS", extra=("none",)),
        "datasets": Param(list, "datasets of Tables 3-4, each run only where it is available",
                          choices=("svhn", "cifar100", "tinyimagenet")),
    },
    "vir_ablation": {
        "seed": _COMMON["seed"], "device": _COMMON["device"],
        "n_seeds": Param(int, "seeds per variant; the training settings are those of vir_main", 1, 20),
        "tables": Param(list, "ablation tables to regenerate", choices=("T6", "T7", "T9", "T10", "T11", "T12")),
        "at_betas": Param(list, "VIR-AT beta values (Table 9)", 0.0, 100.0, item=float),
        "trades_betas": Param(list, "VIR-TRADES beta values (Table 10)", 0.0, 100.0, item=float),
        "at_alphas": Param(list, "VIR-AT alpha values at the default gamma (Table 11)", 0.0, 1000.0, item=float),
        "at_gammas": Param(list, "VIR-AT gamma values at the default alpha (Table 11)", 0.0, 1000.0, item=float),
        "trades_alphas": Param(list, "VIR-TRADES alpha values at the default gamma (Table 12)", 0.0, 1000.0,
                               item=float),
        "trades_gammas": Param(list, "VIR-TRADES gamma values at the default alpha (Table 12)", 0.0, 1000.0,
                               item=float),
    },
    "hol_toy": {
        "seed": _COMMON["seed"], "device": _COMMON["device"],
        "n_train": Param(int, "training points of the two moons", 20, 100000),
        "n_test": Param(int, "test points attacked", 10, 10000),
        "noise": Param(float, "Gaussian noise of the moons", 0.0, 1.0),
        "hidden": Param(int, "hidden units per layer of the MLP", 2, 4096),
        "epochs": Param(int, "full-batch Adam steps", 1, 100000),
        "lr": Param(float, "Adam learning rate", 1e-6, 1.0),
        "pgd_norm": Param(str, "PGD threat model", choices="advbook.attacks.threats:THREATS"),
        "step_size": Param(float, "PGD step size", 1e-6, 1.0),
        "pgd_steps": Param(int, "PGD iterations at most", 1, 10000),
        "rel_tol": Param(float, "relative DDB difference that counts as 'about the same'", 0.0, 1.0),
        "grid_resolution": Param(int, "grid points per side for the exact distance", 20, 2000),
    },
}
SCHEMAS["hol_kd"]["model"] = Param(str, "student architecture (the paper's: mobilenet_v2)", choices="advbook.models.zoo:MODELS")

# What the cross-checks need to know of each dataset without loading it: classes, training and test
# images per class (of the smallest class: SVHN is unbalanced) and test images in all. ``synthetic`` is
# ``data.synthetic()``'s default. A local copy (ADVBOOK_DATA) with fewer images fails when it is read.
DATASET_SIZES: dict[str, tuple[int, int, int, int]] = {  # name: (classes, train/class, test/class, test)
    "cifar10": (10, 5000, 1000, 10000),
    "cifar100": (100, 500, 100, 10000),
    "svhn": (10, 4659, 1595, 26032),
    "tinyimagenet": (200, 500, 50, 10000),
    "synthetic": (10, 20, 10, 100),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """A constraint between parameters, checked once every value is valid on its own: ``holds(p)``
    says whether the values ``p`` agree, ``says(p)`` is the one-line error, naming first the
    parameter to change and then what is valid."""
    holds: Callable[[dict], bool]
    says: Callable[[dict], str]


def _size(p: dict, what: int) -> int:
    return DATASET_SIZES[p["dataset"]][what]


def _at_most(name: str, other: str, why: str) -> Rule:
    return Rule(lambda p: max(p[name]) <= p[other] if isinstance(p[name], list) else p[name] <= p[other],
                lambda p: f"{name}={p[name]!r} must be at most {other}={p[other]!r} ({why})")


def _less(name: str, other: str, why: str) -> Rule:
    return Rule(lambda p: p[name] < p[other], lambda p: f"{name}={p[name]!r} must be less than {other}={p[other]!r} ({why})")


def _among(name: str, other: str, why: str) -> Rule:
    def holds(p):
        values = p[name] if isinstance(p[name], list) else [p[name]]
        return all(any(v == w or isinstance(v, float) and math.isclose(v, w) for w in p[other]) for v in values)
    return Rule(holds, lambda p: f"{name}={p[name]!r} must be {'among' if isinstance(p[name], list) else 'one of'} "
                                 f"{other}={p[other]!r} ({why})")


def _per_class(name: str) -> tuple[Rule, ...]:
    """``name`` test images, balanced over classes (``name // classes`` of each): at least one and at
    most what the dataset's smallest class holds."""
    return (Rule(lambda p: p[name] >= _size(p, 0),
                 lambda p: f"{name}={p[name]!r} must be at least {_size(p, 0)}: {p['dataset']} has {_size(p, 0)} "
                           f"classes and {name} // {_size(p, 0)} images of each are used"),
            Rule(lambda p: p[name] // _size(p, 0) <= _size(p, 2),
                 lambda p: f"{name}={p[name]!r} must be at most {_size(p, 0) * _size(p, 2)}: {p['dataset']} has "
                           f"{_size(p, 2)} test images per class ({name} // {_size(p, 0)} of each are used)"))


def _train_per_class(name: str) -> Rule:
    return Rule(lambda p: p[name] <= _size(p, 1),
                lambda p: f"{name}={p[name]!r} must be at most {_size(p, 1)}: {p['dataset']} has {_size(p, 1)} "
                          f"training images per class")


def _calibration(n: str) -> Rule:
    """The calibration share of the ``n`` images actually used (a multiple of the classes) must leave
    two images for the two clusters and one image to flag."""
    def split(p):
        used = p[n] // _size(p, 0) * _size(p, 0)
        return used, int(p["calibration_share"] * used)
    return Rule(lambda p: split(p)[1] >= 2 and split(p)[0] - split(p)[1] >= 1,
                lambda p: f"calibration_share={p['calibration_share']!r} of {n}={p[n]!r} ({split(p)[0]} images used) "
                          f"must leave at least 2 images to fit the two clusters and 1 to flag")


_LINF_EPS = Rule(lambda p: p["pgd_norm"] != "linf" or p["eps"] <= 1.0,
                 lambda p: f"eps={p['eps']!r} must be at most 1 with pgd_norm=linf (pixel values lie in [0, 1]); "
                           "only an L2 radius (pgd_norm=l2) may exceed 1")
_MDMT = Rule(lambda p: "mdmt" not in p["mde_parts"] or p["mde_targets"] < _size(p, 0),
             lambda p: f"mde_targets={p['mde_targets']!r} must be at most {_size(p, 0) - 1}: {p['dataset']} has "
                       f"{_size(p, 0)} classes and MD-MT targets the others")

# Per experiment: the constraints between its parameters, checked by :func:`cross_check` (``resolve``).
RULES: dict[str, tuple[Rule, ...]] = {
    "hol_ddb": (*_per_class("n_samples"), _train_per_class("train_per_class"), _LINF_EPS),
    "hol_freq": (*_per_class("n_samples"), _train_per_class("train_per_class"),
                 Rule(lambda p: p["example_index"] < _size(p, 3),
                      lambda p: f"example_index={p['example_index']!r} must be less than {_size(p, 3)}: "
                                f"{p['dataset']} has {_size(p, 3)} test images")),
    "hol_trust": (*_per_class("n_samples"), _calibration("n_samples")),
    "hol_kd": (_train_per_class("pool_per_class"),
               _at_most("budgets", "pool_per_class", "each transfer set is picked from the pool"),
               *_per_class("n_eval"), *_per_class("n_flag"), _calibration("n_flag"),
               _among("f6_criteria", "criteria", "HOL-F6 scores students that were trained"),
               _among("f6_tau", "taus", "HOL-F6 scores students that were trained")),
    "vir_main": (_train_per_class("train_per_class"), *_per_class("n_eval"), *_per_class("n_black"),
                 _at_most("n_black", "n_eval", "the black-box images are the first of the evaluated ones"),
                 _less("reweight_from", "epochs", "reweighting starts at that epoch; 0 reweights from the start"),
                 _less("mde_change_point", "mde_steps", "MD switches to the full margin after that step"),
                 _MDMT),
}


def cross_check(experiment: str, params: dict) -> None:
    """Raise a one-line :class:`ParameterError` for the first of ``experiment``'s :data:`RULES` that
    ``params`` (each already valid on its own) break."""
    for rule in RULES.get(experiment, ()):
        if not rule.holds(params):
            raise ParameterError(rule.says(params))


SCHEMAS.update(schemas_lec.SCHEMAS)
SCHEMAS.update(schemas_rrm.SCHEMAS)

# The RRM pages: the students learn from the first of the teacher's images; budgets in [0, 1] under L-inf.
_RRM = (_train_per_class("teacher_per_class"),
        _at_most("student_per_class", "teacher_per_class", "the students learn from images the teacher was trained on"),
        *_per_class("n_eval"),
        Rule(lambda p: p["threat"] != "linf" or p["eval_eps"] <= 1.0,
             lambda p: f"eval_eps={p['eval_eps']!r} must be at most 1 with threat=linf (pixel values lie in [0, 1])"))
RULES.update({"rrm_speedup": _RRM, "rrm_transfer": _RRM, "rrm_capacity": _RRM,
              "rrm_lambda": (*_RRM, Rule(lambda p: len(p["lambdas"]) >= 2 and p["lambdas"] == sorted(p["lambdas"]),
                                         lambda p: f"lambdas={p['lambdas']!r} must be at least two values in "
                                                   "increasing order (the claims compare the two ends)"))})
SCHEMAS.update(schemas_agk.SCHEMAS)

# The AGK pages: one training set for every model; two of a kind where a table compares two.
_AGK = (_train_per_class("train_per_class"), *_per_class("n_eval"),
        Rule(lambda p: p.get("aa_version") != "custom" or len(p["aa_parts"]) > 0,
             lambda p: "aa_parts must name at least one attack with aa_version=custom"))


def _two_increasing(name: str, what: str) -> Rule:
    return Rule(lambda p: len(p[name]) == 2 and p[name][0] < p[name][1],
                lambda p: f"{name}={p[name]!r} must be two values, the smaller first ({what})")


RULES.update({
    "agk_attacks": _AGK,
    "agk_autoattack": (*_AGK, _two_increasing("epoch_points", "the two training lengths"),
                       Rule(lambda p: len(p["models"]) == 2 and p["models"][0] != p["models"][1],
                            lambda p: f"models={p['models']!r} must be two different architectures, the narrower first")),
    "agk_attention": _AGK,
    "agk_cat": _AGK,
    "agk_features": (*_AGK,
                     Rule(lambda p: p["knn_k"] <= p["train_per_class"] * _size(p, 0),
                          lambda p: f"knn_k={p['knn_k']!r} must be at most the k-NN's training set, "
                                    f"train_per_class x classes = {p['train_per_class'] * _size(p, 0)}"),
                     Rule(lambda p: max(p["tsne_classes"]) < _size(p, 0),
                          lambda p: f"tsne_classes={p['tsne_classes']!r} must be class indices below {_size(p, 0)}"),
                     Rule(lambda p: p["tsne_per_class"] <= _size(p, 2),
                          lambda p: f"tsne_per_class={p['tsne_per_class']!r} must be at most {_size(p, 2)}, the "
                                    f"test images per class")),
})
# Pages built from the other pages' artifacts (the claims page, the section map): the profile only.
SCHEMAS["claims"] = {}
SCHEMAS["where"] = {}
