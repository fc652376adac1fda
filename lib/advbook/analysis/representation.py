"""Penultimate-layer representations under attack: k-NN accuracy (AGK-T6) and t-SNE maps (AGK-F1).

The AGKD-BML supplement (§6) classifies clean and PGD-20 test images with a k-nearest-neighbour
classifier (k = 50) on the penultimate features, "following" SML (Mao et al., 2019), beside the
network's own softmax; §7 draws t-SNE maps of the same features for clean and PGD-20 / PGD-100
examples. Neither AGKD-BML's code (github:hongw579/AGKD-BML) nor SML's
(github:columbia/Metric_Learning_Adversarial_Robustness) contains the k-NN step, so its metric is
a choice, and the choice here is SML's: every comparison of representations in its code is a
cosine one - the triplet loss it trains with (``config_cifar.json`` l.30, ``"triplet_loss_type":
"cos"``; ``utils.py`` l.116-129), its similarity of adversarial features to other classes
(``utils.py`` l.384-414: inner products of L2-normalised ``x4``, the penultimate layer) and its
t-SNE (``tSNE.py`` l.306, ``metric='cosine'``); AGKD-BML's own triplet loss is angular as well
(its ``utils.py`` l.44, ``angular_distance``, 1 - |cos|). ``metric="euclidean"`` is the alternative.

* :func:`penultimate` and :func:`clean_and_adversarial`: the features (``model.features``, the
  input of the linear head of a :class:`~advbook.models.zoo.Classifier`) of clean images and of
  their L-inf PGD examples, in batches, with the softmax predictions on both;
* :func:`knn_accuracy`: scikit-learn's ``KNeighborsClassifier``, per-sample correctness flags;
* :func:`tsne`: scikit-learn's ``TSNE``, the same map for the same seed, bit for bit.
"""
from __future__ import annotations

import dataclasses

import torch

from advbook.attacks.core import pgd
from advbook.training.framework import in_eval_mode

__all__ = ["KNN_METRICS", "Features", "penultimate", "clean_and_adversarial", "knn_accuracy", "tsne"]

KNN_METRICS = ("cosine", "euclidean")   # scikit-learn metric names; cosine is SML's (see above)


@dataclasses.dataclass(frozen=True)
class Features:
    """Penultimate features and softmax predictions of clean images and of their PGD examples;
    one row per image, in the order of the images, on their device."""
    clean: torch.Tensor              # (N, d)
    adversarial: torch.Tensor        # (N, d)
    clean_pred: torch.Tensor         # (N,) int64
    adversarial_pred: torch.Tensor   # (N,) int64


def _check_model(model) -> None:
    if not callable(getattr(model, "features", None)):
        raise ValueError(f"expected a model with a features(x) method (a zoo Classifier), got {type(model).__name__}")


def _check_batch_size(batch_size: int) -> None:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


@torch.no_grad()
def penultimate(model, x: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """``model.features`` of the images ``x`` in [0, 1], (N, d), in batches, in eval mode (the
    model's own mode is given back): the k-NN classifier's training set."""
    _check_model(model)
    _check_batch_size(batch_size)
    with in_eval_mode(model):
        return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def clean_and_adversarial(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
                          seed: int = 0, batch_size: int = 500) -> Features:
    """The features and predictions of ``x`` and of its L-inf PGD examples (random start, all
    ``steps`` run, the last iterate; :func:`advbook.attacks.core.pgd` on the cross-entropy of the
    true labels ``y``), in eval mode, in consecutive batches of ``batch_size``, each attacked with
    the same ``seed`` as :func:`advbook.evaluation.evaluate.evaluate` does.

    Every image is attacked, the misclassified ones too, as SML's ``tSNE.py`` (``process_data``,
    l.61) embeds the PGD examples of whole test batches: the k-NN classifier is judged on the same
    examples as the softmax. (``evaluate`` attacks only the naturally correct images, so its ``pgd`` batches, and
    so its random starts, differ: the softmax accuracy here may differ from its ``pgd`` column by
    a few images.)"""
    _check_model(model)
    _check_batch_size(batch_size)
    if y.shape != (len(x),):
        raise ValueError(f"expected labels of shape ({len(x)},), got {tuple(y.shape)}")
    y = y.to(x.device)
    parts = []
    with in_eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            x_adv = pgd(model, xb, yb, norm="linf", eps=eps, step_size=step_size, steps=steps, random_start=True,
                        stop_on_success=False, seed=seed).x_adv
            with torch.no_grad():
                parts.append((model.features(xb), model.features(x_adv), model(xb).argmax(1), model(x_adv).argmax(1)))
    return Features(*(torch.cat(column) for column in zip(*parts)))


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, k: int = 50, metric: str = "cosine") -> torch.Tensor:
    """Per-sample flags (bool, on the device of ``test_features``): True where the majority label
    of the ``k`` training features nearest to a test feature is its label; their mean is the k-NN
    accuracy of AGK-T6. k = 50 is the supplement's (§6); ``metric`` one of :data:`KNN_METRICS`.

    scikit-learn's ``KNeighborsClassifier`` with uniform votes and an exhaustive (``brute``)
    search, on float64 copies of the features: a tie between classes goes to the smallest label (the
    first maximum of the vote counts). ``k`` larger than the training set, an unknown metric or a
    shape mismatch is an error before any work (scikit-learn would refuse such a ``k`` only when
    predicting, after the fit)."""
    from sklearn.neighbors import KNeighborsClassifier

    if metric not in KNN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(KNN_METRICS)}")
    if train_features.dim() != 2 or test_features.dim() != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"expected features of shapes (N, d) and (M, d), got {tuple(train_features.shape)} "
                         f"and {tuple(test_features.shape)}")
    if train_labels.shape != (len(train_features),) or test_labels.shape != (len(test_features),):
        raise ValueError(f"expected one label per feature row, got {tuple(train_labels.shape)} for "
                         f"{len(train_features)} training and {tuple(test_labels.shape)} for "
                         f"{len(test_features)} test rows")
    if not (isinstance(k, int) and 1 <= k <= len(train_features)):
        raise ValueError(f"k must be an integer in [1, {len(train_features)}] (the training set's size), got {k!r}")
    knn = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute", weights="uniform")
    knn.fit(train_features.detach().cpu().double().numpy(), train_labels.cpu().numpy())
    pred = torch.from_numpy(knn.predict(test_features.detach().cpu().double().numpy()))
    return (pred == test_labels.cpu()).to(test_features.device)


def tsne(features: torch.Tensor, *, seed: int, perplexity: float, metric: str = "cosine") -> torch.Tensor:
    """A 2-D t-SNE map (N, 2), float32 on the CPU, of ``features`` (N, d): scikit-learn's ``TSNE``
    with ``random_state=seed``, its defaults otherwise (Barnes-Hut, PCA initialisation, learning
    rate "auto", 1000 iterations), ``metric`` cosine as SML's ``tSNE.py`` (l.306; it used
    MulticoreTSNE with learning rate 20 and 5000 iterations, and perplexity 15, l.493). The PCA
    start (scikit-learn's default since 1.2, which keeps the clusters' global layout better than
    a random one) leaves the seed only its randomized SVD: on small inputs two seeds may give the
    same map.

    The same features and seed give the same map, bit for bit: the fit runs with one thread
    (``threadpoolctl``), because scikit-learn's Barnes-Hut gradient (``_barnes_hut_tsne.pyx``,
    ``compute_gradient_negative``) sums the normalisation ``sum_Q`` that divides every force, and
    the error that decides when to stop, over points in OpenMP threads, whose order, and so whose
    last bits, may change from run to run. (Another machine's BLAS may round the PCA start
    differently: the same bits are promised for reruns on one machine.)"""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if metric not in KNN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(KNN_METRICS)}")
    if features.dim() != 2:
        raise ValueError(f"expected features of shape (N, d), got {tuple(features.shape)}")
    if not 0 < perplexity < len(features):
        raise ValueError(f"perplexity must be in (0, {len(features)}) (the number of points), got {perplexity!r}")
    with threadpool_limits(limits=1):
        embedded = TSNE(n_components=2, perplexity=perplexity, metric=metric, random_state=seed).fit_transform(
            features.detach().cpu().float().numpy())
    return torch.from_numpy(embedded)
