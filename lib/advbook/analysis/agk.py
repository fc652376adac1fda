"""AGK-T6: k-NN against softmax accuracy on the penultimate features, clean and under PGD-20.

The k-NN classifier lives in :mod:`advbook.analysis.representation` (the supplement's §6: k = 50 on
the penultimate features, SML's cosine metric), above the evaluation layer, so the chapter's table is
built here rather than beside :mod:`advbook.evaluation.agk`'s accuracy table.
"""
from __future__ import annotations

import pandas as pd
import torch

from advbook.analysis.representation import clean_and_adversarial, knn_accuracy, penultimate
from advbook.training.train import TrainedModel

__all__ = ["KNN_EVALUATIONS", "knn_table"]

KNN_EVALUATIONS = ("natural", "pgd:20")   # the names of evaluate_methods' flags for the same images


def knn_table(models: dict[str, TrainedModel], *, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor,
              y: torch.Tensor, P: dict, index: torch.Tensor | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model, the k-NN (``knn_k``, else the supplement's 50; ``knn_metric``, else cosine) and the
    softmax accuracy on the test images ``x`` and on their L-inf PGD-20 examples (``eval_eps``,
    ``eval_step_size``, random start seeded by ``seed``: AGK-T1's ``pgd:20``). The k-NN classifier's
    training set is the model's penultimate features of the clean training images ``train_x``
    (``train_y``); every test image is attacked, the misclassified ones too (see
    :func:`~advbook.analysis.representation.clean_and_adversarial`), so both classifiers are judged on
    the same examples. Returns the accuracy rows (method, classifier, evaluation, accuracy in %, seed,
    n) and the per-image flags (seed, index, method, classifier, evaluation, correct; ``index`` the
    test positions, default 0..n-1); each row's accuracy is 100 x the mean of its flags."""
    k, metric = P.get("knn_k", 50), P.get("knn_metric", "cosine")
    if not (isinstance(k, int) and 1 <= k <= len(train_x)):  # before any attack (knn_accuracy checks it after)
        raise ValueError(f"knn_k must be an integer in [1, {len(train_x)}] (the k-NN training set's size), got {k!r}")
    index = torch.arange(len(x)) if index is None else index
    if len(index) != len(x) or len(y) != len(x) or len(train_y) != len(train_x):
        raise ValueError(f"expected one label per image and one index per test image, got {len(train_y)} labels for "
                         f"{len(train_x)} training images, {len(y)} labels and {len(index)} indices for {len(x)}")
    rows, flags = [], []
    for name, m in models.items():
        bank = penultimate(m.model, train_x, batch_size=P.get("eval_batch_size", 500))
        f = clean_and_adversarial(m.model, x, y, eps=P["eval_eps"], step_size=P["eval_step_size"], steps=20,
                                  seed=P["seed"], batch_size=P.get("eval_batch_size", 500))
        yd = y.to(f.clean_pred.device)
        for evaluation, feats, pred in (("natural", f.clean, f.clean_pred), ("pgd:20", f.adversarial, f.adversarial_pred)):
            for classifier, correct in (("knn", knn_accuracy(bank, train_y, feats, y, k=k, metric=metric)),
                                        ("softmax", pred == yd)):
                correct = correct.cpu().numpy()
                rows.append({"method": name, "classifier": classifier, "evaluation": evaluation,
                             "accuracy": 100 * correct.mean(), "seed": P["seed"], "n": len(correct)})
                flags.append(pd.DataFrame({"seed": P["seed"], "index": index.cpu().numpy(), "method": name,
                                           "classifier": classifier, "evaluation": evaluation, "correct": correct}))
    return pd.DataFrame(rows), pd.concat(flags, ignore_index=True)
