"""The RRM chapter's experiments (Vaishnavi, Eykholt & Rahmati 2022): the robust teacher, the
students and baselines it is compared with, their evaluation and their measured training time.

A *method* is a way to get a robust model of the student's architecture, named by a key of
:data:`METHODS`; each maps a page's parameters to the training configuration that the project's one
training loop (:func:`advbook.training.train.train_model`) runs, so every model is cached, resumable
and keyed by everything that decides its weights:

==========  =====================================================================================
``sat``     PGD adversarial training (Madry et al.), the slides' "SAT"
``fast_pgd`` the slides' "Fast AT": in the reference code (``l_inf/train_pgd.py``) PGD with a short
            cyclic schedule (40 epochs, peak lr 0.2), not FGSM: ``fast_steps`` PGD steps for
            ``fast_epochs`` epochs, the learning rate rising to ``fast_lr`` over the first half
``fgsm_rs`` Wong, Rice & Kolter's (2020) Fast AT, FGSM from a random start: our extra row
``free_at`` Free AT (Shafahi et al. 2019), ``free_m`` replays of each minibatch
``rrm``     robust representation matching: the student matches the teacher's penultimate features
``kd_rrm``  the RRM code's KD baseline (``l_2/train_kdloss.py``: effective temperature T^2, element-wise mean KL)
``kd``      textbook KD (Hinton et al. 2015) at the same T, pure soft labels: our extra row
``rdt``     standard training on the teacher-robustified dataset (Ilyas et al. 2019)
``standard`` plain cross-entropy: the floor the transfer methods start from (ours)
==========  =====================================================================================

Every method trains the student architecture ``model`` on the same class-balanced subset
(``student_per_class`` per class, nested in the teacher's subset) with the same schedule (``epochs``,
``lr``, one-cycle), unless the method's own settings say otherwise (the Fast rows' epochs and
learning rate, Free AT's epochs). Times are measured again in every run, all methods interleaved on
the same machine (:func:`advbook.training.timing.time_training`): a cached model's recorded training
time is kept as provenance, but the claims compare the times measured together.
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from advbook.data.cifar import Dataset, balanced_subset, to_float
from advbook.evaluation.evaluate import evaluate
from advbook.training import robust_data, timing
from advbook.training.train import TrainConfig, TrainedModel, train_model

__all__ = ["METHODS", "NEEDS_TEACHER", "teacher_config", "train_teacher", "student_index", "method_config",
           "train_methods", "evaluate_methods", "time_methods", "time_summary", "speedup_table", "check_methods",
           "method_label", "LABELS", "test_images", "rdt_data",
           "grid_ends", "lambda_study", "parameter_counts", "capacity_roles", "capacity_study", "beside_rows",
           "accuracy_table", "accuracy_of", "rdt_summary", "feature_agreement", "lambda_table"]

LABELS = {"sat": "SAT", "fast_pgd": "Fast AT (PGD, as the slides)", "fgsm_rs": "Fast AT (FGSM-RS, Wong et al.)",
          "free_at": "Free AT", "rrm": "RRM", "kd_rrm": "KD (RRM code)", "kd": "KD (textbook)", "rdt": "RDT",
          "standard": "standard", "teacher": "teacher (SAT)"}


def method_label(name: str) -> str:
    return LABELS.get(name, name)


def _schedule(P: dict, **over) -> dict:
    return dict(epochs=P["epochs"], batch_size=P["batch_size"], lr=P["lr"], weight_decay=P["weight_decay"]) | over


def _attack(P: dict) -> dict:
    return dict(at_eps=P["at_eps"])


def _sat(P):
    return TrainConfig.build(objective="pgd_at", **_schedule(P, epochs=P["sat_epochs"]), at_norm=P["threat"], **_attack(P),
                             at_step_size=P["at_step_size"], at_steps=P["at_steps"])


def _fast_pgd(P):
    return TrainConfig.build(objective="pgd_at", **_schedule(P, epochs=P["fast_epochs"], lr=P["fast_lr"], warmup=0.5),
                             at_norm=P["threat"], **_attack(P), at_step_size=P["at_step_size"],
                             at_steps=P["fast_steps"])


def _fgsm_rs(P):
    return TrainConfig.build(objective="fgsm_rs", **_schedule(P, epochs=P["fast_epochs"], lr=P["fast_lr"], warmup=0.5),
                             **_attack(P), fgsm_alpha=P["fgsm_alpha"])


def _free_at(P):
    return TrainConfig.build(objective="free_at", **_schedule(P, epochs=P["free_epochs"]), **_attack(P),
                             free_m=P["free_m"])


METHODS: dict[str, Callable[[dict], TrainConfig]] = {
    "sat": _sat,
    "fast_pgd": _fast_pgd,
    "fgsm_rs": _fgsm_rs,
    "free_at": _free_at,
    "rrm": lambda P: TrainConfig.build(objective="rrm", **_schedule(P), rrm_lambda=P["rrm_lambda"]),
    "kd_rrm": lambda P: TrainConfig.build(objective="kd_rrm", **_schedule(P), kd_tau=P["kd_tau"]),
    "kd": lambda P: TrainConfig.build(objective="kd", **_schedule(P), kd_tau=P["kd_tau"], kd_lambda=0.0),
    "rdt": lambda P: TrainConfig.build(objective="standard", **_schedule(P)),
    "standard": lambda P: TrainConfig.build(objective="standard", **_schedule(P)),
}
NEEDS_TEACHER = ("rrm", "kd_rrm", "kd", "rdt")


def check_methods(names) -> None:
    """Refuse an unknown method in one line naming the valid ones, before any work."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(METHODS)}")


def method_config(name: str, P: dict) -> TrainConfig:
    check_methods([name])
    return METHODS[name](P)


def teacher_config(P: dict) -> TrainConfig:
    """PGD-AT with the ``teacher_*`` settings. With the values of HOL §6's robust model (``hol_freq``)
    of the same profile, the key is that model's, so the cached model is reused."""
    return TrainConfig.build(objective="pgd_at", epochs=P["teacher_epochs"], batch_size=P["batch_size"],
                             lr=P["teacher_lr"], weight_decay=P["weight_decay"], at_norm=P["teacher_at_norm"],
                             at_eps=P["teacher_at_eps"], at_step_size=P["teacher_at_step_size"],
                             at_steps=P["teacher_at_steps"])


def _teacher_index(P: dict, dataset: Dataset) -> torch.Tensor:
    return balanced_subset(dataset.train.labels, n_per_class=P["teacher_per_class"], seed=P["seed"])


def train_teacher(P: dict, *, dataset: Dataset, device) -> TrainedModel:
    return train_model(model_name=P["teacher_model"], dataset=dataset, cfg=teacher_config(P), seed=P["seed"],
                       train_index=_teacher_index(P, dataset), device=device)


def student_index(P: dict, dataset: Dataset) -> torch.Tensor:
    """The students' training images: ``student_per_class`` per class, drawn with the teacher's seed,
    so they are the first of the teacher's (:func:`~advbook.data.cifar.balanced_subset` draws one
    permutation per class): the teacher has seen every image a student is trained on."""
    if P["student_per_class"] > P["teacher_per_class"]:
        raise ValueError(f"student_per_class ({P['student_per_class']}) must not exceed teacher_per_class "
                         f"({P['teacher_per_class']}): the students learn from images the teacher was trained on")
    return balanced_subset(dataset.train.labels, n_per_class=P["student_per_class"], seed=P["seed"])


def rdt_data(P: dict, *, dataset: Dataset, teacher: TrainedModel, device) -> robust_data.RobustData:
    """The teacher-robustified copy of the students' training images (cached)."""
    return robust_data.robust_dataset(teacher=teacher, dataset=dataset, train_index=student_index(P, dataset),
                                      steps=P["rdt_steps"], step_size=P["rdt_step_size"], seed=P["seed"],
                                      batch_size=P["rdt_batch_size"], device=device)


def train_methods(names, *, P: dict, dataset: Dataset, teacher: TrainedModel | None, device,
                  model_name: str | None = None, configs: dict[str, TrainConfig] | None = None,
                  rdt: robust_data.RobustData | None = None, on_model=None) -> dict[str, TrainedModel]:
    """Train (or load) each method in ``names`` on the students' images; ``configs`` (label ->
    config) adds variants, e.g. RRM at several lambdas. ``rdt`` trains on the robustified set."""
    names = list(names)
    check_methods(names)
    if teacher is None and any(n in NEEDS_TEACHER for n in names):
        raise ValueError(f"methods {', '.join(n for n in names if n in NEEDS_TEACHER)} need a teacher")
    index = student_index(P, dataset)
    jobs = {n: method_config(n, P) for n in names} | dict(configs or {})
    out = {}
    for label, cfg in jobs.items():
        if label == "rdt":
            data = rdt if rdt is not None else rdt_data(P, dataset=dataset, teacher=teacher, device=device)
            m = train_model(model_name=model_name or P["model"], dataset=data.dataset, cfg=cfg, seed=P["seed"],
                            device=device)
        else:
            m = train_model(model_name=model_name or P["model"], dataset=dataset, cfg=cfg, seed=P["seed"],
                            train_index=index, device=device, teacher=teacher)
        out[label] = m
        if on_model is not None:
            on_model(m)
    return out


def evaluate_methods(models: dict[str, TrainedModel], *, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                     P: dict, extra: dict[str, dict] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Natural accuracy and APGD-CE (``apgd_steps`` steps, ``apgd_restarts`` restarts, the page's
    threat at ``eval_eps``) of every model on the same test images. Returns the accuracy rows
    (method, evaluation, accuracy, seed, n, seconds) and the per-image flags (seed, index, method,
    evaluation, robust), plus any columns of ``extra[method]`` (e.g. lambda) on both."""
    attack = {"apgd_ce": dict(eps=P["eval_eps"], norm={"linf": "Linf", "l2": "L2"}[P["threat"]],
                              steps=P["apgd_steps"], restarts=P["apgd_restarts"], seed=P["seed"])}
    rows, flags = [], []
    for name, m in models.items():
        res = evaluate(m.model, x, y, attacks=attack, batch_size=P["eval_batch_size"])
        more = (extra or {}).get(name, {})
        for evaluation in ("natural", "apgd_ce"):
            robust = res.robust[evaluation].to_numpy(bool)
            rows.append({"method": name, "evaluation": evaluation, "accuracy": 100 * robust.mean(), "seed": P["seed"],
                         "n": len(robust), "seconds": res.seconds.get(evaluation, 0.0), **more})
            flags.append(pd.DataFrame({"seed": P["seed"], "index": index.numpy(), "method": name,
                                       "evaluation": evaluation, "robust": robust, **more}))
    return pd.DataFrame(rows), pd.concat(flags, ignore_index=True)


def time_methods(names, *, P: dict, dataset: Dataset, teacher: TrainedModel | None, device,
                 with_teacher: bool = True, models: dict[str, str] | None = None) -> pd.DataFrame:
    """Seconds per epoch and per run of each method, measured now, interleaved (``timing_repeats``
    rounds of ``timing_batches`` batches each); with ``with_teacher`` the teacher's own training
    (its architecture, images and epochs) is timed too, as method ``teacher``. ``models`` maps a
    label to another architecture (the capacity study), timed with RRM's configuration."""
    runs = {}
    for n in names:
        runs[n] = {"model_name": P["model"], "cfg": method_config(n, P),
                   "teacher": teacher if n in NEEDS_TEACHER and n != "rdt" else None}
    for label, arch in (models or {}).items():
        runs[label] = {"model_name": arch, "cfg": method_config("rrm", P), "teacher": teacher}
    if with_teacher:
        runs["teacher"] = {"model_name": P["teacher_model"], "cfg": teacher_config(P), "teacher": None,
                           "n_train": len(_teacher_index(P, dataset))}
    rows = timing.time_training(runs=runs, dataset=dataset, train_index=student_index(P, dataset),
                                n_batches=P["timing_batches"], repeats=P["timing_repeats"], seed=P["seed"],
                                device=device)
    return pd.DataFrame(rows)


def time_summary(timings: pd.DataFrame) -> pd.DataFrame:
    """Median seconds per epoch and per run of each method over the repeats, with the device."""
    agg = timings.groupby("method", sort=False).agg(
        seconds_per_epoch=("seconds_per_epoch", "median"), seconds_per_run=("seconds_per_run", "median"),
        epochs=("epochs", "first"), repeats=("repeat", "nunique"), device=("device", "first"),
        threads=("threads", "first"))
    return agg.reset_index()


def speedup_table(results: pd.DataFrame, timings: pd.DataFrame, *, reference: str = "sat",
                  teacher_of: tuple[str, ...] = ("rrm",)) -> pd.DataFrame:
    """RRM-T1 as measured: per method its training time (median over the timing repeats, seconds),
    the ratio to ``reference``'s time measured in the same run, natural and APGD-CE accuracy. Each
    method in ``teacher_of`` gets a second row with its teacher's training time added."""
    t = time_summary(timings).set_index("method")
    acc = results.pivot_table(index="method", columns="evaluation", values="accuracy", sort=False)
    ref = t.loc[reference, "seconds_per_run"] if reference in t.index else math.nan
    rows = []
    for m in acc.index:
        if m not in t.index:
            continue
        secs = t.loc[m, "seconds_per_run"]
        base = {"method": method_label(m), "natural": acc.loc[m, "natural"], "apgd_ce": acc.loc[m, "apgd_ce"]}
        rows.append({**base, "seconds": secs, "ratio to SAT": secs / ref})
        if m in teacher_of and "teacher" in t.index:
            both = secs + t.loc["teacher", "seconds_per_run"]
            rows.append({**base, "method": f"{method_label(m)} + its teacher", "seconds": both,
                         "ratio to SAT": both / ref})
    return pd.DataFrame(rows, columns=["method", "seconds", "ratio to SAT", "natural", "apgd_ce"])


def test_images(P: dict, dataset: Dataset, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_eval`` class-balanced test images (the same for every page with the same seed)."""
    index = balanced_subset(dataset.test.labels, n_per_class=P["n_eval"] // len(dataset.classes), seed=P["seed"])
    return index, to_float(dataset.test.images[index]).to(device), dataset.test.labels[index].to(device)


# ---------------------------------------------------------------------------------------------
# RRM-F3: lambda, and RRM-F4: student capacity
# ---------------------------------------------------------------------------------------------

def grid_ends(values) -> dict[float, str]:
    """``"smallest"`` and ``"largest"`` for the two ends of a grid, ``""`` for the values between:
    the rows the F3 claims compare, fixed by the grid and not by the results."""
    values = [float(v) for v in values]
    if sorted(values) != values or len(set(values)) < 2:
        raise ValueError(f"lambdas must be at least two distinct values in increasing order, got {values}")
    return {v: "smallest" if v == values[0] else "largest" if v == values[-1] else "" for v in values}


def lambda_study(P: dict, *, dataset: Dataset, teacher: TrainedModel, x, y, index, device,
                 on_model=None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, TrainedModel]]:
    """One RRM student per lambda of ``P["lambdas"]`` (the rest of the settings shared), each evaluated
    on the same test images; both tables carry ``lambda`` and ``grid_end``. Returns them and the models."""
    ends = grid_ends(P["lambdas"])
    configs = {f"rrm, λ = {lam:g}": method_config("rrm", P | {"rrm_lambda": lam}) for lam in ends}
    models = train_methods([], P=P, dataset=dataset, teacher=teacher, device=device, configs=configs,
                           on_model=on_model)
    extra = {label: {"lambda": lam, "grid_end": ends[lam]} for label, lam in zip(configs, ends)}
    return (*evaluate_methods(models, x=x, y=y, index=index, P=P, extra=extra), models)


def parameter_counts(names, *, num_classes: int) -> dict[str, int]:
    from advbook.models.zoo import build_model

    return {n: sum(p.numel() for p in build_model(n, num_classes=num_classes, mean=(0.5,) * 3,
                                                  std=(0.25,) * 3).parameters()) for n in names}


def capacity_roles(students, *, teacher_model: str, num_classes: int) -> dict[str, str]:
    """The role of each student in the F4 claim: the first is ``"weakest"`` and must have the fewest
    parameters (checked here, before any training: the order is the profile's, not the results');
    the teacher's architecture is ``"teacher's architecture"``; the others ``"other"``."""
    counts = parameter_counts(students, num_classes=num_classes)
    first = students[0]
    if counts[first] != min(counts.values()):
        raise ValueError(f"students must start with the weakest: {first!r} has {counts[first]:,} parameters, "
                         f"more than {min(counts, key=counts.get)!r} ({min(counts.values()):,})")
    return {s: "weakest" if s == first else "teacher's architecture" if s == teacher_model else "other"
            for s in students}


def capacity_study(P: dict, *, dataset: Dataset, teacher: TrainedModel, x, y, index, device, on_model=None):
    """One RRM student per architecture of ``P["students"]`` (weakest first), plus the teacher,
    evaluated on the same test images, and each student's training time per epoch measured now.
    Returns (accuracy rows, per-image flags, timings, one row per student with its accuracies,
    time per epoch and parameter count, the students by architecture)."""
    roles = capacity_roles(P["students"], teacher_model=P["teacher_model"], num_classes=len(dataset.classes))
    counts = parameter_counts(P["students"], num_classes=len(dataset.classes))
    models = {s: train_methods(["rrm"], P=P, dataset=dataset, teacher=teacher, device=device, model_name=s,
                               on_model=on_model)["rrm"] for s in P["students"]}
    extra = {s: {"student": s, "role": roles[s]} for s in models} | {"teacher": {"student": P["teacher_model"],
                                                                                  "role": "teacher"}}
    results, samples = evaluate_methods(models | {"teacher": teacher}, x=x, y=y, index=index, P=P, extra=extra)
    timings = time_methods([], P=P, dataset=dataset, teacher=teacher, device=device, with_teacher=False,
                           models={s: s for s in P["students"]})
    per_epoch = time_summary(timings).set_index("method")["seconds_per_epoch"]
    acc = results.pivot_table(index="method", columns="evaluation", values="accuracy", sort=False)
    table = pd.DataFrame([{"student": s, "role": roles[s], "parameters": counts[s],
                           "seconds_per_epoch": per_epoch[s], "natural": acc.loc[s, "natural"],
                           "apgd_ce": acc.loc[s, "apgd_ce"]} for s in P["students"]])
    return results, samples, timings, table, models


def beside_rows(results: pd.DataFrame, timings: pd.DataFrame | None = None, *,
                reference: str = "sat") -> pd.DataFrame:
    """Our numbers in the paper table's long form (method, quantity, value): natural and APGD-CE
    accuracy, and with ``timings`` the training time in % of ``reference``'s (``time_pct``),
    the unit-free form in which the slides' times can be compared with ours."""
    rows = [{"method": r.method, "quantity": r.evaluation, "value": r.accuracy} for r in results.itertuples()]
    if timings is not None:
        t = time_summary(timings).set_index("method")["seconds_per_run"]
        rows += [{"method": m, "quantity": "time_pct", "value": 100 * t[m] / t[reference]}
                 for m in results["method"].unique() if m in t.index and reference in t.index]
    return pd.DataFrame(rows)


def accuracy_table(results: pd.DataFrame, *, drop=()) -> pd.DataFrame:
    """One row per method (display name): natural and APGD-CE accuracy, in the order run."""
    keep = results[~results["method"].isin(list(drop))]
    wide = keep.pivot_table(index="method", columns="evaluation", values="accuracy", sort=False).reset_index()
    wide["method"] = wide["method"].map(method_label)
    return wide[["method", "natural", "apgd_ce"]]


def accuracy_of(results: pd.DataFrame, method: str) -> dict[str, float]:
    """``{"natural": .., "apgd_ce": ..}`` of one method."""
    part = results[results["method"] == method]
    return dict(zip(part["evaluation"], part["accuracy"]))


def rdt_summary(rdt: robust_data.RobustData) -> pd.DataFrame:
    """How close the robustified images got to their targets in the teacher's representation: the
    L2 distance between representations at the start and at the best iterate (quantiles over images)."""
    start, end = rdt.distance_start.double(), rdt.distance_end.double()
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    rows = {"at the start (another image)": start, "at the best iterate": end, "end / start": end / start}
    return pd.DataFrame([{"distance": k, "10th percentile": float(torch.quantile(v, q[0])),
                          "median": float(torch.quantile(v, q[1])), "90th percentile": float(torch.quantile(v, q[2]))}
                         for k, v in rows.items()])


@torch.no_grad()
def feature_agreement(models: dict[str, TrainedModel], teacher: TrainedModel, *, x: torch.Tensor,
                      y: torch.Tensor, batch_size: int = 500) -> pd.DataFrame:
    """How closely each RRM student reproduces the teacher's representation on clean test images: the
    mean cosine between its features and the teacher's on the *same* image, beside the mean cosine with
    the teacher's features of a *different* image (each image paired with the next: the level that
    unrelated features already reach, post-ReLU features being non-negative), and the accuracy of the
    teacher's own head applied to the model's features. The teacher's row is the reference."""
    feats = lambda net: torch.cat([net.eval().features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    g_t = feats(teacher.model)
    other = torch.roll(torch.arange(len(x)), 1)
    y = y.to(g_t.device)
    rows = []
    for name, net in {"teacher": teacher.model, **{k: m.model for k, m in models.items()}}.items():
        g = feats(net)
        if g.shape != g_t.shape:
            raise ValueError(f"{name}: features of shape {tuple(g.shape[1:])}, the teacher's are {tuple(g_t.shape[1:])}")
        rows.append({"model": name, "cosine, same image": float(F.cosine_similarity(g, g_t).mean()),
                     "cosine, different images": float(F.cosine_similarity(g, g_t[other]).mean()),
                     "teacher's head accuracy (%)": 100 * float((teacher.model.head(g).argmax(1) == y).float().mean())})
    return pd.DataFrame(rows)


def lambda_table(results: pd.DataFrame) -> pd.DataFrame:
    """RRM-F3's accuracies as one row per lambda (increasing), one column per evaluation."""
    return results.pivot_table(index="lambda", columns="evaluation", values="accuracy")[["natural", "apgd_ce"]]
