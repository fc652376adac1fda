"""Training: determinism, the content-keyed cache, resume after a kill, corrupted files."""
from __future__ import annotations


import pytest
import torch

from advbook.core import cache
from advbook.training import train

CFG = train.TrainConfig(epochs=3, batch_size=64, lr=0.05)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_weights(synth, fresh_cache):
    a = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=5)
    fresh_cache("b")
    b = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=5)
    assert not a.from_cache and not b.from_cache
    assert same(weights(a.model), weights(b.model))
    fresh_cache("c")
    c = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=6)
    assert not same(weights(a.model), weights(c.model))


def test_second_request_loads_from_cache(synth, fresh_cache):
    a = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=0)
    b = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=0)
    assert b.from_cache and b.key == a.key
    assert same(weights(a.model), weights(b.model))
    assert b.meta["sha256"] == cache.sha256_file(b.checkpoint)


def test_key_covers_what_determines_the_weights(synth):
    base = dict(model_name="tiny_cnn", dataset=synth, train_index=None, cfg=CFG, seed=0)
    key = train.model_key(**base)
    assert train.model_key(**base) == key
    assert train.model_key(**{**base, "seed": 1}) != key
    assert train.model_key(**{**base, "cfg": train.TrainConfig(epochs=4, batch_size=64, lr=0.05)}) != key
    assert train.model_key(**{**base, "train_index": torch.arange(10)}) != key
    assert train.model_key(**{**base, "model_name": "small_cnn"}) != key


def test_killed_run_resumes_and_ends_with_the_same_weights(synth, fresh_cache):
    reference = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=1)

    class Killed(Exception):
        pass

    def kill_after_first(epoch, row):
        if epoch == 1:
            raise Killed

    fresh_cache("killed")
    with pytest.raises(Killed):
        train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=1, on_epoch_end=kill_after_first)
    folder = cache.cache_dir("models")
    leftovers = [p.name for p in folder.rglob("*")]
    assert "last.pt" in leftovers and "final.pt" not in leftovers
    assert not [n for n in leftovers if n.endswith(".tmp")]  # no half-written files
    epochs_run = []
    resumed = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=1,
                                on_epoch_end=lambda e, r: epochs_run.append(e))
    assert epochs_run == [2, 3]
    assert [r["epoch"] for r in resumed.meta["history"]] == [1, 2, 3]
    assert same(weights(reference.model), weights(resumed.model))


def test_corrupted_checkpoint_is_detected_and_rebuilt(synth, fresh_cache):
    a = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=2)
    a.checkpoint.write_bytes(a.checkpoint.read_bytes()[:100])  # truncate
    with pytest.warns(cache.RebuildWarning, match=rf"tiny_cnn-{a.key} .*checksum mismatch.*rebuilding"):
        b = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=2)
    assert not b.from_cache
    assert same(weights(a.model), weights(b.model))
    assert train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=2).from_cache


def test_augment_keeps_shape_range_and_is_seeded():
    x = torch.rand(16, 3, 8, 8)
    a = train.augment(x, generator=torch.Generator().manual_seed(0))
    b = train.augment(x, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


def test_bad_config_fails_before_training(synth):
    with pytest.raises(ValueError, match="epochs, batch_size and lr must be positive"):
        train.train_model(model_name="tiny_cnn", dataset=synth, cfg=train.TrainConfig(epochs=0), seed=0)
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'; valid: tiny_cnn, small_cnn"):
        train.train_model(model_name="resnet19", dataset=synth, cfg=CFG, seed=0)


KILL_SCRIPT = """
import os, signal
from advbook import data
from advbook.training import train
synth = data.synthetic(n_train=400, n_test=200, num_classes=4, size=8, seed=0)
def die(epoch, row):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no finally blocks
train.train_model(model_name="tiny_cnn", dataset=synth, seed=3, on_epoch_end=die,
                  cfg=train.TrainConfig(epochs=4, batch_size=64, lr=0.05))
"""


def test_hard_killed_process_resumes_from_its_checkpoint(synth, tmp_path, monkeypatch):
    import subprocess
    import sys

    cfg = train.TrainConfig(epochs=4, batch_size=64, lr=0.05)
    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "reference"))
    reference = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=3)
    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "killed"))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    epochs_run = []
    resumed = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=3,
                                on_epoch_end=lambda e, r: epochs_run.append(e))
    assert epochs_run == [3, 4]
    assert same(weights(reference.model), weights(resumed.model))


def test_pgd_adversarial_training_buys_robustness():
    from advbook import attacks
    from advbook import data

    # low pixel noise: a standard model fits it with tiny margins, PGD-AT must widen them
    synth = data.synthetic(n_train=400, n_test=200, num_classes=4, size=8, noise=0.05, seed=0)
    common = dict(epochs=8, batch_size=50, lr=0.05)
    eps = 8 / 255
    std = train.train_model(model_name="tiny_cnn", dataset=synth, seed=0, cfg=train.TrainConfig(**common)).model
    rob = train.train_model(model_name="tiny_cnn", dataset=synth, seed=0, cfg=train.TrainConfig.build(
        **common, objective="pgd_at", at_eps=eps, at_step_size=eps / 4, at_steps=5)).model
    x, y = data.to_float(synth.test.images), synth.test.labels

    def robust_acc(model):
        res = attacks.pgd(model, x, y, eps=eps, step_size=eps / 8, steps=20, stop_on_success=False)
        return 1 - res.success.float().mean().item()

    assert robust_acc(rob) > robust_acc(std) + 0.2  # measured: 0.45 against 0.07


def test_objective_is_part_of_the_key_and_checked(synth):
    base = dict(model_name="tiny_cnn", dataset=synth, train_index=None, seed=0)
    assert train.model_key(**base, cfg=CFG) != train.model_key(
        **base, cfg=train.TrainConfig(epochs=3, batch_size=64, lr=0.05, objective="pgd_at"))
    with pytest.raises(ValueError, match=r"unknown objective 'fast_at'; valid: standard, pgd_at, kd, trades, mart, "
                                         r"gairat, mail_at, vir_at, vir_trades"):
        train.train_model(model_name="tiny_cnn", dataset=synth, seed=0, cfg=train.TrainConfig(objective="fast_at"))


def _fresh_run(fresh_cache, name, **kw):
    """The model a run trains in an empty cache."""
    fresh_cache(name)
    return train.train_model(model_name="tiny_cnn", cfg=CFG, **kw)


def test_broken_meta_rebuilds_from_a_fresh_start(synth, fresh_cache):
    a = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=7)
    (a.checkpoint.parent / "meta.json").write_text("{broken")
    with pytest.warns(cache.RebuildWarning, match=rf"tiny_cnn-{a.key} .*rebuilding"):
        b = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=7)
    assert not b.from_cache
    fresh = _fresh_run(fresh_cache, "empty", dataset=synth, seed=7)
    assert same(weights(b.model), weights(fresh.model))  # not trained on from the weights it had loaded
    assert cache.sha256_file(b.checkpoint) == cache.sha256_file(fresh.checkpoint) == b.meta["sha256"]


def test_incompatible_cached_weights_are_rebuilt_with_a_warning_never_half_loaded(synth, fresh_cache):
    a = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=8)
    other = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=9)
    # every layer of another model plus an unexpected key: load_state_dict copies them all, then raises
    digest = cache.save_checkpoint(a.checkpoint, {**weights(other.model), "extra.weight": torch.zeros(1)})
    meta_path = a.checkpoint.parent / "meta.json"
    cache.write_json(meta_path, {**cache.read_json(meta_path), "sha256": digest})
    with pytest.warns(cache.RebuildWarning, match=rf"tiny_cnn-{a.key} .*Unexpected key.*rebuilding"):
        b = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=8)
    assert not b.from_cache
    assert same(weights(a.model), weights(b.model))


def test_corrupt_final_without_its_checksum_file_is_rebuilt(synth, fresh_cache):
    a = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=10)
    data = bytearray(a.checkpoint.read_bytes())
    first = next(iter(a.model.state_dict().values()))
    data[data.find(first.numpy().tobytes()[:16]) + 3] ^= 0x40  # a flipped bit in the weights: still unpickles
    a.checkpoint.write_bytes(bytes(data))
    a.checkpoint.with_name("final.pt.sha256").unlink()
    with pytest.warns(cache.RebuildWarning, match=rf"tiny_cnn-{a.key} .*no checksum file.*rebuilding"):
        b = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=10)
    assert not b.from_cache
    assert same(weights(a.model), weights(b.model))
    assert train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=10).from_cache


def test_a_cache_hit_removes_the_resume_file_a_killed_run_left(synth, fresh_cache):
    a = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=11)
    last = a.checkpoint.with_name("last.pt")
    cache.save_checkpoint(last, {"epoch": 3})  # killed after meta.json was written, before last.pt was removed
    b = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=CFG, seed=11)
    assert b.from_cache
    assert not last.exists() and not last.with_name("last.pt.sha256").exists()


def test_a_run_killed_four_times_ends_with_byte_identical_files(synth, fresh_cache):
    cfg = train.TrainConfig(epochs=5, batch_size=64, lr=0.05)
    reference = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=12)

    class Killed(Exception):
        pass

    fresh_cache("killed")
    for kill_at in (1, 2, 3, 4):  # each attempt runs one more epoch, then dies
        def die(epoch, row, kill_at=kill_at):
            if epoch == kill_at:
                raise Killed
        with pytest.raises(Killed):
            train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=12, on_epoch_end=die)
    resumed = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=12)
    assert resumed.checkpoint.read_bytes() == reference.checkpoint.read_bytes()
    assert resumed.meta["sha256"] == reference.meta["sha256"]
    assert resumed.meta["history"] == reference.meta["history"]


def test_trained_for_builds_the_standard_or_pgd_at_config_from_the_params(synth, monkeypatch):
    seen = []
    monkeypatch.setattr(train, "train_model", lambda **kw: seen.append(kw))
    params = dict(model="tiny_cnn", train_per_class=10, epochs=2, batch_size=20, lr=0.1, weight_decay=1e-4, seed=3,
                  at_eps=0.1, at_step_size=0.03, at_steps=4)
    train.trained_for(params, synth, device="cpu")
    train.trained_for(params, synth, device="cpu", robust=True, model_name="small_cnn")
    std, rob = seen[0]["cfg"], seen[1]["cfg"]
    assert std == train.TrainConfig(epochs=2, batch_size=20, lr=0.1, weight_decay=1e-4)  # at_* not in its key
    assert rob == train.TrainConfig.build(objective="pgd_at", epochs=2, batch_size=20, lr=0.1, weight_decay=1e-4,
                                          at_eps=0.1, at_step_size=0.03, at_steps=4)
    assert (rob.hyper.norm, seen[0]["model_name"], seen[1]["model_name"], seen[1]["seed"]) == \
        ("linf", "tiny_cnn", "small_cnn", 3)
    assert len(seen[0]["train_index"]) == 40  # 10 per class, 4 classes
