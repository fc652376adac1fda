"""The wall-clock cost of training methods: seconds per minibatch, per epoch and per run.

RRM's claim is a cost: a robust student for about the price of standard training, against Free
AT's and Fast AT's. :func:`time_training` measures each method on the same machine, with the same
data, through the training loop's own :func:`~advbook.training.train.train_step` (learning rate,
every replay, the objective with its attack or its teacher, backward, optimizer step), so what is
timed is what the loop runs. Following airbench's habit of treating speed as a result, it repeats
the measurement, interleaving the methods within each repeat so that a change of load on a shared
machine hits all of them alike, and records the device and the thread count with every number.

What is left out, the same for every method: building the minibatches (decoding, augmentation,
the copy to the device), evaluation and checkpoints. One warm-up minibatch per model comes first
(allocator, cuDNN's algorithm search, lazy initialisation), untimed.
"""
from __future__ import annotations

import math
import os
import platform
import time

import torch
from tqdm import tqdm

from advbook.data.cifar import Dataset
from advbook.models.zoo import MODELS
from advbook.training.framework import StepContext
from advbook.training.train import OBJECTIVES, TrainConfig, TrainedModel, build_student, minibatch, train_step

__all__ = ["time_training", "device_label", "RUN_KEYS"]

RUN_KEYS = ("model_name", "cfg", "teacher", "n_train")  # what a run may say; the first two it must


def device_label(device: torch.device) -> str:
    """``device`` and the hardware behind it: the GPU's name on CUDA, else the processor's."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({_cpu_name()}, {os.cpu_count()} cores)"


def _cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_runs(runs: dict[str, dict]) -> None:
    """Every run, checked before anything is built or timed."""
    if not isinstance(runs, dict) or not runs:
        raise ValueError("runs must be a non-empty dict: method name -> {'model_name', 'cfg'[, 'teacher', 'n_train']}")
    for name, run in runs.items():
        if not isinstance(run, dict) or not {"model_name", "cfg"} <= set(run) or set(run) - set(RUN_KEYS):
            got = sorted(run) if isinstance(run, dict) else type(run).__name__
            raise ValueError(f"run {name!r} must be a dict with model_name and cfg (optional: teacher, n_train), got {got}")
        if run["model_name"] not in MODELS:
            raise ValueError(f"run {name!r}: unknown model {run['model_name']!r}; valid: {', '.join(MODELS)}")
        cfg = run["cfg"]
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"run {name!r}: cfg must be a TrainConfig, got {type(cfg).__name__}")
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"run {name!r}: unknown objective {cfg.objective!r}; valid: {', '.join(OBJECTIVES)}")
        teacher = run.get("teacher")
        if OBJECTIVES[cfg.objective].needs_teacher and not isinstance(teacher, TrainedModel):
            raise ValueError(f"run {name!r}: objective {cfg.objective!r} needs a teacher (a TrainedModel)")
        if "n_train" in run:
            _positive_int(f"run {name!r}: n_train", run["n_train"])


def _time_run(name: str, run: dict, *, dataset: Dataset, split, order: torch.Tensor, n_batches: int, repeat: int,
              seed: int, device: torch.device, n_train_default: int) -> dict:
    """One (run, repeat): a fresh seeded model, one warm-up minibatch, ``n_batches`` timed ones."""
    cfg, teacher = run["cfg"], run.get("teacher")
    n_train = run.get("n_train", n_train_default)
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)
    model, opt = build_student(model_name=run["model_name"], dataset=dataset, cfg=cfg, seed=seed, teacher=teacher)
    model.to(device).to(memory_format=torch.channels_last).train()
    teacher_net = teacher.model.to(device).eval() if OBJECTIVES[cfg.objective].needs_teacher else None
    g = torch.Generator().manual_seed(seed)
    state: dict = {}  # one epoch's state (Free AT's perturbation), shared by the run's minibatches
    seconds = 0.0
    for k in range(n_batches + 1):  # k = 0: the warm-up
        # full minibatches, cycling through the seeded order (a small set is reused, as epochs would)
        idx = order[(k * cfg.batch_size + torch.arange(cfg.batch_size)) % len(order)]
        x, y = minibatch(split, idx, cfg=cfg, generator=g, device=device)
        ctx = StepContext(seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), epoch=0, index=idx,
                          teacher=teacher_net, state=state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        train_step(model, opt, cfg=cfg, x=x, y=y, ctx=ctx, step=k, total=cfg.epochs * batches_per_epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if k > 0:
            seconds += time.perf_counter() - t0
    per_batch = seconds / n_batches
    return {"method": name, "repeat": repeat, "seconds_per_batch": per_batch, "batches_per_epoch": batches_per_epoch,
            "seconds_per_epoch": per_batch * batches_per_epoch, "epochs": cfg.epochs,
            "seconds_per_run": per_batch * batches_per_epoch * cfg.epochs, "n_train": n_train,
            "device": device_label(device), "threads": torch.get_num_threads()}


def time_training(*, runs: dict[str, dict], dataset: Dataset, train_index: torch.Tensor | None, n_batches: int,
                  repeats: int, seed: int, device: torch.device | str) -> list[dict]:
    """Seconds per minibatch of each run's training, ``repeats`` times, as one row per (run, repeat).

    ``runs``: method name -> ``{"model_name": str, "cfg": TrainConfig, "teacher": TrainedModel | None,
    "n_train": int}`` (``teacher`` for the objectives that need one; ``n_train``, the number of
    training images the per-epoch time is for, by default ``len(train_index)``: a teacher trained on
    more images than the students is timed for its own set). For each repeat, for each run in turn,
    a fresh model is built exactly as :func:`~advbook.training.train.train_model` starts it (seed
    ``seed``, the teacher's feature dimension where the objective matches features), trained on one
    untimed warm-up minibatch and then timed on ``n_batches`` full minibatches of
    ``dataset.train[train_index]`` (a seeded order, cycled if the set is smaller), each a
    :func:`~advbook.training.train.train_step` with all of the objective's replays, timed with
    ``time.perf_counter`` after synchronising the GPU.

    Each row: ``method``, ``repeat``, ``seconds_per_batch`` (mean over the timed minibatches, all
    their replays included), ``batches_per_epoch`` (``ceil(n_train / batch_size)``, the last
    partial batch counted as a full one), ``seconds_per_epoch`` (their product), ``epochs``
    (``cfg.epochs``), ``seconds_per_run`` (per epoch times epochs), ``n_train``, ``device`` (with the
    GPU's or processor's name) and ``threads`` (``torch.get_num_threads()``). The rows come in the
    order they were measured: repeat by repeat, the runs in ``runs``' order.

    Every input is checked before any model is built: a bad one fails with one line.
    """
    _positive_int("n_batches", n_batches)
    _positive_int("repeats", repeats)
    _check_runs(runs)
    if train_index is not None and len(train_index) == 0:
        raise ValueError("train_index must select at least one training image")
    device = torch.device(device)
    split = dataset.train if train_index is None else dataset.train.subset(train_index)
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    rows = []
    with tqdm(total=repeats * len(runs), desc="time training", unit="run") as progress:
        for repeat in range(repeats):
            for name, run in runs.items():
                progress.set_postfix_str(f"{name} #{repeat}")
                rows.append(_time_run(name, run, dataset=dataset, split=split, order=order, n_batches=n_batches, repeat=repeat,
                                      seed=seed, device=device, n_train_default=n))
                progress.update(1)
    return rows
