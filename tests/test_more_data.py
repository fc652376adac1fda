"""SVHN, CIFAR-100 and Tiny ImageNet loaders on small fake copies in the official layouts."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from advbook import data
from advbook.data import more as more_data


def test_cifar100_reads_the_official_pickles(tmp_path, fresh_cache):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": rows, "fine_labels": list(range(n))}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    ds = more_data.load_cifar100(source=tmp_path)
    assert ds.train.images.shape == (6, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.labels.tolist() == [0, 1, 2, 3] and len(ds.classes) == 100
    first = pickle.load(open(folder / "train", "rb"))["data"][0]
    assert torch.equal(ds.train.images[0].flatten(), torch.from_numpy(first))  # channel-major rows, as documented
    assert more_data.load_cifar100(source=tmp_path).checksum == ds.checksum  # read back from the cache


def test_svhn_maps_label_ten_to_digit_zero(tmp_path, fresh_cache):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, 3), dtype=np.uint8),
                                                  "y": np.array([[10], [1], [9]])})
    ds = more_data.load_svhn(source=tmp_path)
    assert ds.train.images.shape == (3, 3, 32, 32) and ds.train.labels.tolist() == [0, 1, 9]


def test_tinyimagenet_uses_val_as_test(tmp_path, fresh_cache):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    for w in ("n01", "n02"):
        (root / "train" / w / "images").mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (64, 64), (k * 100, 0, 0)).save(root / "train" / w / "images" / f"{w}_{k}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "val" / "images" / "val_0.JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\n")
    ds = more_data.load_tinyimagenet(source=tmp_path)
    assert ds.train.images.shape == (4, 3, 64, 64) and ds.train.labels.tolist() == [0, 0, 1, 1]
    assert ds.test.labels.tolist() == [1] and ds.classes == ("n01", "n02")


def test_a_missing_copy_says_which_setting_to_use(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVBOOK_DATA_TINYIMAGENET", raising=False)
    with pytest.raises(data.DatasetUnavailable, match="^tinyimagenet is not available \\(ADVBOOK_DATA_TINYIMAGENET is "
                                                      "not set\\); set ADVBOOK_DATA_TINYIMAGENET to a local copy"):
        data.load_dataset("tinyimagenet")
    with pytest.raises(data.DatasetUnavailable, match="cifar-100-python is missing"):
        more_data.load_cifar100(source=tmp_path)
    with pytest.raises(ValueError, match="^unknown dataset 'mnist'; valid: cifar10, cifar100, svhn, synthetic, tinyimagenet$"):
        data.load_dataset("mnist")
