"""Several seeds of trained defenses evaluated on the same test images."""
from __future__ import annotations

import pandas as pd
import torch

from advbook.evaluation import compare

__all__ = ["evaluate_seeds", "evaluate_variants", "train_evaluate_on", "on_datasets"]


def evaluate_seeds(trained: dict[int, dict], *, names: list[str], x: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor, attacks: dict, batch_size: int,
                   unit: str = "defense") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`compare.evaluate_models` for the models ``names`` of every seed of ``trained``
    (seed -> name -> TrainedModel). Returns (accuracy rows, per-sample flags, seconds), each with a
    ``seed`` column and the model name in a ``unit`` column."""
    parts = [compare.evaluate_models({n: models[n] for n in names if n in models}, x=x, y=y, index=index,
                                     attacks=attacks, batch_size=batch_size, seed=seed)
             for seed, models in trained.items()]
    return tuple(pd.concat(p, ignore_index=True).rename(columns={"model": unit}) for p in zip(*parts))


def evaluate_variants(trained: dict[int, dict], *, white: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      black: tuple[torch.Tensor, torch.Tensor, torch.Tensor], white_attacks: dict, black_attacks: dict,
                      black_tables: tuple[str, ...], batch_size: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The ablation variants (``"<table>:<row>"`` -> model, per seed) under the white-box suite on
    ``white = (x, y, index)`` and, for ``black_tables``, the black-box suite on ``black``. Returns
    (accuracy rows without ``worst`` and without the black-box subset's duplicate ``natural``,
    per-sample flags, seconds), with ``table``, ``variant`` and ``seed`` columns."""
    parts = []
    for seed, models in trained.items():
        for name, m in models.items():
            table, variant = name.split(":", 1)
            parts.append(compare.evaluate_models({variant: m}, x=white[0], y=white[1], index=white[2],
                                                 attacks=white_attacks, batch_size=batch_size, table=table, seed=seed))
            if table in black_tables:   # natural and worst of the black-box subset would count its images twice
                rows, flags, secs = compare.evaluate_models({variant: m}, x=black[0], y=black[1], index=black[2],
                                                            attacks=black_attacks, batch_size=batch_size, table=table,
                                                            seed=seed)
                parts.append((rows, flags.assign(natural=None, worst=None), secs))
    results, flags, seconds = (pd.concat(p, ignore_index=True).rename(columns={"model": "variant"}) for p in zip(*parts))
    results = results[~results.evaluation.isin(["worst"]) & ~(results.evaluation.eq("natural") & results.duplicated(
        ["table", "variant", "seed", "evaluation"]))]
    return results, flags, seconds


def train_evaluate_on(dataset, *, names: list[str], params: dict, model: str, seeds: list[int], n: int,
                      attacks: dict, device, on_model=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``names`` trained with ``params`` but architecture ``model`` on ``dataset`` (cached, shared
    burn-ins), for every seed, and evaluated on ``n`` class-balanced test images. Returns
    (accuracy rows, per-sample flags) with ``defense`` and ``seed`` columns."""
    from advbook.data.cifar import balanced_subset

    index = balanced_subset(dataset.test.labels, n_per_class=n // len(dataset.classes), seed=params["seed"])
    return compare.train_and_evaluate(names, params={**params, "model": model}, dataset=dataset, seeds=seeds,
                                      device=device, index=index, attacks=attacks, on_model=on_model)


def on_datasets(names: list[str], *, defenses: list[str], params: dict, seeds: list[int], n: int, attacks: dict,
                device, on_model=None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """:func:`train_evaluate_on` for every dataset of ``names`` that is available (VIR Tables 3-4),
    with ``params["model"]``. Returns (accuracy rows with evaluations named ``<dataset>:<evaluation>``,
    flags with a ``dataset`` column, and a status line per dataset: run, or why not)."""
    from advbook.data.cifar import DatasetUnavailable
    from advbook.data.registry import load_dataset

    results, flags, status = [], [], {}
    for name in names:
        try:
            dataset = load_dataset(name)
        except DatasetUnavailable as exc:
            status[name] = f"not run: dataset not available ({exc})"
            continue
        res, fl = train_evaluate_on(dataset, names=defenses, params=params, model=params["model"], seeds=seeds, n=n,
                                    attacks=attacks, device=device, on_model=on_model)
        results.append(res.assign(evaluation=name + ":" + res.evaluation, dataset=name))
        flags.append(fl.assign(dataset=name))
        status[name] = f"run ({dataset.name}, {len(dataset.train)} training images available)"
    empty = pd.DataFrame()
    return (pd.concat(results, ignore_index=True) if results else empty,
            pd.concat(flags, ignore_index=True) if flags else empty, status)
