"""Layer 2: threat models and attacks (PGD, DeepFool, sign ascent, MD, SPSA)."""
from advbook.attacks.core import (ATTACKS, AttackResult, deepfool, get_attack, linf_start, margin, pgd, run_batched,
                                  sign_ascent, without_true)
from advbook.attacks.threats import THREATS, get_threat

__all__ = ["ATTACKS", "AttackResult", "deepfool", "get_attack", "linf_start", "margin", "pgd", "run_batched",
           "sign_ascent", "without_true", "THREATS", "get_threat"]
