"""Training throughput: images per second of a standard training step, a PGD-10 adversarial-training
step and a PGD-20 evaluation, the FLOPs per image of each, and the fraction of the device's measured
peak they reach.

    python scripts/bench_train.py [--model resnet18] [--batch 512] [--batches 20] [--amp] [--device auto]

The images are random uint8 tensors held on the device and augmented there
(:func:`advbook.training.throughput.augment_on_device`): throughput does not depend on what the
pixels show, and no data loader or host copy runs inside the timed loop. The peak is measured on the
same device with a large matrix product (fp32, and bf16 with ``--amp``), not taken from a datasheet.
Writes ``artifacts/bench/train.json`` and, with ``--write``, ``book/bench_train.md``. CI runs it at
a tiny size on the CPU (tests/test_throughput.py).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from advbook.models import build_model
from advbook.models.zoo import MODELS
from advbook.training import throughput
from advbook.training.timing import device_label

REPO = Path(__file__).resolve().parents[1]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--batches", type=int, default=20, help="timed batches per kind of step")
    p.add_argument("--size", type=int, default=32, help="image side (CIFAR: 32)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the forward passes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--peak-n", type=int, default=4096, help="matrix side for the measured peak")
    p.add_argument("--write", action="store_true", help="write book/bench_train.md")
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "train.json")
    a = p.parse_args(argv)
    if a.batch < 1 or a.batches < 1 or a.size < 8:
        p.error("--batch and --batches must be at least 1, --size at least 8")
    return a


def main(argv=None) -> dict:
    a = parse(sys.argv[1:] if argv is None else argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    torch.manual_seed(0)
    model = build_model(a.model, num_classes=a.classes, mean=(0.5,) * 3, std=(0.25,) * 3)
    model.to(device).to(memory_format=torch.channels_last)
    g = torch.Generator(device=device).manual_seed(0)
    pool = torch.randint(0, 256, (a.batch * min(a.batches, 4), 3, a.size, a.size), dtype=torch.uint8,
                         device=device, generator=g)
    labels = torch.randint(0, a.classes, (len(pool),), device=device, generator=g)
    batches = []
    for i in range(a.batches):
        j = (i % (len(pool) // a.batch)) * a.batch
        x = throughput.augment_on_device(pool[j:j + a.batch], generator=g).float().div_(255)
        batches.append((x, labels[j:j + a.batch]))
    steps = throughput.step_functions(model, amp=a.amp)
    peak = throughput.matmul_peak(device, dtype=torch.bfloat16 if a.amp else torch.float32, n=a.peak_n)
    counted = throughput.step_flops(model, *batches[0])
    rows = []
    for name in throughput.STEPS:
        flops = counted[name]
        seconds = throughput.time_steps(steps[name], batches)
        ips = a.batch / seconds
        rows.append({"step": name, "images_per_second": ips, "flops_per_image": flops,
                     "fraction_of_peak": ips * flops / peak})
    out = {"model": a.model, "batch": a.batch, "batches": a.batches, "size": a.size, "amp": a.amp,
           "device": device_label(device), "peak_flops": peak, "torch": torch.__version__,
           "python": platform.python_version(), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    table = ["| step | images / s | GFLOP / image | fraction of measured peak |", "|---|---|---|---|"]
    table += [f"| {r['step']} | {r['images_per_second']:,.0f} | {r['flops_per_image'] / 1e9:.3f} | "
              f"{r['fraction_of_peak']:.1%} |" for r in rows]
    text = (f"`{a.model}`, batch {a.batch}, {a.size}×{a.size} images, {'bf16 autocast' if a.amp else 'fp32'}, on "
            f"{out['device']}; measured peak {peak / 1e12:.2f} TFLOP/s "
            f"({'bf16' if a.amp else 'fp32'} matrix product).\n\n" + "\n".join(table) + "\n")
    print(text)
    if a.write:
        (REPO / "book" / "bench_train.md").write_text(text)
    return out


if __name__ == "__main__":
    main()
