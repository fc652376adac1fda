"""Fault injection: a tiny end-to-end job (decode data, train, evaluate with resume files, write an
artifact) is killed with SIGKILL at seeded moments, in every phase, and rerun. The rerun must end
with the same bytes as an uninterrupted run, and no mixed artifact set or temporary file may be left.

The job runs in a subprocess; ``os.replace`` (the last step of every atomic write) is wrapped there
so that the process kills itself just before or just after the j-th write of a phase, j seeded.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advbook.book import report

JOB = r'''
import os, signal, sys
PHASE, NTH, WHEN = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ROOTS = {"data": os.path.join(os.environ["ADVBOOK_CACHE"], "data"),
         "training": os.path.join(os.environ["ADVBOOK_CACHE"], "models"),
         "evaluation": os.path.join(os.environ["ADVBOOK_CACHE"], "evals"),
         "artifact": os.environ["ADVBOOK_ARTIFACTS"]}
_replace, _seen = os.replace, []

def replace(src, dst):
    mine = PHASE in ROOTS and os.fspath(dst).startswith(ROOTS[PHASE] + os.sep)
    _seen.append(mine)
    last = mine and sum(_seen) == NTH
    if last and WHEN == "before":
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is complete but never renamed
    _replace(src, dst)
    if last and WHEN == "after":
        os.kill(os.getpid(), signal.SIGKILL)  # renamed, but nothing after it (its .sha256, meta.json) done

os.replace = replace
import torch
torch.set_num_threads(1)
import pandas as pd
from advbook.book import experiment, report
from advbook.core import cache
from advbook.data import cifar
from advbook.evaluation.evaluate import evaluate
from advbook.training import train
print("started", flush=True)

def decode():
    ds = cifar.synthetic(n_train=400, n_test=200, num_classes=4, size=8, seed=0)
    return {"train": (ds.train.images, ds.train.labels), "test": (ds.test.images, ds.test.labels)}

dataset = cifar.from_state(cifar.cached_splits("faults-synthetic", decode), name="synthetic-faults", path=None,
                           classes=[f"class{i}" for i in range(4)], mean=(0.5,) * 3, std=(0.25,) * 3)
run = experiment.start("hol_ddb", profile="smoke")
run.use_dataset(dataset)
trained = train.train_model(model_name="tiny_cnn", dataset=dataset, seed=0,
                            cfg=train.TrainConfig(epochs=3, batch_size=64, lr=0.05))
run.use_model(trained)
x, y = cifar.to_float(dataset.test.images[:64]), dataset.test.labels[:64]
result = evaluate(trained.model, x, y, resume_dir=cache.cache_dir("evals") / trained.key,
                  attacks={"fgsm": {"eps": 8 / 255}, "pgd": {"eps": 8 / 255, "step_size": 2 / 255, "steps": 5}})
acc = result.accuracy()
fig = report.new_figure(width=3, height=2)
fig.subplots().bar(list(acc.index), list(acc.values))
report.write_artifact(run, "HOL-F2", data=pd.DataFrame({"evaluation": list(acc.index), "accuracy": list(acc.values)}),
                      figure=fig, samples=result.robust)
'''

PHASES = {"data": 2, "training": 9, "evaluation": 4, "artifact": 5}  # atomic writes of each phase in one run


def _env(root: Path) -> dict:
    return {**os.environ, "ADVBOOK_CACHE": str(root / "cache"), "ADVBOOK_ARTIFACTS": str(root / "artifacts")}


def _job(root: Path, *, phase: str = "none", nth: int = 0, when: str = "before") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", JOB, phase, str(nth), when], env=_env(root), capture_output=True,
                          text=True, timeout=300)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outcome(root: Path) -> dict[str, str]:
    """sha256 of every file the job leaves that its inputs determine: the cache (but the wall times
    in meta.json) and the artifact set (but its provenance: wall time, paths, from_cache)."""
    files = report.read_artifact(root / "artifacts" / "smoke", "HOL-F2")
    out = {f"artifact/{kind}": _sha(p) for kind, p in files.items() if kind != "provenance"}
    cache_root = root / "cache"
    out |= {str(p.relative_to(cache_root)): _sha(p) for p in cache_root.rglob("*")
            if p.is_file() and p.name != "meta.json"}
    return out


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith((".tmp", ".partial.ipynb")) or p.name in ("last.pt", "last.pt.sha256"))


def _assert_never_mixed(root: Path, reference: dict) -> None:
    """Whatever a kill left, the artifact set is refused or is the reference's."""
    try:
        files = report.read_artifact(root / "artifacts" / "smoke", "HOL-F2")
    except report.IncompleteArtifact:
        return
    assert {f"artifact/{k}": _sha(p) for k, p in files.items() if k != "provenance"}.items() <= reference.items()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reference")
    done = _job(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return _outcome(root)


def test_a_job_killed_once_in_every_phase_resumes_to_the_same_bytes(reference, tmp_path):
    rng = random.Random(12)
    for phase, writes in PHASES.items():  # a kill in each phase, at a seeded write, before or after it
        nth, when = rng.randint(1, writes), rng.choice(["before", "after"])
        killed = _job(tmp_path, phase=phase, nth=nth, when=when)
        assert killed.returncode in (-signal.SIGKILL, 0), killed.stderr[-3000:]
        _assert_never_mixed(tmp_path, reference)
    done = _job(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outcome(tmp_path) == reference
    assert _leftovers(tmp_path) == []


def test_a_job_killed_at_seeded_times_resumes_to_the_same_bytes(reference, tmp_path):
    rng = random.Random(7)
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", JOB, "none", "0", "before"], env=_env(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "started"  # imports done: the work begins
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.communicate(timeout=60)
        _assert_never_mixed(tmp_path, reference)
    done = _job(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outcome(tmp_path) == reference
    assert _leftovers(tmp_path) == []


def test_two_identical_jobs_on_one_cache_both_succeed(reference, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", JOB, "none", "0", "before"], env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert _outcome(tmp_path) == reference
    assert _leftovers(tmp_path) == []
