"""Standard training with a content-keyed cache, per-epoch checkpoints and resume.

``train_model`` first looks in the cache for weights trained with exactly the same
model, data (identity, checksum, subset), hyperparameters, seed and training-code
version, and loads them (``weights_only=True``). Otherwise it trains, writing a
checkpoint atomically after every epoch, and a run killed midway resumes from the last
one. The learning rate and the data order are pure functions of (seed, epoch, step),
so a resumed run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import cache
from .attacks import pgd
from .data import Dataset, balanced_subset, to_float
from .models import Classifier, build_model

__all__ = ["TrainConfig", "TrainedModel", "train_model", "trained_for", "augment", "predict", "model_key", "OBJECTIVES"]

TRAIN_CODE_VERSION = 2  # bump when the loop changes in a way that changes the weights


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05           # peak learning rate of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.15       # fraction of the steps spent rising to the peak
    augment: bool = True       # random crop (pad 4) and horizontal flip
    objective: str = "standard"  # a key of OBJECTIVES
    at_norm: str = "linf"      # PGD-AT threat model (Madry et al.): used by objective "pgd_at" only
    at_eps: float = 8 / 255
    at_step_size: float = 2 / 255
    at_steps: int = 10


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
                "train_seconds": self.meta["train_seconds"]}


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


def _standard(model, x, y, cfg: TrainConfig, seed: int):
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def _pgd_at(model, x, y, cfg: TrainConfig, seed: int):
    """PGD adversarial training (Madry et al., 2018): cross-entropy on PGD examples with a random
    start. The examples are generated with the model in eval mode (as the TRADES reference code
    does), so the attack's forward passes do not update the batch-norm statistics."""
    model.eval()
    x_adv = pgd(model, x, y, norm=cfg.at_norm, eps=cfg.at_eps, step_size=cfg.at_step_size, steps=cfg.at_steps,
                random_start=True, stop_on_success=False, seed=seed).x_adv
    model.train()
    logits = model(x_adv.contiguous(memory_format=torch.channels_last))
    return F.cross_entropy(logits, y), logits


# objective name -> (model, x, y, cfg, seed) -> (loss, logits); the training loop is shared
OBJECTIVES: dict[str, Callable] = {"standard": _standard, "pgd_at": _pgd_at}


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    peak = max(1, int(cfg.warmup * total))
    if step < peak:
        return cfg.lr * (step + 1) / peak
    return cfg.lr * max(0.0, (total - step) / max(1, total - peak))


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Logits for float inputs in [0, 1] (or uint8 images), batch by batch, on the model's device."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        xb = to_float(xb) if xb.dtype == torch.uint8 else xb
        out.append(model(xb.to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def model_key(*, model_name: str, dataset: Dataset, train_index: torch.Tensor | None,
              cfg: TrainConfig, seed: int) -> str:
    index_hash = (hashlib.sha256(train_index.numpy().tobytes()).hexdigest()[:16]
                  if train_index is not None else "all")
    return cache.stable_hash({"model": model_name, "data": dataset.name, "data_sha256": dataset.checksum,
                              "index": index_hash, "cfg": dataclasses.asdict(cfg), "seed": seed,
                              "version": TRAIN_CODE_VERSION})


def _load_final(final: Path, model: Classifier, meta_path: Path) -> dict | None:
    if not (final.exists() and meta_path.exists()):
        return None
    try:
        model.load_state_dict(cache.load_checkpoint(final))
        return cache.read_json(meta_path)
    except (cache.CorruptCheckpoint, RuntimeError, ValueError):
        final.unlink(missing_ok=True)  # corrupted or incompatible: rebuild
        return None


def train_model(*, model_name: str, dataset: Dataset, cfg: TrainConfig, seed: int,
                train_index: torch.Tensor | None = None, device: torch.device | str = "cpu",
                on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainedModel:
    """Train (or load from the cache) ``model_name`` on ``dataset.train[train_index]``."""
    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got {cfg}")
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; valid: {', '.join(OBJECTIVES)}")
    device = torch.device(device)
    key = model_key(model_name=model_name, dataset=dataset, train_index=train_index, cfg=cfg, seed=seed)
    folder = cache.cache_dir("models") / f"{model_name}-{key}"
    final, last, meta_path = folder / "final.pt", folder / "last.pt", folder / "meta.json"

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=len(dataset.classes), mean=dataset.mean, std=dataset.std)
    meta = _load_final(final, model, meta_path)
    if meta is not None:
        return TrainedModel(model.to(device).eval(), key, final, meta, from_cache=True)

    split = dataset.train if train_index is None else dataset.train.subset(train_index)
    n = len(split)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    start_epoch, history, seconds = 0, [], 0.0
    if last.exists():
        try:
            state = cache.load_checkpoint(last)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, seconds = int(state["epoch"]), float(state["seconds"])
            history = [dict(zip(("epoch", "loss", "acc"), row)) for row in state["history"].tolist()]
        except (cache.CorruptCheckpoint, KeyError, RuntimeError, ValueError):
            last.unlink(missing_ok=True)
            start_epoch = 0

    model.to(device).to(memory_format=torch.channels_last)
    for epoch in tqdm(range(start_epoch, cfg.epochs), desc=f"train {model_name}", unit="epoch",
                      initial=start_epoch, total=cfg.epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        model.train()
        loss_sum, correct = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb = to_float(split.images[idx])
            if cfg.augment:
                xb = augment(xb, generator=g)
            xb = xb.to(device).contiguous(memory_format=torch.channels_last)
            yb = split.labels[idx].to(device)
            for group in opt.param_groups:
                group["lr"] = _lr_at(epoch * steps_per_epoch + b, total, cfg)
            batch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            loss, logits = OBJECTIVES[cfg.objective](model, xb, yb, cfg, batch_seed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        seconds += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": loss_sum / n, "acc": correct / n}
        history.append(row)
        cache.save_checkpoint(last, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
            "seconds": seconds,
            "history": torch.tensor([[r["epoch"], r["loss"], r["acc"]] for r in history], dtype=torch.float64)})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    model.eval().to(memory_format=torch.contiguous_format)
    digest = cache.save_checkpoint(final, {k: v.contiguous() for k, v in model.state_dict().items()})
    meta = {"model": model_name, "key": key, "sha256": digest, "config": dataclasses.asdict(cfg), "seed": seed,
            "dataset": dataset.identity(), "n_train": n, "train_seconds": round(seconds, 2),
            "history": history, "device": str(device), "version": TRAIN_CODE_VERSION}
    cache.write_json(meta_path, meta)
    last.unlink(missing_ok=True)
    last.with_name(last.name + ".sha256").unlink(missing_ok=True)
    return TrainedModel(model, key, final, meta, from_cache=False)


def trained_for(params: dict, dataset: Dataset, *, device, robust: bool = False,
                model_name: str | None = None) -> TrainedModel:
    """The model an experiment's parameters describe, trained or loaded from the cache.

    Reads ``model``, ``train_per_class``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``
    and ``seed`` (and ``at_eps``, ``at_step_size``, ``at_steps`` when ``robust``), so that two
    sections with the same settings share one cached model.
    """
    cfg = TrainConfig(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                      weight_decay=params["weight_decay"],
                      **(dict(objective="pgd_at", at_eps=params["at_eps"], at_step_size=params["at_step_size"],
                              at_steps=params["at_steps"]) if robust else {}))
    index = balanced_subset(dataset.train.labels, n_per_class=params["train_per_class"], seed=params["seed"])
    return train_model(model_name=model_name or params["model"], dataset=dataset, cfg=cfg, seed=params["seed"],
                       train_index=index, device=device)
