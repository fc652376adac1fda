"""A 2-D toy problem where attack paths can be drawn (HOL §5, Fig. 3).

Two interleaved half-moons scaled into [0, 1]^2, a small MLP trained on them full-batch,
attack paths recorded iterate by iterate, and the search for two points that lie at about
the same distance from the boundary but need different numbers of attack steps.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advbook.attacks.core import pgd

__all__ = ["moons", "ToyMLP", "train_toy", "pgd_path", "boundary_distance", "equal_ddb_pair", "decision_grid"]


def moons(*, n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of two interleaved half-moons with Gaussian ``noise``, scaled into [0.1, 0.9]^2."""
    g = np.random.default_rng(seed)
    half = n // 2
    t0, t1 = np.pi * g.random(half), np.pi * g.random(n - half)
    upper = np.stack([np.cos(t0), np.sin(t0)], 1)
    lower = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)
    x = np.concatenate([upper, lower]) + noise * g.standard_normal((n, 2))
    y = np.concatenate([np.zeros(half), np.ones(n - half)]).astype(np.int64)
    x = (x - np.array([-1.2, -0.8])) / np.array([3.4, 2.1])  # the moons span about [-1.2, 2.2] x [-0.8, 1.3]
    x = np.clip(x, 0.0, 1.0) * 0.8 + 0.1
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


class ToyMLP(nn.Module):
    """2 -> hidden -> hidden -> 2 with tanh units: smooth, curved decision boundaries."""

    def __init__(self, *, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net((x - 0.5) * 4)  # centre and scale inside the model, as for images


def train_toy(x: torch.Tensor, y: torch.Tensor, *, hidden: int, epochs: int, lr: float, seed: int) -> ToyMLP:
    """Full-batch Adam on cross-entropy; deterministic for a seed."""
    torch.manual_seed(seed)
    model = ToyMLP(hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def pgd_path(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """``(steps + 1, N, ...)`` PGD iterates, each sample frozen after its first flip.

    Runs PGD once per prefix length (quadratic in ``steps``): meant for drawing small examples.
    """
    steps = kwargs.pop("steps")
    kwargs.pop("stop_on_success", None)
    return torch.stack([x] + [pgd(model, x, y, steps=t, stop_on_success=True, **kwargs).x_adv
                              for t in range(1, steps + 1)])


@torch.no_grad()
def boundary_distance(model: nn.Module, x: torch.Tensor, *, resolution: int = 400) -> torch.Tensor:
    """Distance from each 2-D point to the nearest grid point of [0, 1]^2 with another prediction.

    In two dimensions the distance to the decision boundary can be measured directly instead of
    estimated by an attack: exact up to the grid spacing ``1 / (resolution - 1)``.
    """
    lin = torch.linspace(0, 1, resolution)
    grid = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1).reshape(-1, 2)
    grid_pred = model(grid).argmax(1)
    own = model(x).argmax(1)
    out = torch.empty(len(x))
    for i in range(len(x)):
        other = grid[grid_pred != own[i]]
        out[i] = (other - x[i]).norm(dim=1).min() if len(other) else float("inf")
    return out


def equal_ddb_pair(ddb, steps, *, rel_tol: float) -> tuple[int, int]:
    """Indices of two samples whose DDB differ by at most ``rel_tol`` (relative) and whose steps
    differ the most (ties: the closer DDB)."""
    ddb, steps = np.asarray(ddb, float), np.asarray(steps, float)
    close = np.abs(ddb[:, None] - ddb[None]) <= rel_tol * np.maximum(ddb[:, None], ddb[None])
    np.fill_diagonal(close, False)
    if not close.any():
        raise ValueError(f"no two samples have DDB within {rel_tol:.0%} of each other")
    gap = np.where(close, np.abs(steps[:, None] - steps[None]), -1.0)
    best = gap.max()
    candidates = np.argwhere(gap == best)
    i, j = min(candidates, key=lambda ij: abs(ddb[ij[0]] - ddb[ij[1]]))
    return (int(i), int(j)) if steps[i] <= steps[j] else (int(j), int(i))


@torch.no_grad()
def decision_grid(model: nn.Module, *, resolution: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xx, yy, p1)``: a grid over [0, 1]^2 and the model's probability of class 1 on it."""
    lin = torch.linspace(0, 1, resolution)
    xx, yy = torch.meshgrid(lin, lin, indexing="xy")
    p = F.softmax(model(torch.stack([xx.ravel(), yy.ravel()], 1)), dim=1)[:, 1]
    return xx.numpy(), yy.numpy(), p.view(resolution, resolution).numpy()


def moons_identity(x_train, y_train, x_test, y_test, *, noise: float, seed: int) -> dict:
    """The provenance record of a generated two-moons problem (sizes, noise, seed, checksum)."""
    from advbook.core.tensors import tensor_checksum

    return {"name": "two-moons", "n_train": len(x_train), "n_test": len(x_test), "noise": noise, "seed": seed,
            "sha256": tensor_checksum(x_train, y_train, x_test, y_test)}


def distance_and_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, step_size: float,
                       steps: int, seed: int, resolution: int):
    """HOL §5's per-point table: coordinates, label, prediction, the exact grid distance to the
    boundary, PGD's steps to change the prediction (budget never binding) and DeepFool's distance."""
    import pandas as pd

    from advbook.attacks.core import deepfool

    pred = model(x).argmax(1)
    ddb = boundary_distance(model, x, resolution=resolution)
    res = pgd(model, x, pred, norm=norm, eps=1.0, step_size=step_size, steps=steps, seed=seed)
    fool = deepfool(model, x, pred)
    return pd.DataFrame({"x1": x[:, 0].numpy(), "x2": x[:, 1].numpy(), "label": y.numpy(), "prediction": pred.numpy(),
                         "ddb_exact": ddb.numpy(), "steps_pgd": res.steps.numpy(), "success_pgd": res.success.numpy(),
                         "l2_pgd": res.l2.numpy(), "ddb_deepfool": fool.l2.numpy()})


def illustration_pair(samples, *, rel_tol: float) -> np.ndarray:
    """Two test points for the figure only: at distances within ``rel_tol`` of each other, the
    pair whose PGD step counts differ most. Chosen for the picture, so never used as evidence
    (the claims engine judges a window fixed in advance)."""
    ok = samples["success_pgd"].to_numpy(bool)
    idx = np.flatnonzero(ok)
    a, b = equal_ddb_pair(samples["ddb_exact"].to_numpy()[ok], samples["steps_pgd"].to_numpy()[ok], rel_tol=rel_tol)
    return idx[[a, b]]


def pair_summary(samples, pair, *, step_size: float) -> dict:
    """HOL-F3's data: the illustrated pair; over the points PGD succeeded on, Spearman's rho of
    distance and steps and the median ratio steps / straight-line steps; over all points, the median
    ratio of DeepFool's distance to the exact one (DeepFool needs no PGD success)."""
    from advbook.analysis.vulnerability import correlations

    ok = samples["success_pgd"].to_numpy(bool)
    s = samples[ok]
    corr = correlations(s["ddb_exact"], s["steps_pgd"])
    return {"pair": [int(i) for i in pair], "ddb_exact": [float(samples.loc[i, "ddb_exact"]) for i in pair],
            "steps_pgd": [int(samples.loc[i, "steps_pgd"]) for i in pair],
            "spearman_rho_all": corr["spearman_rho"], "n": corr["n"],
            "median_steps_over_straight_line": float(np.median(s["steps_pgd"] * step_size / s["ddb_exact"])),
            "median_deepfool_over_exact": float(np.median(samples["ddb_deepfool"] / samples["ddb_exact"]))}


def paths_table(paths: torch.Tensor, pair) -> "pd.DataFrame":
    """The drawn PGD paths as rows (point, step, x1, x2)."""
    import pandas as pd

    return pd.DataFrame([{"point": int(p), "step": t, "x1": float(paths[t, k, 0]), "x2": float(paths[t, k, 1])}
                         for k, p in enumerate(pair) for t in range(paths.shape[0])])
