"""Shared fixtures: an isolated cache per session, a synthetic dataset and a tiny trained model,
and the smoke build of the book that tests/test_book.py and tests/test_browser.py both read."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MATHJAX = REPO / "book" / "_static" / "mathjax" / "tex-mml-chtml.js"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test writes its cache and artifacts under a fresh temporary folder."""
    root = tmp_path_factory.mktemp("advbook")
    saved = {k: os.environ.get(k) for k in ("ADVBOOK_CACHE", "ADVBOOK_ARTIFACTS")}
    os.environ["ADVBOOK_CACHE"] = str(root / "cache")
    os.environ["ADVBOOK_ARTIFACTS"] = str(root / "artifacts")
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """Point the cache at a new folder; call it again with another name for a second fresh one."""
    def make(name):
        monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / name))
    make("a")
    return make


@pytest.fixture(scope="session")
def synth():
    from advbook import data

    return data.synthetic(n_train=400, n_test=200, num_classes=4, size=8, seed=0)


@pytest.fixture(scope="session")
def tiny_model(synth):
    """A tiny CNN trained for a few epochs on the synthetic set (about 80% test accuracy)."""
    from advbook.training import train

    trained = train.train_model(model_name="tiny_cnn", dataset=synth, seed=0,
                                cfg=train.TrainConfig(epochs=8, batch_size=50, lr=0.05))
    return trained.model


@pytest.fixture(scope="session")
def test_batch(synth, tiny_model):
    """Synthetic test images in [0, 1] with the model's own predictions as targets."""
    from advbook import data
    from advbook.training import train

    x = data.to_float(synth.test.images[:64])
    pred = train.predict(tiny_model, x).argmax(1)
    return x, pred, synth.test.labels[:64]


class Affine(torch.nn.Module):
    """logits = W x + b on flattened inputs: DDB has a closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(bias)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


@pytest.fixture
def affine():
    return Affine


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Execute every notebook (smoke) into a copy of the book sources and build that copy (once per
    session, shared by every module that asks for it)."""
    if not MATHJAX.exists():    # `make test` copies it first; a bare pytest run does it here
        made = subprocess.run(["make", "mathjax", f"PYTHON={sys.executable}"], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("executed", "_build"))
    env = {**os.environ, "ADVBOOK_EXECUTED": str(root / "book" / "executed"),
           "ADVBOOK_ARTIFACTS": str(root / "artifacts")}
    run = subprocess.run([sys.executable, "-m", "advbook", "run", "all", "--profile", "smoke", "--log"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    jb = Path(sys.executable).with_name("jupyter-book")
    build = subprocess.run([str(jb), "build", str(root), "-W", "-n", "--keep-going"],
                           capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-3000:]
    return root


@pytest.fixture(scope="module")   # the LEC black-box tests (attacks and page)
def smooth_net():
    """A random smooth 4-class CNN on 3x8x8 inputs (tanh, average pooling), eval mode, frozen."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 16, 4)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return net, x, net(x).argmax(1)


class Counting(torch.nn.Module):
    """Counts the images (rows) that go through ``model``: the queries."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)
