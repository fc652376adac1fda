"""Data: local copies (tree, tarball), identity and checksum, subsets, the missing-data message."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from advbook import data
from advbook.data import cifar

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def make_tree(root, per_class=2):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in data.CIFAR10_CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def test_imagefolder_tree_is_decoded_in_class_order(tmp_path):
    tree = make_tree(tmp_path / "tree")
    ds = data.load_cifar10(source=tree)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.tolist() == [c for c in range(10) for _ in range(2)]
    first = np.array(Image.open(tree / "train" / "airplane" / "0000.png"))
    assert torch.equal(ds.train.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert ds.name == "cifar10-imagefolder-tree" and len(ds.checksum) == 64


def test_tarball_matches_tree_and_is_cached(tmp_path):
    tree = make_tree(tmp_path / "tree")
    tarball = tmp_path / "copy.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    a, b = data.load_cifar10(source=tree), data.load_cifar10(source=tarball)
    assert a.checksum == b.checksum
    assert b.name == "cifar10-imagefolder-copy.tar.gz"
    tarball.unlink()  # a setting that points nowhere fails clearly, even though its decode is cached
    with pytest.raises(data.DatasetUnavailable, match="does not exist"):
        data.load_cifar10(source=tarball)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="the offline CIFAR-10 copy is not beside this checkout")
def test_shared_jpeg_copy_is_recognised_as_lossy():
    ds = data.load_cifar10(source=SHARED_DATA)
    assert ds.name == "cifar10-jpeg75"
    assert len(ds.train) == 50000 and len(ds.test) == 10000
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10


def test_missing_download_says_how_to_provide_the_data(monkeypatch):
    def offline(root, *, download):
        raise OSError("no network")

    monkeypatch.setattr(cifar, "_read_torchvision", offline)
    with pytest.raises(data.DatasetUnavailable, match=r"set ADVBOOK_DATA to a local copy"):
        data.load_cifar10(source="")


def test_the_data_setting_comes_from_the_environment_first(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVBOOK_DATA", str(tmp_path))
    assert data.default_source() == str(tmp_path)
    monkeypatch.delenv("ADVBOOK_DATA")
    assert data.default_source() == (str(SHARED_DATA) if SHARED_DATA.exists() else None)


def test_bad_data_setting_fails_with_the_accepted_forms(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"")
    with pytest.raises(data.DatasetUnavailable, match=r"not a .tar.gz/.tgz/.tar archive"):
        data.load_cifar10(source=tmp_path / "x.zip")
    with pytest.raises(data.DatasetUnavailable, match=r"neither a cifar-10-batches-py folder nor an ImageFolder"):
        data.load_cifar10(source=tmp_path)
    with pytest.raises(ValueError, match=r"^unknown dataset 'mnist'; valid: cifar10, cifar100, svhn, synthetic, tinyimagenet$"):
        data.load_dataset("mnist")


def test_balanced_subset_is_balanced_seeded_and_checked():
    labels = torch.arange(1000) % 10
    a = data.balanced_subset(labels, n_per_class=7, seed=0)
    assert torch.bincount(labels[a]).tolist() == [7] * 10
    assert torch.equal(a, data.balanced_subset(labels, n_per_class=7, seed=0))
    assert not torch.equal(a, data.balanced_subset(labels, n_per_class=7, seed=1))
    assert torch.equal(a, torch.sort(a).values)
    with pytest.raises(ValueError, match="fewer than n_per_class=101"):
        data.balanced_subset(labels, n_per_class=101, seed=0)


def test_synthetic_is_deterministic_and_in_range():
    a, b = data.synthetic(seed=1), data.synthetic(seed=1)
    assert a.checksum == b.checksum and a.checksum != data.synthetic(seed=2).checksum
    x = data.to_float(a.train.images)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1


def test_cached_files_follow_the_users_umask(tmp_path, monkeypatch):
    """Atomic writes go through mkstemp (mode 0600); the cache and artifacts are created with the
    user's umask instead, like any other file (a shared cache is readable by the group)."""
    import os

    from advbook.core import cache

    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "c"))
    old = os.umask(0o022)
    try:
        data.load_cifar10(source=make_tree(tmp_path / "tree", per_class=1))
        written = cache.write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        private = cache.write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    decoded = list((tmp_path / "c" / "data").glob("*.pt"))
    assert decoded and all(p.stat().st_mode & 0o777 == 0o644 for p in decoded)
    assert written.stat().st_mode & 0o777 == 0o644 and private.stat().st_mode & 0o777 == 0o600


LAYOUTS = r"ADVBOOK_DATA=.*cifar-10-batches-py.*ImageFolder tree.*\.tar\.gz"


def make_tarball(tmp_path, name="copy.tar.gz", *, per_class=2, splits=("train", "test")):
    tree = make_tree(tmp_path / f"tree-{name}", per_class=per_class)
    tarball = tmp_path / name
    with tarfile.open(tarball, "w:gz") as tf:
        for split in splits:
            tf.add(tree / split, arcname=split)
    return tarball


def bad_settings(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.tar.gz").write_text("not an archive\n")
    (tmp_path / "empty-splits" / "train").mkdir(parents=True)
    (tmp_path / "empty-splits" / "test").mkdir()
    (tmp_path / "batches" / "cifar-10-batches-py").mkdir(parents=True)
    full = make_tarball(tmp_path, "full.tar.gz", per_class=20)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(full.read_bytes()[:200])  # cut inside the first members
    return {"missing": tmp_path / "nowhere", "empty folder": tmp_path / "empty",
            "text file named .tar.gz": tmp_path / "text.tar.gz", "truncated at the start": truncated,
            "train/ and test/ without images": tmp_path / "empty-splits",
            "cifar-10-batches-py without batches": tmp_path / "batches",
            "tarball without test/": make_tarball(tmp_path, "train-only.tar.gz", splits=("train",))}


def test_check_source_refuses_bad_settings_in_one_line_naming_the_layouts(tmp_path):
    for case, source in bad_settings(tmp_path).items():
        with pytest.raises(data.DatasetUnavailable, match=LAYOUTS) as err:
            cifar.check_source(source)
        assert len(str(err.value).splitlines()) == 1, case
        with pytest.raises(data.DatasetUnavailable, match=LAYOUTS):  # loading says the same
            data.load_cifar10(source=source)


def test_check_source_accepts_the_layouts_without_decoding(tmp_path, monkeypatch):
    tree = make_tree(tmp_path / "tree")
    tarball = make_tarball(tmp_path)
    monkeypatch.setattr(cifar, "_decode_imagefolder_entries", lambda entries: pytest.fail("decoded"))
    for source in (tree, tarball):
        assert cifar.check_source(source) == source.resolve()


def test_a_tarball_truncated_after_its_listing_fails_in_one_line_while_decoding(tmp_path):
    full = make_tarball(tmp_path, per_class=30)
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(full.read_bytes()[: int(0.9 * full.stat().st_size)])
    assert cifar.check_source(truncated) == truncated.resolve()  # the listing stops at the first test/ member
    with pytest.raises(data.DatasetUnavailable, match=LAYOUTS) as err:
        data.load_cifar10(source=truncated)
    assert len(str(err.value).splitlines()) == 1 and "truncated or corrupt" in str(err.value)


def test_the_default_data_setting_is_checked_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBOOK_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(data.DatasetUnavailable, match=r"^ADVBOOK_DATA=.*nowhere does not exist"):
        cifar.check_source()


@pytest.mark.parametrize("error", [OSError("no network"), RuntimeError("File not found or corrupted."),
                                   EOFError("Compressed file ended"), tarfile.ReadError("truncated")])
def test_download_failures_that_mean_absence_say_how_to_provide_the_data(monkeypatch, error):
    def offline(root, *, download):
        raise error

    monkeypatch.setattr(cifar, "_read_torchvision", offline)
    with pytest.raises(data.DatasetUnavailable, match=r"set ADVBOOK_DATA to a local copy"):
        data.load_cifar10(source="")


def test_a_bug_during_the_download_is_not_reported_as_missing_data(monkeypatch):
    from advbook.data import more

    def bug(*args, **kwargs):
        raise TypeError("unexpected keyword argument 'downlaod'")

    monkeypatch.setattr(cifar, "_read_torchvision", bug)
    with pytest.raises(TypeError, match="downlaod"):
        data.load_cifar10(source="")
    with pytest.raises(TypeError, match="downlaod"):
        more._download("svhn", bug)
    with pytest.raises(data.DatasetUnavailable, match="ADVBOOK_DATA_SVHN"):
        more._download("svhn", lambda root: (_ for _ in ()).throw(OSError("no network")))
