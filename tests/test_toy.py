"""The 2-D toy of HOL §5: data, exact boundary distance, pair search, recorded paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from advbook import attacks
from advbook.analysis import toy


class VerticalBoundary(torch.nn.Module):
    """Class 1 iff x1 > 0.5: the distance to the boundary is |x1 - 0.5|."""

    def forward(self, x):
        return torch.stack([torch.zeros(len(x)), 10 * (x[:, 0] - 0.5)], dim=1)


def test_moons_are_balanced_in_the_unit_square_and_seeded():
    x, y = toy.moons(n=101, noise=0.1, seed=0)
    assert x.shape == (101, 2) and x.min() >= 0.1 and x.max() <= 0.9
    assert torch.bincount(y).tolist() == [50, 51]
    assert torch.equal(x, toy.moons(n=101, noise=0.1, seed=0)[0])


def test_boundary_distance_is_exact_up_to_the_grid():
    x = torch.tensor([[0.2, 0.3], [0.45, 0.9], [0.8, 0.5]])
    d = toy.boundary_distance(VerticalBoundary(), x, resolution=401)
    np.testing.assert_allclose(d.numpy(), [0.3, 0.05, 0.3], atol=1 / 400 + 1e-6)  # one grid spacing


def test_equal_ddb_pair_prefers_the_largest_step_gap():
    ddb = [0.10, 0.101, 0.30, 0.102, 0.50]
    steps = [10, 12, 5, 30, 99]
    assert toy.equal_ddb_pair(ddb, steps, rel_tol=0.05) == (0, 3)
    with pytest.raises(ValueError, match="no two samples have DDB within 1% of each other"):
        toy.equal_ddb_pair([0.1, 0.2], [1, 2], rel_tol=0.01)


def test_pgd_path_records_every_iterate_and_ends_where_pgd_ends():
    model = VerticalBoundary()
    x = torch.tensor([[0.32, 0.5], [0.42, 0.5]])
    y = torch.zeros(2, dtype=torch.long)
    kw = dict(norm="l2", eps=1.0, step_size=0.05)
    path = toy.pgd_path(model, x, y, steps=6, **kw)
    assert path.shape == (7, 2, 2) and torch.equal(path[0], x)
    final = attacks.pgd(model, x, y, steps=6, **kw)
    torch.testing.assert_close(path[-1], final.x_adv)
    # straight to the right in steps of 0.05; frozen after the first flip (4 and 2 steps)
    assert final.steps.tolist() == [4, 2]
    torch.testing.assert_close(path[3, 0], torch.tensor([0.47, 0.5]))
    torch.testing.assert_close(path[6, 0], path[4, 0])
    torch.testing.assert_close(path[5, 1], path[2, 1])


def test_toy_training_is_deterministic_and_fits():
    x, y = toy.moons(n=200, noise=0.1, seed=0)
    a = toy.train_toy(x, y, hidden=16, epochs=300, lr=0.02, seed=1)
    b = toy.train_toy(x, y, hidden=16, epochs=300, lr=0.02, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert (a(x).argmax(1) == y).float().mean() > 0.9
