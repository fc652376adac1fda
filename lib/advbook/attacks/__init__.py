"""Layer 2: threat models and attacks.

* ``core``: PGD (L-inf, L2), DeepFool, sign ascent, the per-sample :class:`AttackResult`;
  ``threats``: the threat-model registry; ``mde`` and ``spsa``: MD and SPSA (VIR chapter).
* LEC chapter, one module per method: ``fgsm`` (untargeted and targeted), ``cw`` (C&W-L2, not the
  VIR chapter's "CW", which is PGD on the CW margin loss), ``jsma``, ``universal``, ``flow`` (stAdv),
  ``colour`` (functional colour), ``zoo`` (zeroth-order gradient estimates), ``boundary`` (hard-label
  boundary search), ``square_trace`` (Square's accuracy against queries), ``adaptive`` (EOT, BPDA
  and margin PGD: attacks that see through randomised or non-differentiable defenses).

Only the most used names are re-exported here; the rest are imported from their modules.
"""
from advbook.attacks.core import (ATTACKS, AttackResult, deepfool, get_attack, linf_start, margin, pgd, run_batched,
                                  sign_ascent, without_true)
from advbook.attacks.threats import THREATS, get_threat
from advbook.attacks.fgsm import fgsm
from advbook.attacks.cw import cw_l2
from advbook.attacks.jsma import jsma
from advbook.attacks.universal import universal_perturbation
from advbook.attacks.adaptive import BPDA, EOT

__all__ = ["ATTACKS", "AttackResult", "deepfool", "get_attack", "linf_start", "margin", "pgd", "run_batched",
           "sign_ascent", "without_true", "THREATS", "get_threat", "fgsm", "cw_l2", "jsma", "universal_perturbation",
           "BPDA", "EOT"]
