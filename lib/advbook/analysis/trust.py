"""Trust scores and flagging (HOL §7–8).

* normalised DDB, Eq. 1: ``(d - min) / (max - min)`` — high is far from the boundary;
* reversed normalised flipping frequency, Eq. 2: ``1 - (F - min) / (max - min)`` — high is
  reliance on low frequencies;
* trust score T, Eq. 3: their harmonic mean, ``2 d F / (d + F + eps)`` with ``eps = 1e-5``;
* two-cluster K-means on a score; the cluster with the higher centroid is "trust", the
  other is flagged for a human;
* flagging accuracy, Eq. 4: the percentage of flagged samples that the model got wrong.

The paper does not say which samples fix the min/max and the clusters. Every function takes
an optional ``reference`` (a calibration split): min/max and centroids are fitted on it and
applied to the evaluated samples, whose normalised values are then clipped to [0, 1]. Without
it, the evaluated samples are their own reference (the transductive reading).
"""
from __future__ import annotations

import numpy as np

__all__ = ["normalised", "normalised_ddb", "reversed_normalised_ff", "trust_score", "kmeans_flags",
           "flagging_accuracy", "flagging_report", "score_frame", "flagging_rows", "measure", "score_model"]


def _arr(v) -> np.ndarray:
    return np.asarray(v, dtype=float).ravel()


def normalised(values, *, reference=None) -> np.ndarray:
    """Min-max scaling with the min and max of ``reference`` (default: ``values``), clipped to [0, 1]."""
    values = _arr(values)
    ref = values if reference is None else _arr(reference)
    if ref.size == 0:
        raise ValueError("cannot normalise against an empty reference")
    lo, hi = ref.min(), ref.max()
    if hi == lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def normalised_ddb(ddb, *, reference=None) -> np.ndarray:
    """Eq. 1."""
    return normalised(ddb, reference=reference)


def reversed_normalised_ff(ff, *, reference=None) -> np.ndarray:
    """Eq. 2."""
    return 1.0 - normalised(ff, reference=reference)


def trust_score(d_hat, f_hat, *, eps: float = 1e-5) -> np.ndarray:
    """Eq. 3: the harmonic mean of normalised DDB and reversed normalised flipping frequency."""
    d_hat, f_hat = _arr(d_hat), _arr(f_hat)
    if d_hat.shape != f_hat.shape:
        raise ValueError(f"d_hat and f_hat must have the same length, got {d_hat.shape} and {f_hat.shape}")
    return 2 * d_hat * f_hat / (d_hat + f_hat + eps)


def kmeans_flags(scores, *, reference=None, seed: int = 0) -> np.ndarray:
    """Two-cluster K-means on a 1-D score; True where a sample falls in the low ("non-trust") cluster."""
    from sklearn.cluster import KMeans

    scores = _arr(scores)
    ref = scores if reference is None else _arr(reference)
    if np.unique(ref).size < 2:
        return np.zeros(scores.shape, dtype=bool)  # nothing to separate: flag nothing
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(ref[:, None])
    trust = int(np.argmax(km.cluster_centers_.ravel()))
    return km.predict(scores[:, None]) != trust


def flagging_accuracy(flagged, wrong) -> float:
    """Eq. 4: percentage of flagged samples that are wrong predictions (NaN if none is flagged)."""
    flagged, wrong = np.asarray(flagged, bool), np.asarray(wrong, bool)
    return float(100.0 * wrong[flagged].mean()) if flagged.any() else float("nan")


def flagging_report(scores, wrong, *, flagged=None, reference=None, seed: int = 0) -> dict:
    """Flagging accuracy plus what the paper does not report: recall of wrong predictions,
    the share flagged, and the AUROC of the score for predicting a wrong prediction (low score
    = more likely wrong), which does not depend on one K-means split."""
    from sklearn.metrics import roc_auc_score

    scores, wrong = _arr(scores), np.asarray(wrong, bool)
    if flagged is None:
        flagged = kmeans_flags(scores, reference=reference, seed=seed)
    flagged = np.asarray(flagged, bool)
    auroc = float(roc_auc_score(wrong, -scores)) if 0 < wrong.sum() < len(wrong) else float("nan")
    return {"flagging_accuracy": flagging_accuracy(flagged, wrong),
            "recall": float(100.0 * flagged[wrong].mean()) if wrong.any() else float("nan"),
            "flagged_share": float(100.0 * flagged.mean()), "n_flagged": int(flagged.sum()),
            "n": int(len(scores)), "auroc": auroc}


def score_frame(*, ddb: dict, ff, reference=None) -> "pd.DataFrame":
    """Per-sample scores for every DDB estimate: ``d_hat_<attack>``, ``f_hat`` and ``T_<attack>``.

    ``ddb`` maps an attack name to per-sample DDB; ``ff`` is the flipping frequency;
    ``reference`` is a boolean mask of the rows whose min and max fix the normalisation
    (default: all rows).
    """
    import pandas as pd

    ff = _arr(ff)
    ref = np.ones(len(ff), bool) if reference is None else np.asarray(reference, bool)
    out = {"f_hat": reversed_normalised_ff(ff, reference=ff[ref])}
    for name, d in ddb.items():
        d = _arr(d)
        out[f"d_hat_{name}"] = normalised_ddb(d, reference=d[ref])
        out[f"T_{name}"] = trust_score(out[f"d_hat_{name}"], out["f_hat"])
    return pd.DataFrame(out)


def flagging_rows(scores: "pd.DataFrame", wrong, *, evaluate=None, reference=None, seed: int = 0) -> list[dict]:
    """One :func:`flagging_report` per score column, K-means fitted on ``reference`` rows and
    applied to ``evaluate`` rows (boolean masks; default: all rows for both)."""
    wrong = np.asarray(wrong, bool)
    n = len(wrong)
    ev = np.ones(n, bool) if evaluate is None else np.asarray(evaluate, bool)
    ref = np.ones(n, bool) if reference is None else np.asarray(reference, bool)
    rows = []
    for column in scores.columns:
        s = scores[column].to_numpy(float)
        rep = flagging_report(s[ev], wrong[ev], reference=s[ref], seed=seed)
        rows.append({"score": column, **rep})
    return rows


def measure(model, x, *, attacks: dict, attack_batch_size: int, batch_size_eval: int) -> dict:
    """The raw ingredients of the scores for inputs ``x``: the model's prediction, the DDB by each
    attack (name -> keyword arguments) moving away from that prediction, and the flipping
    frequency. A sample an attack cannot flip gets the largest DDB that attack observed (it is at
    least that far). Returns numpy arrays: ``pred``, ``ddb`` (a dict per attack) and ``ff``."""
    from advbook.analysis import frequency
    from advbook.analysis import vulnerability
    from advbook.models.predict import predict

    pred = predict(model, x).argmax(1)
    measured = vulnerability.ddb_and_steps(model, x, pred.to(x.device), attacks=attacks,
                                           batch_size=attack_batch_size)
    ddb = {a: measured[f"ddb_{a}"].where(measured[f"success_{a}"], measured[f"ddb_{a}"].max()).to_numpy()
           for a in attacks}
    ff = frequency.flipping_frequency(model, x, batch_size=batch_size_eval).numpy()
    return {"pred": pred.numpy(), "ddb": ddb, "ff": ff}


def score_model(model, x, y, *, attacks: dict, calibration, attack_batch_size: int, batch_size_eval: int,
                seed: int = 0) -> tuple[list[dict], "pd.DataFrame"]:
    """Everything HOL Table 2 needs for one model on inputs ``x`` with labels ``y`` (CPU tensor).

    The ingredients of :func:`measure`, the scores, and the flagging reports under two
    protocols: ``calibrated`` (min/max and clusters fitted on the ``calibration`` rows, flags
    judged on the others) and ``transductive`` (fitted and judged on all rows).
    Returns ``(rows, per_sample)``.
    """
    import pandas as pd

    calibration = np.asarray(calibration, bool)
    m = measure(model, x, attacks=attacks, attack_batch_size=attack_batch_size, batch_size_eval=batch_size_eval)
    pred, ddb, ff = m["pred"], m["ddb"], m["ff"]
    wrong = pred != y.numpy()
    rows = []
    for protocol, ref, ev in (("calibrated", calibration, ~calibration), ("transductive", None, None)):
        scores = score_frame(ddb=ddb, ff=ff, reference=ref)
        rows += [{"protocol": protocol, "clean_acc": 100 * (1 - wrong.mean()), **r}
                 for r in flagging_rows(scores, wrong, reference=ref, evaluate=ev, seed=seed)]
    per_sample = pd.concat([pd.DataFrame({
        "label": y.numpy(), "prediction": pred, "wrong": wrong, "calibration": calibration,
        **{f"ddb_{a}": d for a, d in ddb.items()}, "flipping_frequency": ff}),
        score_frame(ddb=ddb, ff=ff, reference=calibration)], axis=1)
    return rows, per_sample


def calibration_mask(n: int, *, share: float, seed: int) -> np.ndarray:
    """A seeded random ``share`` of ``n`` samples that fixes the normalisation and the clusters;
    the other samples are the ones whose flags are judged (HOL §8, calibrated protocol)."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[: int(share * n)]] = True
    return mask


def split_attack(results: "pd.DataFrame") -> "pd.DataFrame":
    """Score names such as ``T_pgd`` split into ``score`` (``T``) and ``attack`` (``pgd``);
    ``f_hat`` uses no attack (``both``)."""
    out = results.copy()
    out["attack"] = out["score"].str.extract(r"_(pgd|deepfool)$", expand=False).fillna("both")
    out["score"] = out["score"].str.replace(r"_(pgd|deepfool)$", "", regex=True)
    return out


def score_models(models: dict, x, y, *, keys: tuple[str, ...] = ("model",), index=None, attacks: dict, calibration,
                 attack_batch_size: int, batch_size_eval: int, seed: int = 0):
    """:func:`score_model` for every model of ``models`` (key -> network; a tuple key gives one
    column per name of ``keys``) on the same inputs. Returns ``(results, samples)``: flagging
    reports with ``score`` and ``attack`` split, and the per-sample scores with ``index``."""
    import pandas as pd

    rows, per_sample = [], []
    for key, model in models.items():
        cols = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        r, s = score_model(model, x, y, attacks=attacks, calibration=calibration, seed=seed,
                           attack_batch_size=attack_batch_size, batch_size_eval=batch_size_eval)
        rows += [{**cols, **row} for row in r]
        per_sample.append(s.assign(**cols, **({"index": np.asarray(index)} if index is not None else {})))
    return split_attack(pd.DataFrame(rows)), pd.concat(per_sample, ignore_index=True)


def expand_both(results: "pd.DataFrame") -> "pd.DataFrame":
    """Rows of the attack-free score (``attack == "both"``) repeated under every attack, as the
    paper prints ``f_hat`` in both columns of Table 2."""
    import pandas as pd

    attacks = sorted(set(results["attack"]) - {"both"})
    both = results[results["attack"] == "both"]
    return pd.concat([results[results["attack"] != "both"], *(both.assign(attack=a) for a in attacks)],
                     ignore_index=True)
