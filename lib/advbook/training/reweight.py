"""Instance-reweighting functions of adversarial training, as pure functions of model outputs.

Each returns per-sample weights (detached: a weight is a value, not a path for gradients),
so that they can be tested on hand-computed cases and recorded for audit.

* GAIRAT (Zhang et al., 2021), VIR Eq. 2: ``(1 + tanh(lam + 5 (1 - 2 kappa / K))) / 2`` with
  ``kappa`` the PGD iterations during which the sample was still classified correctly; the
  reference code (``GAIR.py``) writes ``5 (K//2 - kappa) / (K//2)`` and then normalises the
  weights to mean 1 over the batch. We follow the code.
* MAIL (Wang et al., 2021), VIR Eq. 3–4: ``sigmoid(-slope (PM - bias))`` in the paper's notation
  with ``PM = p_y(x') - max_{j != y} p_j(x')``. The reference code (``mail_loss.py``) computes
  ``sigmoid(slope (max_{j != y} p_j - p_y + bias))``, which is the same function with the same
  sign of ``bias``, and multiplies by 3 instead of normalising. We follow the code, with the
  settings of its README's MAIL-AT command (``--bias -0.5 --slope 10``, README.md line 55 at
  commit 8367c64), not ``train.py``'s argparse defaults (-1.5 and 1.0, lines 57-60), which serve
  its default method ``trades_mail``.
* VIR (Fakorede et al., 2023), Eq. 5–7: ``S_v = alpha exp(-gamma p_y(x))`` on the natural
  input, ``S_d = KL(f(x) || f(x'))`` per sample, ``w = S_v S_d + beta``. No reference code is
  public; we follow the paper and return the parts for audit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advbook.attacks.core import margin

__all__ = ["gair_weights", "probability_margin", "mail_weights", "vir_parts", "kl_per_sample"]


@torch.no_grad()
def gair_weights(kappa: torch.Tensor, *, steps: int, lam: float) -> torch.Tensor:
    """GAIRAT's tanh weights from the count ``kappa`` (0..steps), normalised to mean 1."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    half = steps // 2
    w = (torch.tanh(lam + (half - kappa.float()) * 5.0 / half) + 1.0) / 2.0
    return w * len(w) / w.sum()


@torch.no_grad()
def probability_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y - max_{j != y} p_j`` per sample (in [-1, 1]; negative means misclassified)."""
    return margin(logits.float().softmax(1), y)


@torch.no_grad()
def mail_weights(logits_adv: torch.Tensor, y: torch.Tensor, *, bias: float, slope: float,
                 scale: float = 3.0) -> torch.Tensor:
    """MAIL's weights as in its reference code: ``scale * sigmoid(slope * (-PM + bias))``."""
    return scale * torch.sigmoid(slope * (-probability_margin(logits_adv, y) + bias))


def kl_per_sample(*, logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(logits_p) || softmax(logits_q))`` per sample. Keyword-only: the divergence is
    not symmetric, and a swap of the two same-shaped logits would go unnoticed."""
    log_p, log_q = F.log_softmax(logits_p.float(), 1), F.log_softmax(logits_q.float(), 1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


@torch.no_grad()
def vir_parts(*, logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, alpha: float,
              gamma: float, beta: float) -> dict[str, torch.Tensor]:
    """VIR Eq. 5–7 per sample: ``p_y`` (natural), ``S_v``, ``S_d`` and the weight ``w``. Keyword-only:
    ``S_v`` reads the natural logits alone, so a swap of the two would change the weights silently."""
    p_y = logits_nat.float().softmax(1).gather(1, y[:, None]).squeeze(1)
    s_v = alpha * torch.exp(-gamma * p_y)
    s_d = kl_per_sample(logits_p=logits_nat, logits_q=logits_adv)
    return {"p_y": p_y, "S_v": s_v, "S_d": s_d, "w": s_v * s_d + beta}
