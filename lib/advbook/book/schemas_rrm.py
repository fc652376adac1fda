"""The parameters of the RRM chapter's pages (robust representation matching, Vaishnavi et al. 2022).

Each page's values per profile are in ``profiles.d/rrm.toml``, its claims in ``claims.d/rrm.toml``.
The four pages share the teacher, the students' architecture, training images and schedule, and the
evaluation, so a model trained by one page is loaded from the cache by the others
(:mod:`advbook.evaluation.rrm`).
"""
from __future__ import annotations

from advbook.book.param import COMMON, TRAIN, Param

__all__ = ["SCHEMAS", "BASE"]

_EPS = "L-inf in [0, 1] units, or an L2 radius with threat=l2"

# What every RRM page reads: the teacher, the students and the evaluation.
BASE: dict[str, Param] = {
    "dataset": COMMON["dataset"], "seed": COMMON["seed"], "device": COMMON["device"],
    "teacher_model": Param(str, "the robust teacher's architecture", choices="advbook.models.zoo:MODELS"),
    "teacher_per_class": Param(int, "the teacher's training images per class", 1, 5000),
    "teacher_epochs": Param(int, "the teacher's training epochs", 1, 1000),
    "teacher_lr": Param(float, "the teacher's peak learning rate", 1e-6, 10.0),
    "teacher_at_norm": Param(str, "the teacher's PGD-AT threat model", choices="advbook.attacks.threats:THREATS"),
    "teacher_at_eps": Param(float, f"the teacher's PGD-AT budget ({_EPS})", 1e-6, 100.0),
    "teacher_at_step_size": Param(float, "the teacher's PGD-AT step size", 1e-6, 100.0),
    "teacher_at_steps": Param(int, "the teacher's PGD-AT steps", 1, 100),
    "model": Param(str, "the students' architecture (and SAT's, Fast AT's, Free AT's)",
                   choices="advbook.models.zoo:MODELS"),
    "student_per_class": Param(int, "students' training images per class: the first of the teacher's", 1, 5000),
    "epochs": TRAIN["epochs"], "batch_size": TRAIN["batch_size"], "lr": TRAIN["lr"],
    "weight_decay": TRAIN["weight_decay"],
    "rrm_lambda": Param(float, "RRM's weight lambda of the cross-entropy (reference: 0.005 for L-inf, 5e-5 for L2)",
                        0.0, 1000.0),
    "threat": Param(str, "threat model of the students' training attacks and of the evaluation",
                    choices="advbook.attacks.threats:THREATS"),
    "eval_eps": Param(float, f"APGD-CE budget ({_EPS})", 1e-6, 100.0),
    "apgd_steps": Param(int, "APGD-CE iterations (reference: 50)", 1, 10000),
    "apgd_restarts": Param(int, "APGD-CE restarts (reference: 10)", 1, 100),
    "n_eval": Param(int, "test images evaluated, balanced over classes", 10, 10000),
    "eval_batch_size": Param(int, "images per evaluation batch", 1, 100000),
}

_TIMING = {
    "timing_batches": Param(int, "minibatches timed per method and repeat", 1, 10000),
    "timing_repeats": Param(int, "interleaved timing rounds (the claims' intervals come from them)", 2, 100),
}

_SAT = {
    "at_eps": Param(float, f"training budget of SAT, Fast AT and Free AT ({_EPS})", 1e-6, 100.0),
    "at_step_size": Param(float, "SAT's and PGD Fast AT's step size", 1e-6, 100.0),
    "at_steps": Param(int, "SAT's PGD steps", 1, 100),
    "sat_epochs": Param(int, "SAT's epochs (the reference trains SAT longer than the students)", 1, 1000),
}

SCHEMAS: dict[str, dict[str, Param]] = {}

# RRM-T1, "Adversarial training speedup" (notebooks/16_rrm_speedup.ipynb).
SCHEMAS["rrm_speedup"] = {
    **BASE, **_SAT, **_TIMING,
    "methods": Param(list, "the rows of the table", choices="advbook.evaluation.rrm:METHODS"),
    "fast_steps": Param(int, "PGD steps of the slides' Fast AT (reference: 7)", 1, 100),
    "fast_epochs": Param(int, "epochs of both Fast AT rows", 1, 1000),
    "fast_lr": Param(float, "peak of the Fast AT rows' cyclic learning rate (reference: 0.2)", 1e-6, 10.0),
    "fgsm_alpha": Param(float, "FGSM-RS step as a multiple of at_eps (Wong et al.: 1.25)", 0.01, 10.0),
    "free_m": Param(int, "Free AT's replays of each minibatch (reference: 8)", 1, 100),
    "free_epochs": Param(int, "Free AT's epochs, each replaying every minibatch free_m times", 1, 1000),
}

# RRM-T2, "Adversarial robustness transfer" (notebooks/17_rrm_transfer.ipynb).
SCHEMAS["rrm_transfer"] = {
    **BASE,
    "methods": Param(list, "the rows of the table", choices="advbook.evaluation.rrm:METHODS"),
    "kd_tau": Param(float, "KD's temperature T (reference: 30)", 0.01, 1000.0),
    "rdt_steps": Param(int, "L2 descent steps per robustified image (reference: 1,000)", 1, 100000),
    "rdt_step_size": Param(float, "L2 length of each RDT step (reference: 0.1)", 1e-6, 100.0),
    "rdt_batch_size": Param(int, "images robustified per batch", 1, 100000),
}

# RRM-F3, "Tuning lambda" (notebooks/18_rrm_lambda.ipynb).
SCHEMAS["rrm_lambda"] = {
    **BASE,
    "lambdas": Param(list, "RRM students' lambdas, increasing (a log grid); the claims compare the two ends",
                     0.0, 1000.0, item=float),
}

# RRM-F4, "Limit testing" (notebooks/19_rrm_capacity.ipynb).
SCHEMAS["rrm_capacity"] = {
    **BASE, **_TIMING,
    "students": Param(list, "RRM students' architectures, the weakest (fewest parameters) first",
                      choices="advbook.models.zoo:MODELS"),
}
