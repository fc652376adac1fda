"""DCT tools against scipy, band masks, and the two per-sample frequency measures on hand models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.fft import dctn

from advbook.analysis import frequency


def test_dct2_matches_scipy_and_inverts():
    x = torch.rand(2, 3, 8, 6, dtype=torch.float64)
    ours = frequency.dct2(x)
    ref = dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)
    torch.testing.assert_close(frequency.idct2(ours), x)
    c = frequency.dct_matrix(8, like=x)
    torch.testing.assert_close(c @ c.T, torch.eye(8, dtype=torch.float64))


def test_band_masks_partition_the_spectrum():
    like = torch.zeros(1)
    low = frequency.band_masks(6, 6, high=False, like=like)
    high = frequency.band_masks(6, 6, high=True, like=like)
    assert low.shape == (7, 6, 6)
    torch.testing.assert_close(low + high, torch.ones_like(low))
    assert low[0].sum() == 0 and low[6].sum() == 36
    assert low[1].sum() == 1 and low[2].sum() == 4  # band k holds 2k + 1 coefficients
    assert frequency.band_index(3, 3).tolist() == [[0, 1, 2], [1, 1, 2], [2, 2, 2]]


def test_low_and_high_pass_edges_and_sum():
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(frequency.low_pass(x, 8), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(frequency.high_pass(x, 0), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(frequency.low_pass(x, 3) + frequency.high_pass(x, 3), x, atol=1e-5, rtol=0)
    stack = frequency.filtered_stack(x, high=False)
    assert stack.shape == (9, 4, 3, 8, 8)
    torch.testing.assert_close(stack[3], frequency.low_pass(x, 3))
    with pytest.raises(ValueError, match=r"k must be in \[0, 8\] for 8x8 images, got 9"):
        frequency.low_pass(x, 9)


class OneCoefficient(torch.nn.Module):
    """Predicts class 1 iff the DCT coefficient (u, v) of channel 0 exceeds a threshold."""

    def __init__(self, u: int, v: int, threshold: float = 0.5):
        super().__init__()
        self.u, self.v, self.threshold = u, v, threshold
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x):
        c = frequency.dct2(x)[:, 0, self.u, self.v]
        return torch.stack([torch.zeros_like(c), c - self.threshold], dim=1) + 0 * self.dummy


def test_flipping_frequency_and_band_requirement_on_a_one_coefficient_model():
    model = OneCoefficient(6, 2)  # band 6
    f = torch.zeros(3, 3, 8, 8)
    f[:, 0, 6, 2] = torch.tensor([1.0, 2.0, 0.1])  # the third sample is class 0 throughout
    f[:, :, 0, 0] = 4.0  # a bright DC term that the model ignores
    x = frequency.idct2(f)
    ff = frequency.flipping_frequency(model, x, batch_size=20)
    # removing bands >= k for k <= 6 drops the coefficient: the last change is at k = 6
    assert ff.tolist() == [7, 7, 0]
    req = frequency.band_requirement(model, x, batch_size=20)
    # keeping bands >= k keeps the coefficient for k <= 6; for sample 3 every k agrees (class 0)
    assert req.tolist() == [6, 6, 8]


def test_frequency_measures_do_not_depend_on_the_chunking(tiny_model, test_batch):
    x, _, _ = test_batch
    a = frequency.flipping_frequency(tiny_model, x[:20], batch_size=9)
    b = frequency.flipping_frequency(tiny_model, x[:20], batch_size=1000)
    assert torch.equal(a, b) and ((a >= 0) & (a <= 8)).all()


def test_band_accuracy_per_level_and_class():
    preds = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    labels = torch.tensor([0, 1, 1, 0])
    acc = frequency.band_accuracy(preds, labels, num_classes=3)
    torch.testing.assert_close(acc, torch.tensor([[0.5, 0.5, 0.0], [1.0, 1.0, 0.0]]))


def test_scanning_measures_equal_their_all_band_definitions(tiny_model, test_batch):
    x, _, _ = test_batch
    for high, measure in ((False, frequency.flipping_frequency), (True, frequency.band_requirement)):
        preds = frequency.band_predictions(tiny_model, x, high=high, batch_size=500)
        ks = torch.arange(preds.shape[0])[:, None].expand_as(preds)
        if high:  # R = max{k : pred_k == pred_full}, row 0 is the full image
            expected = torch.where(preds == preds[0][None], ks, torch.zeros_like(ks)).amax(0)
        else:  # F = 1 + max{k < k_max : pred_k != pred_full}, the last row is the full image
            changed = preds[:-1] != preds[-1][None]
            expected = torch.where(changed, ks[:-1] + 1, torch.zeros_like(ks[:-1])).amax(0)
        assert torch.equal(measure(tiny_model, x, batch_size=500), expected)
