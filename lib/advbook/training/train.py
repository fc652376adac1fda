"""Standard training with a content-keyed cache, per-epoch checkpoints and resume.

``train_model`` first looks in the cache for weights trained with exactly the same
model, data (identity, checksum, subset), hyperparameters, seed and training-code
version, and loads them (``weights_only=True``). Otherwise it trains, writing a
checkpoint atomically after every epoch, and a run killed midway resumes from the last
one. The learning rate and the data order are pure functions of (seed, epoch, step),
so a resumed run ends with the same weights as an uninterrupted one.

The work on one minibatch is :func:`train_step`, the one place that sets the learning rate, calls
the objective and steps the optimizer: the loop here and the timing of
:mod:`advbook.training.timing` both run it. An objective whose configuration has a ``replays``
attribute (Free AT's ``free_m``) is run that many times on each minibatch, one optimizer step per
replay; the one-cycle schedule then counts optimizer steps, ``epochs * batches * replays`` of them,
as the reference codes' schedulers do (``l_inf/train_free.py`` l.95 of the RRM code).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from advbook.core import cache
from advbook.data.cifar import Dataset, balanced_subset, to_float
from advbook.models.predict import predict
from advbook.models.zoo import Classifier, build_model
from advbook.training.framework import StepContext, hyper_keywords, keywords
from advbook.training.registry import OBJECTIVES, base_hyper
from advbook.training.throughput import augment_on_device

__all__ = ["TrainConfig", "SCHEDULE", "lr_per_epoch", "TrainedModel", "train_model", "trained_for", "augment", "predict", "model_key",
           "OBJECTIVES", "replays_of", "build_student", "minibatch", "train_step"]

TRAIN_CODE_VERSION = 2  # bump when the loop changes in a way that changes the weights


SCHEDULE = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup", "augment")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The schedule, the objective, and ``hyper``: the objective's own configuration (an instance
    of ``OBJECTIVES[objective].config``, e.g. :class:`~advbook.training.objectives.VIRConfig`;
    its defaults when left out). :meth:`build` makes one from flat keywords (``at_eps=...``)."""
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05           # peak learning rate of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.15       # fraction of the steps spent rising to the peak
    augment: bool = True       # random crop (pad 4) and horizontal flip
    objective: str = "standard"  # a key of OBJECTIVES
    hyper: Any = None          # an OBJECTIVES[objective].config

    def __post_init__(self):
        config = _objective(self.objective).config
        if self.hyper is None:
            object.__setattr__(self, "hyper", config())
        elif type(self.hyper) is not config:
            raise ValueError(f"objective {self.objective!r} takes a {config.__name__} as hyper, "
                             f"got {type(self.hyper).__name__}")

    @staticmethod
    def keywords(objective: str) -> tuple[str, ...]:
        """The keywords :meth:`build` takes for ``objective``: the schedule's and the objective's own."""
        return SCHEDULE + ("objective",) + _objective(objective).keywords

    @classmethod
    def build(cls, objective: str = "standard", **kw) -> "TrainConfig":
        """The configuration of ``objective`` from flat keywords: the schedule's and those of its own
        settings (``TrainConfig.build(objective="vir_at", epochs=30, at_eps=8/255, vir_beta=0.1)``).
        A keyword the objective does not own fails with the valid ones."""
        valid = cls.keywords(objective)
        foreign = [k for k in kw if k not in valid]
        if foreign:
            owners = [o for o, obj in OBJECTIVES.items() if set(foreign) & set(obj.keywords)]
            raise ValueError(f"objective {objective!r} takes no {', '.join(map(repr, foreign))}"
                             + (f" (a setting of {', '.join(owners)})" if owners else "")
                             + f"; valid: {', '.join(valid)}")
        names = keywords(OBJECTIVES[objective].config)
        hyper = OBJECTIVES[objective].config(**{names[k]: v for k, v in kw.items() if k in names})
        return cls(objective=objective, hyper=hyper, **{k: v for k, v in kw.items() if k in SCHEDULE})

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (flat keywords, checked as by :meth:`build`). With a new
        ``objective``, the other settings carry over where the new objective has them."""
        objective = changes.get("objective", self.objective)
        carried = {k: v for k, v in self.key_fields().items() if k in self.keywords(objective)}
        return self.build(**{**carried, **changes})

    def key_fields(self) -> dict:
        """The fields that decide the weights, flat: the schedule, the objective, and the objective's
        own fields by their keywords (the same dict as before the per-objective configurations)."""
        return {**{k: getattr(self, k) for k in SCHEDULE}, "objective": self.objective,
                **hyper_keywords(self.hyper)}

    def burn_in(self) -> "TrainConfig | None":
        """The configuration whose first ``hyper.reweight_from`` epochs this run shares (its base
        objective with the same schedule and the same values of the base's settings), or None."""
        base = OBJECTIVES[self.objective].base
        if base is None or not 0 < self.hyper.reweight_from < self.epochs:
            return None
        return TrainConfig(**{k: getattr(self, k) for k in SCHEDULE}, objective=base,
                           hyper=base_hyper(self.objective, self.hyper))


def _objective(name: str):
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


@dataclasses.dataclass
class TrainedModel:
    model: Classifier
    key: str
    checkpoint: Path
    meta: dict
    from_cache: bool

    def provenance(self) -> dict:
        return {"key": self.key, "path": str(self.checkpoint), "sha256": self.meta["sha256"],
                "from_cache": self.from_cache, "model": self.meta["model"],
                "train_seconds": self.meta["train_seconds"], "forked_from": self.meta.get("forked_from")}

    def records(self) -> dict[int, dict[str, torch.Tensor]]:
        """Per-sample records of the reweighted epochs (epoch -> ``index`` into the dataset's
        training split plus the objective's weights and their parts)."""
        out = {}
        for path in sorted(self.checkpoint.parent.glob("records-e*.pt")):
            out[int(path.stem.split("-e")[1])] = cache.load_checkpoint(path)
        return out


def augment(x: torch.Tensor, *, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crops of the zero-padded batch and random horizontal flips, batched."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    di = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dj = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (di[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dj[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    peak = max(1, int(cfg.warmup * total))
    if step < peak:
        return cfg.lr * (step + 1) / peak
    return cfg.lr * max(0.0, (total - step) / max(1, total - peak))


def lr_per_epoch(cfg: TrainConfig, *, n_train: int) -> list[float]:
    """The mean learning rate of each epoch's steps under ``cfg``'s one-cycle schedule, for
    ``n_train`` training images (the steps the loop takes: one per batch, the last one partial, times
    the objective's replays)."""
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    steps = (n_train + cfg.batch_size - 1) // cfg.batch_size * replays_of(cfg)
    total = cfg.epochs * steps
    return [sum(_lr_at(e * steps + b, total, cfg) for b in range(steps)) / steps for e in range(cfg.epochs)]


def replays_of(cfg: TrainConfig) -> int:
    """How many optimizer steps each minibatch gets: ``cfg.hyper.replays`` where the objective's
    configuration has it (Free AT's ``free_m``), else 1."""
    replays = getattr(cfg.hyper, "replays", 1)
    if not isinstance(replays, int) or isinstance(replays, bool) or replays < 1:
        raise ValueError(f"replays must be an int >= 1, got {replays!r}")
    return replays


def build_student(*, model_name: str, dataset: Dataset, cfg: TrainConfig, seed: int,
                  teacher: "TrainedModel | None" = None) -> tuple[Classifier, torch.optim.Optimizer]:
    """The seeded starting point of a run: the network and its SGD optimizer (Nesterov momentum).

    For an objective with ``match_features`` (RRM) the network's features get the teacher's
    dimension, ``teacher.model.head.in_features`` (:func:`advbook.models.zoo.build_model`'s
    ``feature_dim``: a linear map is appended where the dimensions differ); every other network is
    built as without a teacher.

    For an objective with ``init_from_teacher`` (AGKD-BML) the built network then gets the teacher's
    weights, as the reference's student does (``--nat_init``, on by default: ``argument.py`` l.20;
    ``main.py`` l.345-346 loads the natural checkpoint into the student before the optimizer is made,
    l.349). The seeded build still runs first, so the global random state after this function is the
    same as for any other objective. The teacher must be of the same architecture (``model_name``),
    refused in one line naming both before anything is built; its buffers (the normalisation's mean
    and std among them) come with its weights."""
    objective = OBJECTIVES[cfg.objective]
    match = objective.match_features
    if (match or objective.init_from_teacher) and teacher is None:
        need = "matches a teacher's features" if match else "starts from its teacher's weights"
        raise ValueError(f"objective {cfg.objective!r} {need} and needs a teacher model")
    if objective.init_from_teacher and teacher.meta["model"] != model_name:
        raise ValueError(f"objective {cfg.objective!r} starts the student from its teacher's weights: the teacher "
                         f"is a {teacher.meta['model']!r}, the student a {model_name!r} (must be the same architecture)")
    torch.manual_seed(seed)
    net = build_model(model_name, num_classes=len(dataset.classes), mean=dataset.mean, std=dataset.std,
                      feature_dim=teacher.model.head.in_features if match else None)
    if objective.init_from_teacher:
        _load_teacher_state(net, teacher=teacher, objective=cfg.objective)
    return net, torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=True)


def _load_teacher_state(net: Classifier, *, teacher: "TrainedModel", objective: str) -> None:
    """Copy the teacher's state into ``net`` (same keys and shapes, checked first: a teacher trained on
    another number of classes is refused in one line instead of load_state_dict's list)."""
    state = teacher.model.state_dict()
    own = net.state_dict()
    differ = sorted(k for k in own.keys() | state.keys()
                    if k not in own or k not in state or own[k].shape != state[k].shape)
    if differ:
        k = differ[0]
        shapes = [tuple(d[k].shape) if k in d else "absent" for d in (state, own)]
        raise ValueError(f"objective {objective!r}: the teacher's weights do not fit the student "
                         f"({len(differ)} tensor(s), first {k}: teacher {shapes[0]}, student {shapes[1]})")
    net.load_state_dict(state)  # copies into net's own tensors, whatever device the teacher is on


_RESIDENT: dict = {}   # device -> (weak reference to a split's host images, its images and labels on the device)


def resident(split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``split``'s uint8 images and labels held on ``device``, copied once: the GPU path of
    :func:`minibatch`, so that no image crosses from the host per step. One split per device is
    kept; the copy is served only while it is of the very tensor ``split.images`` (a weak
    reference, not an id that a new tensor could reuse), else it is made again."""
    key = str(device)
    held = _RESIDENT.get(key)
    if held is None or held[0]() is not split.images:
        _RESIDENT[key] = (weakref.ref(split.images), split.images.to(device), split.labels.to(device))
    return _RESIDENT[key][1], _RESIDENT[key][2]


def minibatch(split, idx: torch.Tensor, *, cfg: TrainConfig, generator: torch.Generator,
              device: torch.device, on_device: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (floats in [0, 1], augmented with ``generator`` when ``cfg.augment``, channels-last
    on ``device``) and labels of ``split`` at ``idx``.

    ``on_device`` (default: on a CUDA device) takes them from :func:`resident` and augments them
    there (:func:`advbook.training.throughput.augment_on_device`, with a device generator seeded by
    one draw from ``generator``): the same kind of crop and flip, other random numbers than the
    host path, which stays the default on the CPU (its results are the ones the tests pin)."""
    device = torch.device(device)
    if on_device is None:
        on_device = device.type == "cuda"
    if not on_device:
        xb = to_float(split.images[idx])
        if cfg.augment:
            xb = augment(xb, generator=generator)
        return xb.to(device).contiguous(memory_format=torch.channels_last), split.labels[idx].to(device)
    images, labels = resident(split, device)
    at = idx.to(device, non_blocking=True)
    xb = images[at]
    if cfg.augment:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        xb = augment_on_device(xb, generator=torch.Generator(device=device).manual_seed(seed))
    return to_float(xb).contiguous(memory_format=torch.channels_last), labels[at]


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, *, cfg: TrainConfig, x: torch.Tensor,
               y: torch.Tensor, ctx: StepContext, step: int, total: int):
    """One minibatch of training: for each of the objective's :func:`replays_of` replays, set the
    learning rate, compute the objective's loss, back-propagate and step the optimizer.

    ``step`` is the minibatch's index in the run and ``total`` the run's number of minibatches; the
    learning rate of replay ``r`` is the schedule's at optimizer step ``step * replays + r`` of
    ``total * replays``, so with one replay the schedule is the per-minibatch one. Every replay sees
    the same ``ctx`` (seed included). Returns the last replay's ``(loss, logits, record)``: as the
    reference codes report a replayed minibatch's loss and accuracy (``l_inf/train_free.py``
    l.142-143)."""
    objective = OBJECTIVES[cfg.objective]
    replays = replays_of(cfg)
    for r in range(replays):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step * replays + r, total * replays, cfg)
        loss, logits, record = objective.loss(model, x, y, cfg, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss, logits, record


def model_key(*, model_name: str, dataset: Dataset, train_index: torch.Tensor | None,
              cfg: TrainConfig, seed: int, teacher_key: str | None = None) -> str:
    index_hash = (hashlib.sha256(train_index.numpy().tobytes()).hexdigest()[:16]
                  if train_index is not None else "all")
    content = {"model": model_name, "data": dataset.name, "data_sha256": dataset.checksum,
               "index": index_hash, "cfg": cfg.key_fields(), "seed": seed, "version": TRAIN_CODE_VERSION}
    if teacher_key is not None:
        content["teacher"] = teacher_key
    if OBJECTIVES[cfg.objective].init_from_teacher:  # only these keys change: a start other than the seeded one
        content["init"] = "teacher"
    return cache.stable_hash(content)


def _rebuild_warning(what: str, exc: Exception, action: str) -> None:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__  # one line
    warnings.warn(f"{what} is unusable ({reason}); {action}", cache.RebuildWarning, stacklevel=3)


def _remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)


def _load_final(folder: Path, *, key: str, build: Callable[[], Classifier]) -> tuple[Classifier, dict] | None:
    """The cached model of ``folder`` and its meta, or None when it has none.

    Everything is checked before anything is returned: ``meta.json`` must parse and name ``key``,
    ``final.pt`` must match its checksum file and the meta's sha256, and its state must load
    into a new model with exactly the same keys and shapes. An unusable entry is removed with a
    :class:`~advbook.core.cache.RebuildWarning` naming it, and the caller trains from the same
    fresh start as a run in an empty cache (a half-loaded model is never used).
    """
    final, meta_path = folder / "final.pt", folder / "meta.json"
    if not final.exists():
        return None
    if not meta_path.exists():  # killed between final.pt and meta.json: last.pt resumes the run
        return None
    model = build()
    try:
        meta = cache.read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise ValueError(f"meta.json is not the meta of {key}")
        model.load_state_dict(cache.load_checkpoint(final, sha256=meta["sha256"]))
    except (cache.CorruptCheckpoint, RuntimeError, ValueError, KeyError, TypeError) as exc:
        _rebuild_warning(f"cached model {folder.name}", exc, "rebuilding it from a fresh start")
        meta_path.unlink(missing_ok=True)
        _remove_checkpoint(final)
        return None
    return model, meta


def _prefix_path(*, model_name: str, dataset: Dataset, train_index, cfg: TrainConfig, seed: int,
                 epoch: int) -> Path:
    key = model_key(model_name=model_name, dataset=dataset, train_index=train_index, cfg=cfg, seed=seed)
    return cache.cache_dir("models") / "prefixes" / f"{model_name}-{key}-e{epoch}.pt"


def train_model(*, model_name: str, dataset: Dataset, cfg: TrainConfig, seed: int,
                train_index: torch.Tensor | None = None, device: torch.device | str = "cpu",
                teacher: TrainedModel | None = None, share_epochs: tuple[int, ...] = (),
                on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainedModel:
    """Train (or load from the cache) ``model_name`` on ``dataset.train[train_index]``.

    ``teacher`` (for objective ``"kd"``) is a trained model whose cache key becomes part of
    this model's key, so a student is retrained when its teacher changes. For an objective with
    ``match_features`` (``"rrm"``) the student's features get the teacher's dimension
    (:func:`build_student`).

    Shared burn-in: a reweighting objective runs its base objective, with the configuration
    :meth:`TrainConfig.burn_in` gives, for its first ``cfg.hyper.reweight_from`` epochs. Its state
    after them is exactly that of the base run with the same settings (same schedule, data order
    and seeds), so it is saved once as a *prefix* and every such run forks from it. A base run
    saves prefixes at the epochs in ``share_epochs``.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got {cfg}")
    objective = OBJECTIVES[cfg.objective]
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"objective {cfg.objective!r} needs a teacher model")
    device = torch.device(device)
    key = model_key(model_name=model_name, dataset=dataset, train_index=train_index, cfg=cfg, seed=seed,
                    teacher_key=teacher.key if objective.needs_teacher else None)
    folder = cache.cache_dir("models") / f"{model_name}-{key}"
    final, last, meta_path = folder / "final.pt", folder / "last.pt", folder / "meta.json"

    def initial():  # the seeded starting point, also after an unreadable resume file
        return build_student(model_name=model_name, dataset=dataset, cfg=cfg, seed=seed, teacher=teacher)

    cached = _load_final(folder, key=key, build=lambda: initial()[0])
    if cached is not None:
        _remove_checkpoint(last)  # left by a run killed after meta.json was written
        return TrainedModel(cached[0].to(device).eval(), key, final, cached[1], from_cache=True)
    model, opt = initial()  # after a failed load too: exactly the start of a run in an empty cache

    burn_in = cfg.burn_in()
    switch = cfg.hyper.reweight_from if burn_in is not None else 0  # first epoch of the objective itself
    prefix_cfg = burn_in or cfg
    shared = set(share_epochs) | ({switch} if burn_in is not None else set())
    prefixes = {e: _prefix_path(model_name=model_name, dataset=dataset, train_index=train_index, cfg=prefix_cfg,
                                seed=seed, epoch=e) for e in shared if 0 < e < cfg.epochs}
    split = dataset.train if train_index is None else dataset.train.subset(train_index)
    positions = torch.arange(len(dataset.train)) if train_index is None else train_index
    n = len(split)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    start_epoch, history, seconds, forked_from = 0, [], 0.0, None
    run_state: dict = {}  # StepContext.run_state: carried across epochs, saved in each checkpoint
    resume_from = last
    if not last.exists() and burn_in is not None and prefixes[switch].exists():
        resume_from = forked_from = prefixes[switch]
    if resume_from.exists():
        try:
            state = cache.load_checkpoint(resume_from)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, seconds = int(state["epoch"]), float(state["seconds"])
            history = [dict(zip(("epoch", "loss", "acc"), row)) for row in state["history"].tolist()]
            forked_from = str(resume_from) if resume_from != last else state.get("forked_from")
            run_state = dict(state.get("run_state", {}))
        except (cache.CorruptCheckpoint, KeyError, RuntimeError, ValueError) as exc:
            _rebuild_warning(f"checkpoint {resume_from.parent.name}/{resume_from.name}", exc, "training from epoch 0")
            resume_from.unlink(missing_ok=True)
            model, opt = initial()
            start_epoch, history, seconds, forked_from = 0, [], 0.0, None
            run_state = {}

    model.to(device).to(memory_format=torch.channels_last)
    teacher_net = teacher.model.to(device).eval() if objective.needs_teacher else None
    for epoch in tqdm(range(start_epoch, cfg.epochs), desc=f"train {model_name}", unit="epoch",
                      initial=start_epoch, total=cfg.epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        model.train()
        loss_sum, correct, records = 0.0, 0, []
        step_cfg = burn_in if epoch < switch else cfg  # the base objective, with its own config, in the burn-in
        # One state per epoch, shared by its batches (Free AT's perturbation), new at each epoch's
        # start so that a run resumed from an epoch's checkpoint is bit-identical.
        epoch_state: dict = {}
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = minibatch(split, idx, cfg=cfg, generator=g, device=device)
            batch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            ctx = StepContext(seed=batch_seed, epoch=epoch, index=idx, teacher=teacher_net, state=epoch_state,
                              run_state=run_state)
            loss, logits, record = train_step(model, opt, cfg=step_cfg, x=xb, y=yb, ctx=ctx,
                                              step=epoch * steps_per_epoch + b, total=total)
            if record is not None:
                records.append({"index": positions[idx], **{k: v.detach().cpu() for k, v in record.items()}})
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        seconds += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": loss_sum / n, "acc": correct / n}
        history.append(row)
        if records:
            cache.save_checkpoint(folder / f"records-e{epoch + 1}.pt",
                                  {k: torch.cat([r[k] for r in records]) for k in records[0]})
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                 "seconds": seconds, "forked_from": forked_from,
                 "history": torch.tensor([[r["epoch"], r["loss"], r["acc"]] for r in history], dtype=torch.float64)}
        if run_state:  # only objectives that keep one (CAT): every other checkpoint stays as it was
            state["run_state"] = dict(run_state)
        if epoch + 1 in prefixes and not prefixes[epoch + 1].exists():
            cache.save_checkpoint(prefixes[epoch + 1], {**state, "forked_from": None})
        cache.save_checkpoint(last, state)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    model.eval().to(memory_format=torch.contiguous_format)
    digest = cache.save_checkpoint(final, {k: v.contiguous() for k, v in model.state_dict().items()})
    meta = {"model": model_name, "key": key, "sha256": digest, "config": cfg.key_fields(), "seed": seed,
            "teacher": teacher.key if teacher_net is not None else None, "forked_from": forked_from,
            "dataset": dataset.identity(), "n_train": n, "train_seconds": round(seconds, 2),
            "history": history, "device": str(device), "version": TRAIN_CODE_VERSION}
    cache.write_json(meta_path, meta)
    _remove_checkpoint(last)
    return TrainedModel(model, key, final, meta, from_cache=False)


def trained_for(params: dict, dataset: Dataset, *, device, robust: bool = False,
                model_name: str | None = None) -> TrainedModel:
    """The model an experiment's parameters describe, trained or loaded from the cache.

    Reads ``model``, ``train_per_class``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``
    and ``seed`` (and ``at_eps``, ``at_step_size``, ``at_steps`` when ``robust``), so that two
    sections with the same settings share one cached model.
    """
    cfg = TrainConfig.build(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                            weight_decay=params["weight_decay"],
                            **(dict(objective="pgd_at", at_eps=params["at_eps"], at_step_size=params["at_step_size"],
                                    at_steps=params["at_steps"]) if robust else {}))
    index = balanced_subset(dataset.train.labels, n_per_class=params["train_per_class"], seed=params["seed"])
    return train_model(model_name=model_name or params["model"], dataset=dataset, cfg=cfg, seed=params["seed"],
                       train_index=index, device=device)
