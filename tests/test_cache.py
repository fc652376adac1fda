"""The cache: stable keys, atomic writes, checksummed checkpoints loaded with weights_only."""
from __future__ import annotations

import os
import subprocess
import sys
import time

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
    ran = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(ran), "w"))  # unpickling it would create the file

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    # a matching checksum file beside it: only weights_only stands in the way
    path.with_name("evil.pt.sha256").write_text(cache.sha256_file(path) + "\n")
    with pytest.raises(cache.CorruptCheckpoint, match="cannot read"):
        cache.load_checkpoint(path)
    assert not ran.exists()


def test_identical_states_give_identical_checkpoint_bytes(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": 3}
    first = cache.save_checkpoint(tmp_path / "a.pt", state)
    again = cache.save_checkpoint(tmp_path / "a.pt", state)
    elsewhere = cache.save_checkpoint(tmp_path / "b.pt", {k: (v.clone() if torch.is_tensor(v) else v)
                                                          for k, v in state.items()})
    assert first == again == elsewhere
    assert cache.sha256_file(tmp_path / "a.pt") == cache.sha256_file(tmp_path / "b.pt") == first


def test_a_checkpoint_without_its_checksum_file_is_not_used(tmp_path):
    path = tmp_path / "ck.pt"
    cache.save_checkpoint(path, {"w": torch.arange(1000.0)})
    data = bytearray(path.read_bytes())
    data[data.find(torch.arange(1000.0).numpy().tobytes()[400:408])] ^= 0xFF  # a flipped bit in the weights
    path.write_bytes(bytes(data))
    path.with_name("ck.pt.sha256").unlink()
    with pytest.raises(cache.CorruptCheckpoint, match=r"no checksum file ck\.pt\.sha256"):
        cache.load_checkpoint(path)


def test_an_expected_checksum_must_match_too(tmp_path):
    path = tmp_path / "ck.pt"
    digest = cache.save_checkpoint(path, {"w": torch.zeros(3)})
    assert torch.equal(cache.load_checkpoint(path, sha256=digest)["w"], torch.zeros(3))
    with pytest.raises(cache.CorruptCheckpoint, match="checksum mismatch"):
        cache.load_checkpoint(path, sha256="0" * 64)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir("models") == tmp_path / "c" / "models"
    assert (tmp_path / "c" / "models").is_dir()


def test_decoded_data_without_its_checksum_file_is_decoded_again(fresh_cache):
    from advbook.data import cifar

    images = torch.arange(96, dtype=torch.uint8).reshape(2, 3, 4, 4)
    calls = []

    def build():
        calls.append(1)
        return {"train": (images, torch.tensor([0, 1])), "test": (images.flip(0), torch.tensor([1, 0]))}

    first = cifar.cached_splits("unit", build)
    assert torch.equal(cifar.cached_splits("unit", build)["train_images"], images) and len(calls) == 1
    path = cache.cache_dir("data") / "unit.pt"
    data = bytearray(path.read_bytes())
    data[data.find(images.numpy().tobytes()[:16]) + 5] ^= 0x01  # one altered pixel: still unpickles
    path.write_bytes(bytes(data))
    path.with_name("unit.pt.sha256").unlink()
    with pytest.warns(cache.RebuildWarning, match=r"unit\.pt .*no checksum file.*decoding it again"):
        again = cifar.cached_splits("unit", build)
    assert len(calls) == 2
    assert torch.equal(again["train_images"], first["train_images"])
    assert cache.load_checkpoint(path)["train_images"].equal(images)


def test_cache_clear_removes_only_what_the_cache_created(tmp_path, monkeypatch, capsys):
    from advbook.book import cli

    root = tmp_path / "c"
    monkeypatch.setenv("ADVBOOK_CACHE", str(root))
    cache.save_checkpoint(cache.cache_dir("models") / "m" / "final.pt", {"w": torch.zeros(2)})
    cache.write_json(cache.cache_dir("evals") / "e.json", {})
    cache.cache_dir("data")
    assert (root / ".advbook-cache").is_file()
    (root / "notes.txt").write_text("not the cache's")
    assert cli.main(["cache", "clear", "--only", "models"]) == 0
    assert sorted(p.name for p in root.iterdir()) == [".advbook-cache", "data", "evals", "notes.txt"]
    assert cli.main(["cache", "clear"]) == 0
    assert sorted(p.name for p in root.iterdir()) == [".advbook-cache", "notes.txt"]
    assert "removed" in capsys.readouterr().out


def test_cache_clear_refuses_a_folder_the_cache_did_not_create(tmp_path, monkeypatch, capsys):
    from advbook.book import cli

    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("ADVBOOK_CACHE", str(root))
    cache.cache_dir("models")  # usable as a cache, but never marked: the folder held other files
    assert not (root / ".advbook-cache").exists()
    assert cli.main(["cache", "clear"]) == 1
    err = capsys.readouterr().err
    assert "has no .advbook-cache marker" in err and err.count("\n") == 1
    assert (root / "thesis.tex").read_text() == "years of work" and (root / "models").is_dir()
    with pytest.raises(cache.NotACache, match="not clearing it"):
        cache.clear()


def test_cache_sub_folders_are_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir("data/torchvision") == tmp_path / "c" / "data" / "torchvision"
    with pytest.raises(ValueError, match=r"cache sub-folder 'tmp' must lie under one of data, models, evals"):
        cache.cache_dir("tmp")
    with pytest.raises(ValueError, match=r"one of data, models, evals"):
        cache.clear("..")


def _dead_pid() -> str:
    """The id of a process that has finished (and been reaped)."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_atomic_writes_name_their_process(tmp_path):
    with cache.atomic_path(tmp_path / "x.json") as tmp:
        assert tmp.name.startswith(f".x.json.{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_sweep_orphans_removes_temp_files_of_dead_processes_and_stale_leftovers_only(tmp_path):
    dead = _dead_pid()
    (tmp_path / "models" / "m").mkdir(parents=True)
    orphan = tmp_path / "models" / "m" / f".final.pt.{dead}.abcd1234.tmp"
    live = tmp_path / "models" / "m" / f".final.pt.{os.getpid()}.abcd1234.tmp"  # a write in progress
    old_unnamed = tmp_path / ".meta.json.abcd1234.tmp"     # an older temp file naming no process
    new_unnamed = tmp_path / ".meta.json.efgh5678.tmp"
    old_partial = tmp_path / ".02_hol_toy_paths.partial.ipynb"  # a killed papermill execution
    unrelated = tmp_path / "notes.tmp"
    for path in (orphan, live, old_unnamed, new_unnamed, old_partial, unrelated):
        path.write_bytes(b"x")
    hours_ago = time.time() - 7200
    for path in (old_unnamed, old_partial, unrelated):
        os.utime(path, (hours_ago, hours_ago))
    assert sorted(cache.sweep_orphans(tmp_path)) == sorted([orphan, old_unnamed, old_partial])
    assert live.exists() and new_unnamed.exists() and unrelated.exists()


def test_cache_info_sweeps_orphans_before_counting(tmp_path, monkeypatch, capsys):
    from advbook.book import cli

    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("ADVBOOK_EXECUTED", str(tmp_path / "executed"))
    data = cache.cache_dir("data")
    (data / f".cifar10-x.pt.{_dead_pid()}.abcd1234.tmp").write_bytes(bytes(4 << 20))  # a killed decode's temp
    (tmp_path / "executed").mkdir()
    partial = tmp_path / "executed" / ".01_intro.partial.ipynb"
    partial.write_text("{}")
    os.utime(partial, (time.time() - 7200,) * 2)
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 orphaned temporary files" in out
    assert [line.split() for line in out.splitlines() if line.strip().startswith("data")] == [
        ["data", "0.0", "MiB", "0", "entries"]]
    assert list(data.iterdir()) == [] and not partial.exists()
