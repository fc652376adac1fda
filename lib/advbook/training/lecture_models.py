"""The trained models of the lecture's defenses page (LEC-F11), through the project's one cached loop.

Six classifiers share one architecture, one class-balanced training subset, one schedule and one seed:

* ``standard``, ``at`` (PGD-AT) and ``trades``: :func:`advbook.training.defenses.train_defenses`,
  so with the VIR chapter's settings (``vir_main`` of the same profile) they are VIR's cached models;
* ``alp``: Adversarial Logit Pairing (:mod:`advbook.training.lecture`, ``alp``);
* ``teacher`` and ``student``: defensive distillation (Papernot et al. 2016), a teacher trained at
  temperature T (``temperature_standard``) and a student trained at T on its soft labels
  (``distillation``); both are used at T = 1.

The test-time defenses of the page wrap ``standard`` (:mod:`advbook.models.defended`); the denoiser
they need is fitted here too (:func:`fit_purifier`), cached like a model.
"""
from __future__ import annotations

import hashlib

import pandas as pd
import torch

from advbook.core import cache
from advbook.data.cifar import Dataset, balanced_subset, to_float
from advbook.models.defended import Purifier
from advbook.training.defenses import train_defenses
from advbook.training.train import TrainConfig, TrainedModel, train_model

__all__ = ["MODELS", "SHARED", "vir_params", "lecture_configs", "train_lecture_models", "fit_purifier",
           "PURIFIER_VERSION", "training_table"]

MODELS = ("standard", "at", "trades", "alp", "teacher", "student")
SHARED = ("standard", "at", "trades")      # trained by defenses.train_defenses (VIR's keys)
PURIFIER_VERSION = 1                       # bump when Purifier or its fit change the weights
_VIR_KEYS = ("model", "seed", "train_per_class", "epochs", "batch_size", "lr", "weight_decay", "at_eps",
             "at_step_size", "at_steps", "trades_beta")


def vir_params(params: dict) -> dict:
    """The parameters :func:`~advbook.training.defenses.defense_config` reads, from the page's:
    ``reweight_from`` 0 (nothing here forks from a burn-in) and VIR-TRADES' weight equal to TRADES'.
    PGD-AT and TRADES own neither, so their configurations, and cache keys, are the ones ``vir_main``
    gets from the same schedule, budget and TRADES weight."""
    missing = [k for k in _VIR_KEYS if k not in params]
    if missing:
        raise ValueError(f"missing parameter(s) {', '.join(missing)}; needed: {', '.join(_VIR_KEYS)}")
    return {**{k: params[k] for k in _VIR_KEYS}, "reweight_from": 0, "vir_trades_beta": params["trades_beta"]}


def lecture_configs(params: dict) -> dict[str, TrainConfig]:
    """The configurations of ``alp``, ``teacher`` and ``student``: the page's schedule, ALP with the
    training attack of PGD-AT and ``alp_lambda``, the distillation pair at ``distill_t`` for
    ``distill_epochs`` epochs.

    The pair gets its own number of epochs because a network trained at temperature T must grow
    logits T times larger than one trained at T = 1 (its last layer learns T times more slowly in
    the units of the loss; see :mod:`advbook.training.lecture`). With ``small_cnn`` on 2,000 CIFAR-10
    images at T = 100 (our measurements, one seed): after 8 epochs the student's cross-entropy
    gradient was exactly zero on about 1 % of the test images it classified correctly, after 16 on
    40-50 %; the standard model's never is."""
    schedule = {k: params[k] for k in ("batch_size", "lr", "weight_decay")}
    attack = {k: params[k] for k in ("at_eps", "at_step_size", "at_steps")}
    distill = dict(epochs=params["distill_epochs"], distill_t=params["distill_t"])
    return {"alp": TrainConfig.build(objective="alp", epochs=params["epochs"], **schedule, **attack,
                                     alp_lambda=params["alp_lambda"]),
            "teacher": TrainConfig.build(objective="temperature_standard", **schedule, **distill),
            "student": TrainConfig.build(objective="distillation", **schedule, **distill)}


def train_lecture_models(params: dict, *, dataset: Dataset, device, on_model=None) -> dict[str, TrainedModel]:
    """Train (or load from the cache) the six models of :data:`MODELS`, in that order; ``on_model``
    sees each one (a run's ``use_model``, for provenance)."""
    shared = train_defenses(list(SHARED), params=vir_params(params), dataset=dataset, seed=params["seed"],
                            device=device)
    index = balanced_subset(dataset.train.labels, n_per_class=params["train_per_class"], seed=params["seed"])
    cfgs = lecture_configs(params)
    common = dict(model_name=params["model"], dataset=dataset, seed=params["seed"], train_index=index, device=device)
    out = {name: shared[name] for name in SHARED}
    out["alp"] = train_model(cfg=cfgs["alp"], **common)
    out["teacher"] = train_model(cfg=cfgs["teacher"], **common)
    out["student"] = train_model(cfg=cfgs["student"], teacher=out["teacher"], **common)
    for trained in out.values():
        if on_model is not None:
            on_model(trained)
    return out


def fit_purifier(params: dict, *, dataset: Dataset, device) -> Purifier:
    """The denoiser of the page: a :class:`~advbook.models.defended.Purifier` of width
    ``purifier_width`` fitted by :meth:`~advbook.models.defended.Purifier.fit` for ``purifier_steps``
    steps of 128 images at noise ``purifier_sigma`` on the page's training subset (the classifiers'
    images: it never sees an adversarial example, as MagNet's reformer does not), seeded with ``seed``.
    Cached under a key of the data, subset, settings and :data:`PURIFIER_VERSION`; returned in eval
    mode on ``device``."""
    index = balanced_subset(dataset.train.labels, n_per_class=params["train_per_class"], seed=params["seed"])
    settings = {"width": params["purifier_width"], "sigma": params["purifier_sigma"], "steps": params["purifier_steps"],
                "batch_size": 128, "lr": 1e-2, "seed": params["seed"]}
    key = cache.stable_hash({"data": dataset.name, "data_sha256": dataset.checksum,
                             "index": hashlib.sha256(index.numpy().tobytes()).hexdigest()[:16],
                             "settings": settings, "version": PURIFIER_VERSION})
    path = cache.cache_dir("models") / f"purifier-{key}" / "final.pt"
    purifier = Purifier(channels=dataset.train.images.shape[1], width=settings["width"], seed=settings["seed"])
    if path.exists():
        try:
            purifier.load_state_dict(cache.load_checkpoint(path))
            return purifier.to(device).eval()
        except (cache.CorruptCheckpoint, RuntimeError):
            path.unlink(missing_ok=True)
    purifier.to(device).fit(to_float(dataset.train.images[index]), sigma=settings["sigma"], steps=settings["steps"],
                            batch_size=settings["batch_size"], lr=settings["lr"], seed=settings["seed"])
    cache.save_checkpoint(path, {k: v.detach().cpu() for k, v in purifier.state_dict().items()})
    return purifier.eval()


def training_table(models: dict[str, TrainedModel]) -> pd.DataFrame:
    """One row per model: objective, training temperature (distillation), whether it came from the
    cache, its training time and its last epoch's training loss and accuracy."""
    rows = []
    for name, m in models.items():
        last = m.meta["history"][-1] if m.meta.get("history") else {}
        rows.append({"model": name, "objective": m.meta["config"]["objective"],
                     "T": m.meta["config"].get("distill_t", ""), "from cache": m.from_cache,
                     "train seconds": m.meta["train_seconds"], "last epoch loss": round(last.get("loss", float("nan")), 3),
                     "last epoch train acc (%)": round(100 * last.get("acc", float("nan")), 1)})
    return pd.DataFrame(rows).set_index("model")
