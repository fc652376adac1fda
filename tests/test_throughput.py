"""The device-side training path of the benchmark (advbook.training.throughput, scripts/bench_train.py),
checked on the CPU: on-device augmentation is a crop and a flip, FLOP counts match closed forms,
bf16 autocast stays within tolerance of fp32, and the benchmark runs end to end at a tiny size."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advbook.models import build_model
from advbook.training import throughput

REPO = Path(__file__).resolve().parents[1]


def test_on_device_augmentation_is_a_crop_of_the_padded_image_possibly_flipped():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = throughput.augment_on_device(x, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        crops = [(padded[i, :, a:a + 8, b:b + 8], f) for a in range(9) for b in range(9) for f in (False, True)]
        found = [f for c, f in crops if torch.equal(out[i], c.flip(2) if f else c)]
        assert found, f"image {i} is no crop of its padded image"
        flips += found[0]
    assert 4 <= flips <= 28   # about half flipped
    again = throughput.augment_on_device(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_on_device_augmentation_refuses_a_generator_elsewhere_and_a_bad_shape():
    with pytest.raises(ValueError, match=r"^expected a \(B, C, H, W\) batch, got shape \(3, 8, 8\)$"):
        throughput.augment_on_device(torch.zeros(3, 8, 8), generator=torch.Generator())
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="the generator is on"):
            throughput.augment_on_device(torch.zeros(1, 3, 8, 8), generator=torch.Generator(device="cuda"))


def test_flop_counts_match_the_closed_form_of_a_linear_classifier():
    d, k, b = 3 * 8 * 8, 10, 4
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, k, bias=False))
    before = {n: v.clone() for n, v in model.state_dict().items()}
    x, y = torch.rand(b, 3, 8, 8), torch.arange(b)
    f = throughput.step_flops(model, x, y)
    mac = 2 * d * k   # one matrix-vector product, per image
    assert f["forward"] == mac and f["attack_iteration"] == 2 * mac      # forward + gradient to the input
    assert f["standard"] == 2 * mac                                         # forward + gradient to the weight
    assert f["pgd10_at"] == 10 * 2 * mac + 2 * mac and f["pgd20_eval"] == 20 * 2 * mac + mac
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_bf16_autocast_stays_within_tolerance_of_fp32_on_a_check_batch():
    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    losses = {}
    for amp in (False, True):
        m = copy.deepcopy(model)
        losses[amp] = throughput.step_functions(m, amp=amp)["standard"](x, y)
        assert losses[amp].dtype == torch.float32
    assert losses[True] == pytest.approx(losses[False].item(), rel=2e-2)
    flags = {amp: throughput.step_functions(copy.deepcopy(model), amp=amp)["pgd20_eval"](x, y) for amp in (False, True)}
    assert (flags[True] == flags[False]).float().mean() >= 0.9


def test_time_steps_needs_a_batch():
    with pytest.raises(ValueError, match="^time_steps needs at least one batch$"):
        throughput.time_steps(lambda x, y: None, [])


def test_the_training_benchmark_runs_at_a_tiny_size(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "scripts" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--model", "micro_cnn", "--batch", "4", "--batches", "2", "--size", "16", "--peak-n", "128",
                      "--device", "cpu", "--out", str(tmp_path / "train.json")])
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved == json.loads(json.dumps(out)) and [r["step"] for r in saved["rows"]] == list(throughput.STEPS)
    rows = {r["step"]: r for r in saved["rows"]}
    assert rows["pgd10_at"]["flops_per_image"] > 10 * rows["standard"]["flops_per_image"] / 2
    assert all(r["images_per_second"] > 0 and r["fraction_of_peak"] > 0 for r in saved["rows"])
    assert saved["device"].startswith("cpu") and saved["peak_flops"] > 0


def test_the_device_path_of_minibatch_serves_the_right_split_augmented_and_seeded():
    from advbook import data
    from advbook.training import train

    a = data.synthetic(n_train=40, n_test=10, num_classes=4, size=8, seed=0)
    b = data.synthetic(n_train=40, n_test=10, num_classes=4, size=8, seed=1)
    cfg = train.TrainConfig(batch_size=8)
    idx = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    run = lambda split, seed: train.minibatch(split, idx, cfg=cfg, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                              device="cpu", on_device=True)
    x, y = run(a.train, 0)
    assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(y, a.train.labels[idx]) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, run(a.train, 0)[0]) and not torch.equal(x, run(a.train, 1)[0])
    # each image is a crop (possibly flipped) of its own source image: its pixels come from it
    src = F.pad(a.train.images[idx], (4, 4, 4, 4)).float() / 255
    assert all(torch.isin(x[i], src[i]).all() for i in range(8))
    # another split is served its own images, never the first one's resident copy
    xb, yb = run(b.train, 0)
    assert torch.equal(yb, b.train.labels[idx]) and not torch.equal(xb, x)
    # without augmentation the device path returns exactly the host path's images
    plain = train.TrainConfig(batch_size=8, augment=False)
    host = train.minibatch(a.train, idx, cfg=plain, generator=torch.Generator(), device="cpu")
    dev = train.minibatch(a.train, idx, cfg=plain, generator=torch.Generator(), device="cpu", on_device=True)
    assert torch.equal(host[0], dev[0]) and torch.equal(host[1], dev[1])
