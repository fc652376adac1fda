"""Experiments: profiles, validated parameters, seeds, device choice and provenance.

An *experiment* is one notebook. Its parameters are declared here (name, type, range or
choices) and their values per profile live in ``profiles.toml``. :func:`start` merges a
profile with overrides, checks every value before any work starts, seeds everything,
picks the device and starts the clock; the returned :class:`Run` collects what the
provenance of each artifact needs (dataset identity, checkpoints, seeds, wall time).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from advbook.book.schemas import PROFILES, SCHEMAS, Param, ParameterError, cross_check, load_profiles, parse_value
from advbook.core.paths import repo_root
from advbook.core.seeding import DeviceUnavailable, pick_device, seed_everything

__all__ = ["Param", "SCHEMAS", "PROFILES", "load_profiles", "resolve", "preflight", "parse_value", "start", "Run",
           "pick_device", "seed_everything", "repo_root", "ParameterError"]

def resolve(experiment: str, *, profile: str, overrides: dict | None = None) -> dict:
    """The checked parameters of ``experiment`` under ``profile`` with ``overrides`` applied: each
    value valid on its own, then all of them together (:func:`~advbook.book.schemas.cross_check`)."""
    if experiment not in SCHEMAS:
        raise ParameterError(f"unknown experiment {experiment!r}; valid: {', '.join(SCHEMAS)}")
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    schema = SCHEMAS[experiment]
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(schema))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)} for {experiment}; "
                             f"valid: {', '.join(sorted(schema))}")
    page = load_profiles()[experiment]
    if not isinstance(page.get(profile), dict):
        have = [p for p in PROFILES if isinstance(page.get(p), dict)]
        raise ParameterError(f"{experiment} has no {profile} profile yet; valid for it: {', '.join(have)}")
    values = {**page[profile], **overrides}
    missing = sorted(set(schema) - set(values))
    if missing:
        raise ParameterError(f"profile {profile} of {experiment} lacks {', '.join(missing)}")
    params = {name: schema[name].check(name, values[name]) for name in schema}
    cross_check(experiment, params)
    return params


def _git_commit() -> dict:
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("advbook", "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


@dataclasses.dataclass
class Run:
    experiment: str
    profile: str
    params: dict
    overrides: dict
    device: torch.device
    started: float = dataclasses.field(default_factory=time.perf_counter)
    dataset: dict | None = None
    checkpoints: list = dataclasses.field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.params["seed"]

    def use_dataset(self, dataset) -> None:
        """Record the data's identity: a ``data.Dataset``, or a dict describing generated data."""
        self.dataset = dict(dataset) if isinstance(dataset, dict) else dataset.identity()

    def use_model(self, trained) -> None:
        self.checkpoints.append(trained.provenance())

    def artifact_dir(self) -> Path:
        root = os.environ.get("ADVBOOK_ARTIFACTS") or repo_root() / "artifacts"
        path = Path(root) / self.profile
        path.mkdir(parents=True, exist_ok=True)
        return path

    def provenance(self) -> dict:
        device = {"type": self.device.type, "torch_threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            device["name"] = torch.cuda.get_device_name(self.device)
        return {"experiment": self.experiment, "profile": self.profile, "params": self.params,
                "overrides": self.overrides, "dataset": self.dataset, "checkpoints": self.checkpoints,
                "seeds": {"seed": self.seed}, "device": device, "versions": _versions(),
                "git": _git_commit(), "wall_seconds": round(time.perf_counter() - self.started, 2),
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# Sections without a ``dataset`` parameter that read CIFAR-10 through another section's parameters.
_DATASET_OF = {"vir_ablation": "vir_main", "vir_scale": "vir_main"}


def preflight(experiment: str, *, profile: str, params: dict) -> None:
    """What a run would otherwise find out minutes in, checked before it starts: the device is
    visible, and the CIFAR-10 data setting (``$ADVBOOK_DATA``) exists with an accepted layout
    (:func:`advbook.data.cifar.check_source`; a download is not tried here). Raises a one-line
    :class:`ParameterError`."""
    try:
        pick_device(params.get("device", "auto"))
    except DeviceUnavailable as exc:
        raise ParameterError(str(exc)) from None
    dataset = params.get("dataset")
    if dataset is None and experiment in _DATASET_OF:
        dataset = resolve(_DATASET_OF[experiment], profile=profile)["dataset"]
    if dataset == "cifar10":
        from advbook.data.cifar import DatasetUnavailable, check_source

        try:
            check_source()
        except DatasetUnavailable as exc:
            raise ParameterError(str(exc)) from None


def start(experiment: str, *, profile: str, overrides: dict | None = None) -> Run:
    """Validate the parameters, seed everything, pick the device and start the clock."""
    params = resolve(experiment, profile=profile, overrides=overrides)
    try:
        device = pick_device(params.get("device", "auto"))
    except DeviceUnavailable as exc:
        raise ParameterError(str(exc)) from None
    seed_everything(params["seed"])
    return Run(experiment, profile, params, dict(overrides or {}), device)


def artifact_dir(profile: str) -> Path:
    """Where a profile's artifacts are written: ``$ADVBOOK_ARTIFACTS/<profile>`` or ``artifacts/<profile>``."""
    root = os.environ.get("ADVBOOK_ARTIFACTS") or repo_root() / "artifacts"
    return Path(root) / profile
