"""The parameters of the LEC chapter's pages (the lecture on attacks and defenses).

Each page's values per profile are in ``profiles.d/lec.toml``, its claims in ``claims.d/lec.toml``.
"""
from __future__ import annotations

from advbook.book.param import COMMON, TRAIN, Param

__all__ = ["SCHEMAS"]

SCHEMAS: dict[str, dict[str, Param]] = {}

# LEC §12.3, non-L_p white-box and black-box attacks (notebooks/13_lec_beyond.ipynb: LEC-F9, LEC-F10). The
# models are vir_main's standard and PGD-AT models of the same profile (their cache is shared).
SCHEMAS["lec_beyond"] = {
    "seed": COMMON["seed"], "device": COMMON["device"],
    "n_nonlp": Param(int, "test images for the flow and colour attacks, balanced over classes", 10, 10000),
    "flow_tau": Param(float, "stAdv's weight tau of the smoothness loss L_flow", 0.0, 100.0),
    "flow_steps": Param(int, "flow attack optimiser steps", 1, 10000),
    "flow_lr": Param(float, "flow attack step (Adam: pixels per step; L-BFGS: initial step)", 1e-6, 10.0),
    "flow_optimizer": Param(str, "flow attack optimiser", choices="advbook.attacks.flow:OPTIMIZERS"),
    "colour_eps": Param(float, "colour attack budget: L-inf bound of every colour shift, [0, 1] units", 1e-6, 1.0),
    "colour_steps": Param(int, "colour attack PGD steps", 1, 10000),
    "colour_resolution": Param(int, "control points per colour axis of the colour function", 2, 64),
    "n_examples": Param(int, "images drawn in LEC-F9", 1, 6),
    "n_zoo": Param(int, "test images for the zeroth-order gradient estimates (each costs up to 2 x 3072 queries per "
                        "estimator), balanced over classes; below 10, drawn from one per class", 1, 10000),
    "zoo_budgets": Param(list, "queries per image of the gradient estimates (even, increasing; at most 2 x 3072 "
                               "with the coordinate estimator)", 2, 1_000_000, item=int),
    "zoo_h": Param(float, "finite-difference step h (pixel units)", 1e-8, 1.0),
    "zoo_estimators": Param(list, "zeroth-order gradient estimators", choices="advbook.attacks.zoo:ESTIMATORS"),
    "n_hard": Param(int, "test images for the hard-label boundary search, balanced over classes", 10, 10000),
    "hard_directions": Param(int, "random search directions per image (OPT-attack draws 100)", 1, 1000),
    "hard_step": Param(float, "coarse search step along a direction (L2, pixel units)", 1e-4, 100.0),
    "hard_tol": Param(float, "binary search tolerance (L2, pixel units)", 1e-6, 10.0),
    "hard_max_distance": Param(float, "farthest the coarse search looks (L2, pixel units)", 1e-3, 1000.0),
    "n_square": Param(int, "test images for Square, balanced over classes", 10, 10000),
    "square_eps": Param(float, "Square's L-inf budget, [0, 1] units", 1e-6, 1.0),
    "square_budgets": Param(list, "Square's query budgets (iterations) at which accuracy is read, increasing", 1,
                            100_000, item=int),
}

# LEC §12.5, the trade-off (notebooks/15_lec_tradeoff.ipynb: LEC-T1, Raghunathan et al. 2019, Fig. 1): one
# standard and one PGD-AT model per training eps on each of several nested training sets
# (advbook.evaluation.tradeoff).
SCHEMAS["lec_tradeoff"] = {
    **COMMON,
    "sizes": Param(list, "training-set sizes, nested and class-balanced (multiples of the number of classes)",
                   10, 50000, item=int),
    "train_eps": Param(list, "PGD-AT training budgets, L-inf in [0, 1] units (the standard model is always "
                             "trained too)", 1e-6, 1.0, item=float),
    "epochs": Param(int, "epochs on the largest training set; a set of n images trains round(epochs x largest / n) "
                         "epochs, so that every model takes about the same number of gradient steps", 1, 1000),
    **{k: v for k, v in TRAIN.items() if k in ("batch_size", "lr", "weight_decay")},
    "at_steps": Param(int, "PGD-AT attack steps per batch (step 2.5 eps / steps, random start)", 1, 100),
    "eval_eps": Param(list, "L-inf PGD budgets of the clean-vs-robust curve (models of the largest training set)",
                      1e-6, 1.0, item=float),
    "eval_steps": Param(int, "evaluation PGD steps (step 2.5 eps / steps, random start)", 1, 1000),
    "n_clean": Param(int, "test images with clean flags (the paper's gap), balanced over classes", 10, 10000),
    "n_pgd": Param(int, "test images attacked by PGD, balanced over classes (the first of the clean ones)",
                   10, 10000),
    "batch_size_eval": Param(int, "images per evaluation batch", 1, 100000),
}

# LEC §12.4, the lecture's defenses (notebooks/14_lec_defenses.ipynb: LEC-F11): each defense under the plain
# attack it stops and the adaptive one that breaks it (advbook.evaluation.defenses_lec). The standard, PGD-AT
# and TRADES models are vir_main's whenever the training settings equal vir_main's of the profile (the cache
# keys are then the same); ALP and the distillation pair train with the same schedule.
SCHEMAS["lec_defenses"] = {
    **COMMON, **TRAIN,
    "at_eps": Param(float, "training attack budget of PGD-AT, TRADES and ALP (L-inf)", 1e-6, 1.0),
    "at_step_size": Param(float, "training attack step size", 1e-6, 1.0),
    "at_steps": Param(int, "training attack iterations", 1, 100),
    "trades_beta": Param(float, "TRADES' 1/lambda", 0.0, 100.0),
    "alp_lambda": Param(float, "ALP's weight of the logit-pairing term (reference code: 0.5)", 0.0, 100.0),
    "distill_t": Param(float, "defensive distillation's temperature T of teacher and student (paper: 100)",
                       0.01, 1000.0),
    "distill_epochs": Param(int, "training epochs of the distillation teacher and student (their logits must grow T-fold)",
                            1, 1000),
    "purifier_width": Param(int, "channels of the denoiser's three convolutions", 1, 512),
    "purifier_sigma": Param(float, "Gaussian noise the denoiser learns to remove, [0, 1] units", 0.0, 1.0),
    "purifier_steps": Param(int, "denoiser training steps (Adam, 128 training images each)", 1, 100000),
    "resize_out": Param(int, "random resize-and-pad: canvas side (input side 32; sizes drawn in [32, resize_out))",
                        33, 128),
    "noise_sigma": Param(float, "input noise defense: Gaussian standard deviation, [0, 1] units", 0.0, 1.0),
    "quantise_bits": Param(int, "bit-depth reduction: bits per colour channel", 1, 8),
    "denoiser_adaptive": Param(str, "adaptive attack on the denoiser: the full gradient (pgd) or BPDA",
                               choices=("pgd", "bpda")),
    "n_eval": Param(int, "test images evaluated, balanced over classes", 10, 10000),
    "eval_eps": Param(float, "L-inf budget of every attack, [0, 1] units", 1e-6, 1.0),
    "eval_step_size": Param(float, "PGD step size of every attack", 1e-6, 1.0),
    "eval_steps": Param(int, "PGD iterations of every attack (random start, all steps run)", 1, 10000),
    "eot_samples": Param(int, "EOT: draws of the randomised defense averaged per attack step", 1, 1000),
    "eval_batch_size": Param(int, "images per attack batch", 1, 10000),
}

# LEC §12.1, what adversarial examples are (notebooks/11_lec_examples.ipynb: LEC-F1, LEC-F2). The model is
# vir_main's standard model of the same profile (its cache is shared); advbook.evaluation.lec_examples
# runs the attacks.
SCHEMAS["lec_examples"] = {
    "seed": COMMON["seed"], "device": COMMON["device"],
    "n_f1": Param(int, "test images for LEC-F1's four attacks, balanced over classes (a subset of n_images' "
                       "when smaller)", 10, 10000),
    "n_images": Param(int, "test images for LEC-F2's three attacks and its claims, balanced over classes",
                      10, 10000),
    "example": Param(int, "which image the figures draw: the example-th (from 0, test-index order) that the "
                          "model gets right and every attack of the figure fools", 0, 10000),
    "batch_size": Param(int, "images per attack batch", 1, 100000),
    "l0_tol": Param(float, "L0 counts an input value as changed when it moves by more than this ([0, 1] units; "
                              "keep it below every attack's step)", 0.0, 1.0),
    "fgsm_eps": Param(float, "LEC-F1: FGSM's L-inf step, [0, 1] units", 1e-6, 1.0),
    "pgd_eps": Param(float, "LEC-F1: PGD's L-inf budget, [0, 1] units", 1e-6, 1.0),
    "pgd_step_size": Param(float, "LEC-F1: PGD's step, [0, 1] units", 1e-6, 1.0),
    "pgd_steps": Param(int, "LEC-F1: PGD iterations (all of them run: no stop at the first flip)", 1, 10000),
    "deepfool_steps": Param(int, "LEC-F1: DeepFool iterations at most", 1, 10000),
    "deepfool_overshoot": Param(float, "LEC-F1: DeepFool's overshoot", 0.0, 1.0),
    "cw_binary_steps": Param(int, "LEC-F1: C&W-L2 stages of the binary search over c", 1, 20),
    "cw_steps": Param(int, "LEC-F1: C&W-L2 Adam steps per stage (the paper's 10,000 is slow)", 1, 100000),
    "cw_lr": Param(float, "LEC-F1: C&W-L2 Adam learning rate", 1e-6, 10.0),
    "cw_initial_const": Param(float, "LEC-F1: C&W-L2 starting constant c", 1e-6, 1e6),
    "linf_eps": Param(float, "LEC-F2: L-inf PGD budget, [0, 1] units", 1e-6, 1.0),
    "linf_step_size": Param(float, "LEC-F2: L-inf PGD step (stops at the first flip), [0, 1] units", 1e-6, 1.0),
    "linf_steps": Param(int, "LEC-F2: L-inf PGD iterations at most", 1, 10000),
    "l2_eps": Param(float, "LEC-F2: L2 PGD budget, [0, 1] pixel units", 1e-6, 100.0),
    "l2_step_size": Param(float, "LEC-F2: L2 PGD step (stops at the first flip)", 1e-6, 100.0),
    "l2_steps": Param(int, "LEC-F2: L2 PGD iterations at most", 1, 10000),
    "jsma_theta": Param(float, "LEC-F2: JSMA's change of each chosen input value (1: to the top of the range)",
                        -1.0, 1.0),
    "jsma_gamma": Param(float, "LEC-F2: JSMA's L0 budget, the largest fraction of input values it may change",
                        1e-4, 1.0),
}

# LEC §12.3, white-box attacks (notebooks/12_lec_whitebox.ipynb: LEC-F3 to LEC-F8): FGSM, PGD, DeepFool,
# C&W-L2, JSMA and a universal perturbation against vir_main's standard and PGD-AT models of the same
# profile (advbook.analysis.lec_whitebox). The subsets n_pgd, n_deepfool, n_cw and n_jsma must lie in
# [classes, n_eval]: lec_whitebox.page_images checks it, and n_eval + n_build, before any training.
SCHEMAS["lec_whitebox"] = {
    "seed": COMMON["seed"], "device": COMMON["device"],
    "n_eval": Param(int, "test images for FGSM and the held-out images of the universal perturbation, "
                         "balanced over classes", 10, 10000),
    "eps": Param(float, "the page's L-inf budget ([0, 1] units): the FGSM comparisons, PGD", 1e-6, 1.0),
    "fgsm_eps": Param(list, "L-inf budgets of the accuracy-vs-epsilon curve ([0, 1] units; eps is added)",
                      1e-6, 1.0, item=float),
    "n_examples": Param(int, "images drawn in LEC-F3", 1, 4),
    "n_pgd": Param(int, "test images attacked by PGD (the first of the evaluation images, balanced)", 10, 10000),
    "pgd_steps": Param(int, "PGD steps (all run; accuracy is read after each)", 1, 10000),
    "pgd_step_size": Param(float, "PGD step size (L-inf, [0, 1] units)", 1e-6, 1.0),
    "pgd_starts": Param(int, "random starts drawn in the PGD loss panel", 1, 100),
    "n_trace": Param(int, "test images in the PGD loss panel", 1, 6),
    "n_deepfool": Param(int, "test images attacked by DeepFool (first of the evaluation images)", 10, 10000),
    "deepfool_steps": Param(int, "DeepFool iterations at most", 1, 10000),
    "overshoot": Param(float, "DeepFool overshoot", 0.0, 1.0),
    "n_cw": Param(int, "test images attacked by C&W-L2 (first of the evaluation images)", 10, 10000),
    "cw_kappas": Param(list, "C&W-L2 confidences kappa (logit margin)", 0.0, 1000.0, item=float),
    "cw_binary_steps": Param(int, "C&W-L2 binary search steps over the constant c", 1, 20),
    "cw_steps": Param(int, "C&W-L2 Adam steps per binary search step", 1, 100000),
    "cw_lr": Param(float, "C&W-L2 Adam learning rate (tanh space)", 1e-6, 10.0),
    "cw_initial_const": Param(float, "C&W-L2 first constant c of the search", 1e-8, 1e6),
    "n_jsma": Param(int, "test images attacked by JSMA (first of the evaluation images)", 10, 10000),
    "jsma_theta": Param(float, "JSMA's increase of a chosen component (1: to the top of the range)", 1e-3, 1.0),
    "jsma_gamma": Param(float, "JSMA's largest fraction of input components changed", 1e-4, 1.0),
    "n_build": Param(int, "test images the universal perturbation is computed from (disjoint from the "
                          "evaluation images), balanced", 10, 10000),
    "uap_eps": Param(float, "universal perturbation budget (L-inf: [0, 1] units; L2: pixel units)", 1e-6, 100.0),
    "uap_norm": Param(str, "universal perturbation ball", choices=("linf", "l2")),
    "uap_passes": Param(int, "passes over the build images at most", 1, 100),
    "uap_delta": Param(float, "stop once the build fooling rate reaches 1 - delta", 0.0, 1.0),
    "uap_deepfool_steps": Param(int, "DeepFool iterations at most inside the universal perturbation", 1, 1000),
}
