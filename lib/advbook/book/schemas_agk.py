"""The parameters of the AGK chapter's pages (AGKD-BML, Wang et al. 2021, and its supplement).

Each page's values per profile are in ``profiles.d/agk.toml``, its claims in ``claims.d/agk.toml``.
The pages share the architecture, the training images, the schedule, the training attack and the
evaluation, so a model trained by one page (the AT model, the undefended model that is also the
teacher, AGKD-BML itself) is loaded from the cache by the others (:mod:`advbook.evaluation.agk`).
"""
from __future__ import annotations

from advbook.book.param import COMMON, TRAIN, Param

__all__ = ["SCHEMAS", "BASE"]

_EPS = "L-inf, in [0, 1] pixel units"

# What every AGK page reads: the models' architecture, images, schedule and training attack, and
# the evaluation's budget.
BASE: dict[str, Param] = {
    "dataset": COMMON["dataset"], "seed": COMMON["seed"], "device": COMMON["device"],
    "model": Param(str, "the architecture of every method (and of the natural teacher)",
                   choices="advbook.models.zoo:MODELS"),
    **TRAIN,
    "at_eps": Param(float, f"every method's training budget ({_EPS}; the supplement: 8/255 for all)", 1e-6, 1.0),
    "at_step_size": Param(float, "the multi-step methods' training attack step", 1e-6, 1.0),
    "at_steps": Param(int, "the multi-step methods' training attack steps (released AGKD-BML: 10; main paper: 2)",
                      1, 100),
    "eval_eps": Param(float, f"the evaluation attacks' budget ({_EPS})", 1e-6, 1.0),
    "eval_step_size": Param(float, "step of BIM, PGD and CW in the evaluation (not given by the supplement)",
                            1e-6, 1.0),
    "n_eval": Param(int, "test images evaluated, balanced over classes", 10, 10000),
    "eval_batch_size": Param(int, "images per evaluation batch", 1, 100000),
}

_AA = {
    "aa_version": Param(str, "AutoAttack's version: standard (its four attacks) or custom (aa_parts only, "
                             "with the standard version's settings)", choices=("standard", "custom")),
    "aa_parts": Param(list, "AutoAttack's attacks when aa_version is custom",
                      choices="advbook.evaluation.evaluate:AA_PARTS"),
}

SCHEMAS: dict[str, dict[str, Param]] = {}

# AGK-T1 (Table 1: seven methods under seven attacks and AutoAttack) and AGK-T4 (Table 4: training
# time) - notebooks/20_agk_attacks.ipynb.
SCHEMAS["agk_attacks"] = {
    **BASE, **_AA,
    "methods": Param(list, "the rows of AGK-T1", choices="advbook.evaluation.agk:METHODS"),
    "mim_step_size": Param(float, "MIM's step (the evaluation's 40 momentum steps)", 1e-6, 1.0),
    "timing_methods": Param(list, "the rows of AGK-T4, timed now", choices="advbook.evaluation.agk:METHODS"),
    "timing_table4_steps": Param(bool, "time each method with Table 4's attack steps (true) or the page's "
                                       "at_steps for the multi-step ones (false)"),
    "timing_batches": Param(int, "minibatches timed per method and round", 1, 10000),
    "timing_repeats": Param(int, "interleaved timing rounds (the claims' intervals come from them)", 2, 100),
}

# AGK-T2 (Table 2: AGKD-BML under AutoAttack, two widths, two training lengths) -
# notebooks/21_agk_autoattack.ipynb.
SCHEMAS["agk_autoattack"] = {
    **BASE, **_AA,
    "models": Param(list, "two architectures of one family, the narrower first (the supplement: WRN-28-10, "
                          "WRN-34-10)", choices="advbook.models.zoo:MODELS"),
    "epoch_points": Param(list, "training lengths, shorter first: our stand-in for the two decay points",
                          1, 1000, item=int),
}

# AGK-T3 (Table 3: which attention to distil) - notebooks/22_agk_attention.ipynb.
SCHEMAS["agk_attention"] = {
    **BASE,
    "methods": Param(list, "the AGKD variants, one per attention map", choices="advbook.evaluation.agk:METHODS"),
}

# AGK-T5 (Table 5: against CAT, white box and transfer) - notebooks/23_agk_cat.ipynb.
SCHEMAS["agk_cat"] = {
    **BASE,
    "methods": Param(list, "the rows of AGK-T5", choices="advbook.evaluation.agk:METHODS"),
    "surrogates": Param(list, "naturally trained source models of the transfer attacks (the supplement: "
                              "VGG-16 and a WideResNet)", choices="advbook.models.zoo:MODELS"),
    "transfer_steps": Param(int, "PGD steps on each surrogate", 1, 10000),
    "cat_eps_max": Param(float, f"CAT's largest per-sample budget ({_EPS}; reference 0.035)", 1e-6, 1.0),
}

# AGK-T6 (Table 6: k-NN against softmax) and AGK-F1 (Figs. 1-4: t-SNE) - notebooks/24_agk_features.ipynb.
SCHEMAS["agk_features"] = {
    **BASE,
    "knn_methods": Param(list, "the rows of AGK-T6", choices="advbook.evaluation.agk:METHODS"),
    "tsne_methods": Param(list, "the columns of AGK-F1", choices="advbook.evaluation.agk:METHODS"),
    "knn_k": Param(int, "neighbours of the k-NN classifier (the supplement: 50)", 1, 10000),
    "knn_metric": Param(str, "the k-NN's distance on the features", choices="advbook.analysis.representation:KNN_METRICS"),
    "tsne_classes": Param(list, "classes whose test images are attacked in AGK-F1 (one row each)", 0, 999,
                          item=int),
    "tsne_per_class": Param(int, "clean test images per class in each t-SNE map", 2, 1000),
    "tsne_steps": Param(list, "PGD steps of the attacks in AGK-F1 (the supplement: 20 and 100)", 1, 10000,
                        item=int),
    "tsne_perplexity": Param(float, "t-SNE perplexity", 1.0, 1000.0),
}
