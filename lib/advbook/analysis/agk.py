"""AGK-T6: k-NN against softmax accuracy on the penultimate features, clean and under PGD-20; AGK-F1:
the t-SNE maps of clean and adversarial features.

The k-NN classifier lives in :mod:`advbook.analysis.representation` (the supplement's §6: k = 50 on
the penultimate features, SML's cosine metric), above the evaluation layer, so the chapter's table is
built here rather than beside :mod:`advbook.evaluation.agk`'s accuracy table.
"""
from __future__ import annotations

import pandas as pd
import torch

from advbook.analysis.representation import clean_and_adversarial, knn_accuracy, penultimate, tsne
from advbook.analysis.stats import ratio_of_medians
from advbook.training.train import TrainedModel

__all__ = ["KNN_EVALUATIONS", "knn_table", "pulled_back", "tsne_points", "time_ratios"]

KNN_EVALUATIONS = ("natural", "pgd:20")   # the names of evaluate_methods' flags for the same images


def _record(rows: list, flags: list, *, method: str, classifier: str, evaluation: str, correct, index, seed: int):
    """One accuracy row and its per-image flags (the accuracy is 100 x the flags' mean)."""
    correct = correct.cpu().numpy()
    rows.append({"method": method, "classifier": classifier, "evaluation": evaluation,
                 "accuracy": 100 * correct.mean(), "seed": seed, "n": len(correct)})
    flags.append(pd.DataFrame({"seed": seed, "index": index, "method": method, "classifier": classifier,
                               "evaluation": evaluation, "correct": correct}))


def knn_table(models: dict[str, TrainedModel], *, train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor,
              y: torch.Tensor, P: dict, index: torch.Tensor | None = None, steps: int = 20,
              clean: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
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
        f = clean_and_adversarial(m.model, x, y, eps=P["eval_eps"], step_size=P["eval_step_size"], steps=steps,
                                  seed=P["seed"], batch_size=P.get("eval_batch_size", 500))
        yd = y.to(f.clean_pred.device)
        views = [("natural", f.clean, f.clean_pred)] if clean else []
        for evaluation, feats, pred in views + [(f"pgd:{steps}", f.adversarial, f.adversarial_pred)]:
            for classifier, correct in (("knn", knn_accuracy(bank, train_y, feats, y, k=k, metric=metric)),
                                        ("softmax", pred == yd)):
                _record(rows, flags, method=name, classifier=classifier, evaluation=evaluation, correct=correct,
                        index=index.cpu().numpy(), seed=P["seed"])
    return pd.DataFrame(rows), pd.concat(flags, ignore_index=True)


def pulled_back(models: dict[str, TrainedModel], features: pd.DataFrame, *, train_x: torch.Tensor,
                train_y: torch.Tensor, P: dict, seed: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AGK-F1's numbers, on the adversarial examples the maps draw: for each model and attack of
    :func:`tsne_points`' ``features`` table, whether the k-NN (``knn_k``, ``knn_metric``, the
    neighbours being the model's features of the clean training images ``train_x``) puts each
    adversarial example in its true class - "pulled back to its class", the supplement's reading of
    its maps - and whether the model's own head does (``classifier`` "softmax": the head applied to
    the saved features). Returns the accuracy rows (method, classifier, evaluation, accuracy in %,
    seed, n) and the per-image flags (seed, index, method, classifier, evaluation, correct)."""
    k, metric = P.get("knn_k", 50), P.get("knn_metric", "cosine")
    seed = P["seed"] if seed is None else seed
    adversarial = features[features["kind"] != "clean"]
    columns = [c for c in features.columns if c.startswith("f") and c[1:].isdigit()]
    rows, flags = [], []
    for (name, attack), part in adversarial.groupby(["method", "kind"], sort=False):
        model = models[name].model
        bank = penultimate(model, train_x, batch_size=P.get("eval_batch_size", 500))
        f = torch.tensor(part[columns].to_numpy(), dtype=bank.dtype, device=bank.device)
        labels = torch.tensor(part["label"].to_numpy())
        with torch.no_grad():
            softmax = model.head(f).argmax(1).cpu() == labels
        for classifier, correct in (("knn", knn_accuracy(bank, train_y, f, labels.to(f.device), k=k, metric=metric)),
                                    ("softmax", softmax)):
            _record(rows, flags, method=name, classifier=classifier, evaluation=attack, correct=correct,
                    index=part["index"].to_numpy(), seed=seed)
    return pd.DataFrame(rows), pd.concat(flags, ignore_index=True)


def tsne_points(models: dict[str, TrainedModel], *, x: torch.Tensor, y: torch.Tensor, P: dict,
                index: torch.Tensor | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AGK-F1's maps (the supplement's Figs. 1-4): per model and per attack of ``P["tsne_steps"]``
    (L-inf PGD, ``eval_eps``, ``eval_step_size``, random start seeded by ``seed``), one t-SNE map
    (:func:`~advbook.analysis.representation.tsne`, ``seed``, ``tsne_perplexity``, the k-NN's
    ``knn_metric``) of the penultimate features of every image of ``x`` (clean) together with those
    of the adversarial examples of the images whose class is in ``P["tsne_classes"]``: so each
    attacked class's examples are placed among the clean points of every class, as in the
    supplement's panels, one map per (model, attack) shared by the panel's rows.

    Returns the points (method, attack, kind "clean" or "adversarial", index, label, attacked: the
    label for adversarial points and -1 for clean ones, x, y) and the features behind them (method,
    kind: "clean" or the attack's name, index, label, f0 ... f<d-1>, rounded to 5 decimals)."""
    classes = list(P["tsne_classes"])
    index = torch.arange(len(x)) if index is None else index
    if len(index) != len(x) or len(y) != len(x):
        raise ValueError(f"expected one label and one index per image, got {len(y)} labels and {len(index)} "
                         f"indices for {len(x)} images")
    chosen = torch.isin(y.cpu(), torch.tensor(classes))
    if not chosen.any():
        raise ValueError(f"no image of tsne_classes={classes!r} among the {len(x)} images")
    idx, lab = index.cpu().numpy(), y.cpu().numpy()
    points, feats = [], []

    def table(method, kind, f, rows):
        out = pd.DataFrame(f.cpu().numpy().round(5), columns=[f"f{i}" for i in range(f.shape[1])])
        return pd.concat([pd.DataFrame({"method": method, "kind": kind, "index": idx[rows], "label": lab[rows]}), out],
                         axis=1)

    everyone = torch.arange(len(x)).numpy()
    sub = chosen.nonzero().squeeze(1)
    for name, m in models.items():
        clean = penultimate(m.model, x, batch_size=P.get("eval_batch_size", 500))
        feats.append(table(name, "clean", clean, everyone))
        for steps in P["tsne_steps"]:
            attack = f"pgd:{steps}"
            adv = clean_and_adversarial(m.model, x[sub.to(x.device)], y[sub.to(y.device)], eps=P["eval_eps"],
                                        step_size=P["eval_step_size"], steps=steps, seed=P["seed"],
                                        batch_size=P.get("eval_batch_size", 500)).adversarial
            feats.append(table(name, attack, adv, sub.numpy()))
            both = torch.cat([clean.float().cpu(), adv.float().cpu()])
            xy = tsne(both, seed=P["seed"], perplexity=P["tsne_perplexity"], metric=P.get("knn_metric", "cosine"))
            n = len(clean)
            points.append(pd.DataFrame({
                "method": name, "attack": attack, "kind": ["clean"] * n + ["adversarial"] * len(sub),
                "index": list(idx) + list(idx[sub.numpy()]), "label": list(lab) + list(lab[sub.numpy()]),
                "attacked": [-1] * n + list(lab[sub.numpy()]), "x": xy[:, 0].numpy(), "y": xy[:, 1].numpy()}))
    return pd.concat(points, ignore_index=True), pd.concat(feats, ignore_index=True)


def time_ratios(timings: pd.DataFrame, *, reference: str = "at", value: str = "seconds_per_epoch",
                level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """AGK-T4's ratios for the figure: each method's median ``value`` over the timing rounds divided by
    ``reference``'s, with a paired percentile-bootstrap interval over the rounds
    (:func:`~advbook.analysis.stats.ratio_of_medians`, the claims' interval at one comparison's level).
    Columns: method, ratio, low, high, rounds."""
    if reference not in set(timings["method"]):
        raise ValueError(f"the reference {reference!r} was not timed; timed: {', '.join(timings['method'].unique())}")
    wide = timings.pivot(index="repeat", columns="method", values=value)
    rows = []
    for m in timings["method"].unique():
        t = ratio_of_medians(wide[m], wide[reference], level=level, seed=seed, paired=True)
        rows.append({"method": m, "ratio": t.estimate, "low": t.low, "high": t.high, "rounds": t.n})
    return pd.DataFrame(rows)
