"""The robustified dataset of Ilyas et al. (2019) ("D_R"), the "RDT" baseline of the RRM chapter.

A robust teacher's penultimate representation ``g = teacher.features`` is taken to keep only the
features it finds useful and robust. For every training image ``x_i`` a new image is made that
the teacher *represents* like ``x_i`` but that starts from an unrelated image: gradient descent
on ``||g(x) - g(x_i)||_2`` from a random other training image. Standard training on these images
(with ``x_i``'s label) then gives some robustness without adversarial training. The reference is
``l_2/generate_dr_cifar.py`` of github:Ethos-lab/robust-representation-matching (RRM), which runs
the ``robustness`` library's attacker with a custom loss:

* :func:`robustify` is that attacker (``robustness/attacker.py`` l.165-229) with the settings of
  ``generate_dr_cifar.py`` l.76-85: the loss is the L2 distance of the representations (l.70-73),
  minimised (``targeted=True``); each step is ``L2Step.step`` (``robustness/attack_steps.py``
  l.122-128), ``step_size`` times the gradient divided by its L2 norm (+1e-10) per sample; there
  is no eps ball (the reference's ``eps=1e3`` exceeds the largest L2 distance in [0, 1]^3072,
  55.4, so ``L2Step.project`` only clips to [0, 1]); and ``use_best=True`` (l.179-188, 213-228):
  the distance is measured at the start, before every step and after the last one, and each
  sample keeps its lowest-distance iterate (replaced only on a strictly lower distance).
  Difference, without effect on the steps: the reference differentiates the batch *mean*
  (attacker.py l.197), we differentiate the sum, so each sample's gradient is its own distance's
  and is normalised per sample either way; the mean's factor 1/batch only moved the 1e-10 guard.
* :func:`robust_dataset` is ``generate_dr_cifar.py``'s loop over the training set (l.92-110),
  with two documented differences. (1) The start of image ``i`` is a random *other* image of the
  same training subset, drawn with a seeded ``torch.Generator``; the reference draws a random
  image of the whole training set with numpy's unseeded global generator (l.93-98), which can be
  image ``i`` itself (probability 1/50000) and cannot be rerun. (2) The result is rounded to
  8-bit images, because our datasets hold uint8 images (:class:`~advbook.data.cifar.Split`).
  Rounding moves each pixel by at most 0.5/255, so an image by at most 0.5/255 * sqrt(3072) =
  0.11 in L2 on 32x32x3 images and typically by about 0.06 (rounding errors uniform on
  [-0.5, 0.5]/255 have RMS 0.29/255 per pixel), about half of one reference step (0.1). The
  reference saves floats, but its student reads them through ``ToPILImage``
  (``robustness/tools/folder.py`` l.238-243, in ``l_2/train_rrm.py`` l.245), which multiplies by
  255 and *truncates* to 8 bits: its students also train on 8-bit images, biased down by up to 1/255.

Ilyas et al. and the reference use ``step_size=0.1`` and 1000 steps; the number of steps is a
setting here (the ``cpu`` profile affords far fewer), and :attr:`RobustData.distance_end` against
:attr:`RobustData.distance_start` shows how close the images got to their targets' representations.
"""
from __future__ import annotations

import dataclasses
import hashlib
import warnings

import torch
from tqdm import tqdm

from advbook.core import cache
from advbook.core.tensors import tensor_checksum, to_float
from advbook.data.cifar import Dataset, Split
from advbook.training.framework import in_eval_mode
from advbook.training.train import TrainedModel

__all__ = ["ROBUST_DATA_VERSION", "RobustData", "feature_distance", "robustify", "robust_dataset"]

ROBUST_DATA_VERSION = 1  # bump when robustify or robust_dataset change the images they make
_GRAD_GUARD = 1e-10      # L2Step.step's guard against a zero gradient (attack_steps.py l.127)


@dataclasses.dataclass(frozen=True)
class RobustData:
    """A robustified training set. ``dataset``: its train split is the robustified images with their
    targets' labels (in the order of ``train_index``), its test split the original one;
    ``start_index``: the position (in the original training split) of each image's start;
    ``distance_start`` and ``distance_end``: the teacher's representation distance to the target of
    the start and of the stored 8-bit image; ``key``: the cache key; ``from_cache``: read back, not
    built (as :class:`~advbook.training.train.TrainedModel` says of a model)."""
    dataset: Dataset
    start_index: torch.Tensor
    distance_start: torch.Tensor
    distance_end: torch.Tensor
    key: str
    from_cache: bool = False


def _check_steps(*, steps, step_size, batch_size) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _check_model(model) -> None:
    if not callable(getattr(model, "features", None)):
        raise ValueError(f"the model must expose its penultimate representation as .features(x); "
                         f"{type(model).__name__} has none")


def _distance(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 distance of two batches of representations (flattened)."""
    return torch.linalg.vector_norm(features.flatten(1) - target, dim=1)


@torch.no_grad()
def feature_distance(model, *, x: torch.Tensor, x_target: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``||g(x) - g(x_target)||_2`` per sample, ``g = model.features`` in eval mode."""
    _check_model(model)
    with in_eval_mode(model):
        return torch.cat([_distance(model.features(x[i:i + batch_size]),
                                    model.features(x_target[i:i + batch_size]).flatten(1))
                          for i in range(0, len(x), batch_size)])


def _robustify_batch(model, x_start: torch.Tensor, x_target: torch.Tensor, *, steps: int,
                     step_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        target = model.features(x_target).flatten(1)
    x = x_start.detach().clone()
    best_x, best_d = x.clone(), torch.full((len(x),), float("inf"), device=x.device)

    def keep_best(x: torch.Tensor, d: torch.Tensor) -> None:   # replace_best, attacker.py l.179-188
        better = d < best_d
        best_x[better], best_d[better] = x[better], d[better]

    for _ in range(steps):
        x.requires_grad_(True)
        d = _distance(model.features(x), target)
        (grad,) = torch.autograd.grad(d.sum(), x)   # w.r.t. x only: the weights get no gradient
        with torch.no_grad():
            keep_best(x, d)
            norm = grad.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            x = (x - step_size * grad / (norm + _GRAD_GUARD)).clamp(0, 1)
    with torch.no_grad():
        keep_best(x, _distance(model.features(x), target))   # the last iterate (attacker.py l.226-228)
    return best_x.detach(), best_d


def robustify(model, *, x_start: torch.Tensor, x_target: torch.Tensor, steps: int, step_size: float,
              batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``||g(x) - g(x_target)||_2`` over ``x`` in [0, 1] from ``x_start``, per pair.

    ``g = model.features``, in eval mode; its weights never change (gradients are taken with
    respect to ``x`` only). ``steps`` normalised-gradient L2 steps of length ``step_size``, each
    followed by clipping to [0, 1], with no eps ball; every sample keeps its lowest-distance iterate,
    the start included (the module docstring cites the reference). Returns the best iterates and their
    distances (per sample, on the inputs' device). ``batch_size`` only splits the work: each sample's
    path depends on that sample alone (500 as in ``generate_dr_cifar.py`` l.23).
    """
    _check_steps(steps=steps, step_size=step_size, batch_size=batch_size)
    _check_model(model)
    if x_start.shape != x_target.shape:
        raise ValueError(f"x_start and x_target must have one shape, got {tuple(x_start.shape)} and "
                         f"{tuple(x_target.shape)}")
    xs, ds = [], []
    with in_eval_mode(model):
        for i in range(0, len(x_start), batch_size):
            x, d = _robustify_batch(model, x_start[i:i + batch_size], x_target[i:i + batch_size], steps=steps,
                                    step_size=step_size)
            xs.append(x)
            ds.append(d)
    return torch.cat(xs), torch.cat(ds)


def _checked_index(dataset: Dataset, train_index: torch.Tensor | None) -> torch.Tensor:
    n_train = len(dataset.train)
    if train_index is None:
        index = torch.arange(n_train)
    else:
        index = torch.as_tensor(train_index)
        if index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"train_index must be a 1-D tensor of integer positions, got {index.dtype} of shape "
                             f"{tuple(index.shape)}")
        index = index.to(torch.int64)
    if len(index) < 2:
        raise ValueError(f"robust_dataset needs at least 2 training images (each starts from another), "
                         f"got {len(index)}")
    if int(index.min()) < 0 or int(index.max()) >= n_train:
        raise ValueError(f"train_index out of range: positions must lie in [0, {n_train}), got "
                         f"{int(index.min())}..{int(index.max())}")
    if len(torch.unique(index)) != len(index):
        raise ValueError("train_index repeats positions: a start must be another image, not a copy of the target")
    return index


def _cache_key(*, teacher: TrainedModel, dataset: Dataset, index: torch.Tensor, steps: int, step_size: float,
               seed: int) -> str:
    index_hash = hashlib.sha256(index.numpy().tobytes()).hexdigest()[:16]
    return cache.stable_hash({"teacher": teacher.key, "data_sha256": dataset.checksum, "index": index_hash,
                              "steps": steps, "step_size": float(step_size), "seed": seed,
                              "version": ROBUST_DATA_VERSION})


def _load(path, *, key: str, n: int) -> dict | None:
    """The cached state at ``path`` if it is whole and is the entry of ``key``; an unusable one is
    removed (with its checksum) with a :class:`~advbook.core.cache.RebuildWarning` naming it."""
    if not path.exists():
        return None
    try:
        state = cache.load_checkpoint(path)
        if state.get("key") != key:
            raise ValueError(f"it holds the entry of {state.get('key')!r}, not {key!r}")
        if any(len(state[k]) != n for k in ("images", "labels", "start_index", "distance_start", "distance_end")):
            raise ValueError(f"its tensors do not have {n} rows")
        if state["images"].dtype != torch.uint8:
            raise ValueError(f"its images are {state['images'].dtype}, not uint8")
    except (cache.CorruptCheckpoint, KeyError, TypeError, ValueError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        warnings.warn(f"cached robust data {path.name} is unusable ({reason}); rebuilding it",
                      cache.RebuildWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        return None
    return state


def _build(model, *, dataset: Dataset, index: torch.Tensor, steps: int, step_size: float, seed: int,
           batch_size: int, device: torch.device, key: str) -> dict:
    n = len(index)
    g = torch.Generator().manual_seed(seed)
    # A uniform draw among the n - 1 other positions: shift each position by 1..n-1, modulo n.
    start_pos = (torch.arange(n) + torch.randint(1, n, (n,), generator=g)) % n
    start_index = index[start_pos]
    images, d_start, d_end = [], [], []
    for lo in tqdm(range(0, n, batch_size), desc="robustify", unit="batch"):
        x_target = to_float(dataset.train.images[index[lo:lo + batch_size]]).to(device)
        x_start = to_float(dataset.train.images[start_index[lo:lo + batch_size]]).to(device)
        x, _ = robustify(model, x_start=x_start, x_target=x_target, steps=steps, step_size=step_size,
                         batch_size=batch_size)
        stored = (x * 255).round().to(torch.uint8)
        d_start.append(feature_distance(model, x=x_start, x_target=x_target, batch_size=batch_size).cpu())
        d_end.append(feature_distance(model, x=to_float(stored), x_target=x_target, batch_size=batch_size).cpu())
        images.append(stored.cpu())
    return {"key": key, "images": torch.cat(images), "labels": dataset.train.labels[index].clone(),
            "start_index": start_index, "distance_start": torch.cat(d_start).float(),
            "distance_end": torch.cat(d_end).float()}


def robust_dataset(*, teacher: TrainedModel, dataset: Dataset, train_index: torch.Tensor | None, steps: int,
                   step_size: float, seed: int, batch_size: int = 500,
                   device: torch.device | str = "cpu") -> RobustData:
    """The robustified version of ``dataset.train[train_index]`` (all of it when None) through
    ``teacher``'s representation, built once and cached.

    Image ``i``'s target is itself, its start another image of the same subset drawn with a
    ``torch.Generator`` seeded with ``seed``; :func:`robustify` runs ``steps`` steps of
    ``step_size`` and the result is rounded to 8 bits (the module docstring says why and what that
    costs). ``distance_end`` is measured on the stored 8-bit images, so it is the distance the
    student's training images really have; it can exceed the float iterate's by the rounding.

    The entry lives under ``data/robust`` of the cache, keyed by the teacher's key, the dataset's
    checksum, the subset, ``steps``, ``step_size``, ``seed`` and :data:`ROBUST_DATA_VERSION`
    (``batch_size`` and ``device`` change only floating-point rounding, so an entry built with
    other ones is served). It is written atomically with its sha256; an entry that is corrupt,
    unverified or not the one of its key is removed with a
    :class:`~advbook.core.cache.RebuildWarning` and rebuilt, never served.
    """
    _check_steps(steps=steps, step_size=step_size, batch_size=batch_size)
    _check_model(teacher.model)
    index = _checked_index(dataset, train_index)
    key = _cache_key(teacher=teacher, dataset=dataset, index=index, steps=steps, step_size=step_size, seed=seed)
    path = cache.cache_dir("data/robust") / f"rdt-{key}.pt"
    state = _load(path, key=key, n=len(index))
    from_cache = state is not None
    if state is None:
        device = torch.device(device)
        state = _build(teacher.model.to(device), dataset=dataset, index=index, steps=steps, step_size=step_size,
                       seed=seed, batch_size=batch_size, device=device, key=key)
        cache.save_checkpoint(path, state)
    train = Split(state["images"], state["labels"])
    robust = Dataset(name=f"{dataset.name}-rdt-{key[:8]}",
                     source=f"robustified from {dataset.name} through teacher {teacher.key} "
                            f"({steps} steps of {step_size:g}, seed {seed})",
                     checksum=tensor_checksum(train.images, train.labels, dataset.test.images, dataset.test.labels),
                     classes=dataset.classes, mean=dataset.mean, std=dataset.std, train=train, test=dataset.test)
    return RobustData(dataset=robust, start_index=state["start_index"], distance_start=state["distance_start"],
                      distance_end=state["distance_end"], key=key, from_cache=from_cache)
