"""The cache: stable keys, atomic writes, checksummed checkpoints loaded with weights_only."""
from __future__ import annotations


import pytest
import torch

from advbook.core import cache


def test_stable_hash_ignores_key_order_and_sees_values():
    assert cache.stable_hash({"a": 1, "b": [1, 2]}) == cache.stable_hash({"b": [1, 2], "a": 1})
    assert cache.stable_hash({"a": 1}) != cache.stable_hash({"a": 2})


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with cache.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    target = cache.write_json(tmp_path / "x.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with cache.atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise RuntimeError
    assert cache.read_json(target) == {"v": 1}


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "ck.pt"
    state = {"w": torch.arange(5.0), "n": 3}
    digest = cache.save_checkpoint(path, state)
    assert digest == cache.sha256_file(path)
    loaded = cache.load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["n"] == 3
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(cache.CorruptCheckpoint, match="checksum mismatch"):
        cache.load_checkpoint(path)


def test_checkpoints_refuse_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)  # no .sha256 beside it: only weights_only stands in the way
    with pytest.raises(cache.CorruptCheckpoint, match="cannot read"):
        cache.load_checkpoint(path)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir("models") == tmp_path / "c" / "models"
    assert (tmp_path / "c" / "models").is_dir()
