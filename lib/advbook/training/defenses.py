"""The adversarial-training defenses of the VIR chapter, trained through one cached loop.

A defense is an objective of :mod:`advbook.objectives` plus the hyperparameters the VIR paper
(§5.3) gives it. :func:`train_defenses` trains a list of them on the same data with the same
schedule and seed, base objectives first, so that every reweighting method forks from the
cached burn-in of its base (PGD-AT for GAIRAT, MAIL-AT and VIR-AT; TRADES for VIR-TRADES,
when both use the same TRADES weight) instead of training it again.
"""
from __future__ import annotations

import dataclasses

import pandas as pd
import torch


from advbook.data.cifar import Dataset, balanced_subset
from advbook.training.registry import OBJECTIVES
from advbook.training.train import TrainConfig, TrainedModel, lr_per_epoch, train_model

__all__ = ["DEFENSES", "CONTROLS", "paper_only", "weight_scale", "defense_config", "train_defenses", "class_weight_sums"]

# defense -> (objective, its hyperparameters: VIR §5.3 and the methods' reference codes)
DEFENSES: dict[str, tuple[str, dict]] = {
    "standard": ("standard", {}),
    "at": ("pgd_at", {}),
    "trades": ("trades", {}),
    "mart": ("mart", {"mart_beta": 5.0}),
    "gairat": ("gairat", {"gair_lambda": -1.0}),
    "mail_at": ("mail_at", {"mail_bias": -0.5, "mail_slope": 10.0}),   # MAIL README.md:55 (was -1.5, 1.0)
    "vir_at": ("vir_at", {"vir_alpha": 7.0, "vir_gamma": 10.0, "vir_beta": 0.007}),
    "vir_trades": ("vir_trades", {"vir_alpha": 8.0, "vir_gamma": 3.0, "vir_beta": 1.6}),
}
# Our controls (not the paper's): the same VIR runs with each sample's weight replaced by the batch
# mean of VIR's weights ("_mean": VIR's loss scale without the reweighting) or divided by it
# ("_norm": the reweighting without the change of scale). They fork from the same burn-in.
CONTROLS: dict[str, tuple[str, dict]] = {
    f"{name}_{use}": (objective, {**hyper, "vir_use": use})
    for name, (objective, hyper) in list(DEFENSES.items()) if name in ("vir_at", "vir_trades")
    for use in ("mean", "norm")}
DEFENSES.update(CONTROLS)


def defense_config(name: str, params: dict, **overrides) -> TrainConfig:
    """The TrainConfig of defense ``name`` under experiment ``params`` (schedule, attack, burn-in
    and TRADES weights, each where the defense's objective has it), with its hyperparameters and
    ``overrides`` (e.g. ``vir_use="sv"`` or ``vir_beta=0.1``) last; an override the objective does
    not own fails with the valid ones."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; valid: {', '.join(DEFENSES)}")
    objective, hyper = DEFENSES[name]
    common = dict(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                  weight_decay=params["weight_decay"], at_eps=params["at_eps"], at_step_size=params["at_step_size"],
                  at_steps=params["at_steps"], reweight_from=params["reweight_from"],
                  trades_beta=params["vir_trades_beta"] if objective == "vir_trades" else params["trades_beta"])
    owned = TrainConfig.keywords(objective)
    return TrainConfig.build(objective=objective, **{**{k: v for k, v in common.items() if k in owned},
                                                     **hyper, **overrides})


def train_defenses(names, *, params: dict, dataset: Dataset, seed: int, device,
                   variants: dict[str, tuple[str, dict]] | None = None) -> dict[str, TrainedModel]:
    """Train (or load) each defense in ``names`` and each variant (label -> (defense, overrides)),
    bases first, each base saving its state at ``reweight_from`` for the forks."""
    index = balanced_subset(dataset.train.labels, n_per_class=params["train_per_class"], seed=params["seed"])
    jobs = {n: (n, {}) for n in names} | dict(variants or {})
    configs = {label: defense_config(d, params, **o) for label, (d, o) in jobs.items()}
    order = sorted(configs, key=lambda label: OBJECTIVES[configs[label].objective].base is not None)
    share = (params["reweight_from"],) if 0 < params["reweight_from"] < params["epochs"] else ()
    return {label: train_model(model_name=params["model"], dataset=dataset, cfg=configs[label], seed=seed,
                               train_index=index, device=device, share_epochs=share)
            for label in order}


def class_weight_sums(trained: TrainedModel, labels: torch.Tensor, *, num_classes: int) -> pd.DataFrame:
    """VIR Fig. 3: per reweighted epoch, the sum of the recorded sample weights of each class,
    as a share of the epoch's total. ``labels`` are the dataset's training labels."""
    rows = []
    for epoch, rec in sorted(trained.records().items()):
        w = rec["w"].double()
        cls = labels[rec["index"]]
        sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, cls, w)
        rows += [{"epoch": epoch, "class": c, "weight_sum": float(sums[c]), "share": float(sums[c] / sums.sum())}
                 for c in range(num_classes)]
    return pd.DataFrame(rows)


def train_seeds(names, *, params: dict, dataset: Dataset, seeds: list[int], device,
                on_model=None) -> dict[int, dict[str, TrainedModel]]:
    """:func:`train_defenses` for every seed (seed -> name -> model); ``on_model`` sees each model
    (e.g. a run's ``use_model`` for provenance)."""
    out = {}
    for seed in seeds:
        out[seed] = train_defenses(names, params=params, dataset=dataset, seed=seed, device=device)
        for m in out[seed].values():
            if on_model is not None:
                on_model(m)
    return out


def training_table(trained: dict[int, dict[str, TrainedModel]]) -> pd.DataFrame:
    """One row per trained model: seed, name, objective, whether it forked from a burn-in, whether
    it came from the cache, and its training time."""
    return pd.DataFrame([{"seed": s, "model": name, "objective": m.meta["config"]["objective"],
                          "forked from the burn-in": bool(m.meta.get("forked_from")), "from cache": m.from_cache,
                          "train seconds": m.meta["train_seconds"]}
                         for s, models in trained.items() for name, m in models.items()])


def weight_records(models: dict[str, TrainedModel], labels: torch.Tensor, *, names, num_classes: int):
    """VIR Fig. 3's inputs for the reweighting defenses among ``names``: the per-class weight
    shares per epoch (label -> frame) and every recorded per-sample weight (one frame)."""
    sums, raw = {}, []
    for name in names:
        if name not in models:
            continue
        sums[name] = class_weight_sums(models[name], labels, num_classes=num_classes)
        for epoch, rec in models[name].records().items():
            raw.append(pd.DataFrame({k: v.numpy() for k, v in rec.items()}).assign(defense=name, epoch=epoch))
    return sums, (pd.concat(raw, ignore_index=True) if raw else pd.DataFrame())


def weight_summary(sums: dict[str, pd.DataFrame], records: pd.DataFrame, *, classes) -> pd.DataFrame:
    """Per reweighting defense: the classes with the largest and smallest mean weight share over the
    reweighted epochs, and how large S_v * S_d is against the floor beta (far below 1: the weights
    are nearly uniform)."""
    rows = []
    for name, frame in sums.items():
        share = frame.groupby("class")["share"].mean()
        beta = DEFENSES[name][1]["vir_beta"]
        g = records[records["defense"] == name]
        rows.append({"defense": name, "largest share": classes[int(share.idxmax())],
                     "smallest share": classes[int(share.idxmin())],
                     "mean S_v·S_d / beta": float((g["S_v"] * g["S_d"]).mean() / beta) if len(g) else float("nan")})
    return pd.DataFrame(rows).set_index("defense") if rows else pd.DataFrame()


def paper_only(names) -> list[str]:
    """``names`` without our controls (:data:`CONTROLS`): the defenses the paper compares."""
    return [n for n in names if n not in CONTROLS]


def weight_scale(models: dict[str, TrainedModel], *, names, params: dict) -> pd.DataFrame:
    """Per defense and epoch: the learning rate of the schedule, the mean recorded sample weight
    (1 where nothing is reweighted: the burn-in and the unweighted methods) and their product, the
    step size the average sample's loss actually gets. ``params`` is the ``vir_main`` set the
    models were trained with (their schedule and training-set size)."""
    rows = []
    for name in names:
        if name not in models:
            continue
        cfg = defense_config(name, params)
        n_train = params["train_per_class"] * models[name].model.head.out_features
        records = models[name].records()
        for epoch, lr in enumerate(lr_per_epoch(cfg, n_train=n_train)):
            done = epoch + 1    # records are keyed by the number of epochs done
            w = float(records[done]["w"].double().mean()) if done in records else 1.0
            rows.append({"defense": name, "epoch": epoch + 1, "lr": lr, "mean weight": w, "lr x mean weight": lr * w})
    return pd.DataFrame(rows)


def ablation_variants(params: dict) -> dict[str, dict[str, tuple[str, dict]]]:
    """The variants of the VIR ablation tables chosen in ``params["tables"]`` (a ``vir_ablation``
    parameter set): table -> {row label: (defense, overrides)}. Rows not varied keep the paper's
    defaults (VIR §5.3)."""
    at, trades = DEFENSES["vir_at"][1], DEFENSES["vir_trades"][1]
    tables = {
        "T6": {"plain": ("at", {}), "sv": ("vir_at", {"vir_use": "sv"}), "sd": ("vir_at", {"vir_use": "sd"}),
               "full": ("vir_at", {}), "mean (ours)": ("vir_at_mean", {}), "norm (ours)": ("vir_at_norm", {})},
        "T7": {"plain": ("trades", {}), "sv": ("vir_trades", {"vir_use": "sv"}),
               "sd": ("vir_trades", {"vir_use": "sd"}), "full": ("vir_trades", {}),
               "mean (ours)": ("vir_trades_mean", {}), "norm (ours)": ("vir_trades_norm", {})},
        "T9": {f"beta={b:g}": ("vir_at", {"vir_beta": b}) for b in params["at_betas"]},
        "T10": {f"beta={b:g}": ("vir_trades", {"vir_beta": b}) for b in params["trades_betas"]},
        "T11": {**{f"alpha={a:g},gamma={at['vir_gamma']:g}": ("vir_at", {"vir_alpha": a}) for a in params["at_alphas"]},
                **{f"alpha={at['vir_alpha']:g},gamma={g:g}": ("vir_at", {"vir_gamma": g}) for g in params["at_gammas"]}},
        "T12": {**{f"alpha={a:g},gamma={trades['vir_gamma']:g}": ("vir_trades", {"vir_alpha": a})
                   for a in params["trades_alphas"]},
                **{f"alpha={trades['vir_alpha']:g},gamma={g:g}": ("vir_trades", {"vir_gamma": g})
                   for g in params["trades_gammas"]}},
    }
    return {t: v for t, v in tables.items() if t in params["tables"]}


def train_variants(tables: dict, *, params: dict, dataset: Dataset, seeds: list[int], device,
                   on_model=None) -> dict[int, dict[str, TrainedModel]]:
    """Every variant of ``tables`` (from :func:`ablation_variants`) for every seed, labelled
    ``"<table>:<row>"``, forking from the shared burn-ins of ``params`` (a ``vir_main`` set)."""
    variants = {f"{t}:{label}": job for t, jobs in tables.items() for label, job in jobs.items()}
    out = {}
    for seed in seeds:
        out[seed] = train_defenses([], params=params, dataset=dataset, seed=seed, device=device, variants=variants)
        for m in out[seed].values():
            if on_model is not None:
                on_model(m)
    return out


def wide_data_cost(*, images: float = 20e6, epochs: int = 400, attack_steps: int = 10,
                   gflops_per_image: float = 5.25) -> pd.DataFrame:
    """What VIR Table 8 (WRN-28-10 on 20M generated images) would cost: passes, FLOPs (forward x3
    for backward, per attack step and update), days on a 200 TFLOP/s GPU, years on 2 CPU cores at
    50 GFLOP/s, and the images' size on disk."""
    passes = images * epochs * (attack_steps + 1)
    flops = passes * 3 * gflops_per_image * 1e9
    return pd.DataFrame([
        {"quantity": "image passes (images x epochs)", "value": f"{images * epochs:.1e}"},
        {"quantity": f"forward-backward passes ({attack_steps}-step attack + update)", "value": f"{passes:.1e}"},
        {"quantity": "floating-point operations", "value": f"{flops:.1e}"},
        {"quantity": "days on one GPU at a sustained 200 TFLOP/s", "value": f"{flops / 2e14 / 86400:.0f}"},
        {"quantity": "years on 2 CPU cores at a sustained 50 GFLOP/s", "value": f"{flops / 5e10 / 86400 / 365:.0f}"},
        {"quantity": "generated images on disk (uint8, GB)", "value": f"{images * 3072 / 1e9:.0f}"},
    ])
