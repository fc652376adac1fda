"""Attack throughput against foolbox, in one process, on the same model, images and settings.

    python scripts/bench_attacks.py [--n 500] [--repeats 3] [--profile cpu]

The model is the one the HOL §4 notebook trains for the chosen profile (taken from the cache,
trained if absent). Each attack runs ``repeats`` times; the median wall time gives images per
second, and the ratio ours / foolbox is reported beside the agreement of the two results.
Writes ``book/bench_attacks.md`` (included by the Performance page) and
``artifacts/bench/attacks.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import foolbox as fb
import torch

from advbook import attacks
from advbook import data
from advbook.book import experiment
from advbook.analysis import frequency
from advbook.training import train

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="test images (one batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="cpu", choices=experiment.PROFILES)
    args = parser.parse_args()

    P = experiment.resolve("hol_ddb", profile=args.profile)
    device = experiment.pick_device(P["device"])
    ds = data.load_dataset(P["dataset"])
    model = train.trained_for(P, ds, device=device).model
    test = data.balanced_subset(ds.test.labels, n_per_class=args.n // len(ds.classes), seed=1)
    x = data.to_float(ds.test.images[test]).to(device)
    y = ds.test.labels[test].to(device)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))

    eps, step, steps = 8 / 255, 2 / 255, 10
    cases = [
        ("PGD L∞, 10 steps, eps 8/255 (all steps)",
         lambda: attacks.pgd(model, x, y, eps=eps, step_size=step, steps=steps, stop_on_success=False),
         lambda: fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=False)(fmodel, x, y, epsilons=eps),
         lambda o, f: (o.x_adv - f[1]).abs().max().item()),
        ("DeepFool L2, 50 steps, overshoot 0.02",
         lambda: attacks.deepfool(model, x, y, steps=50, overshoot=0.02),
         lambda: fb.attacks.L2DeepFoolAttack(steps=50, candidates=None, overshoot=0.02)(fmodel, x, y, epsilons=None),
         lambda o, f: ((o.l2 - (f[0] - x).flatten(1).norm(dim=1)).abs().max()).item()),
    ]
    n_ff = min(100, len(x))

    def naive_flipping_frequency():
        """The anchor: per sample, remove bands from the top one forward pass at a time until it flips."""
        out = []
        with torch.no_grad():
            for i in range(n_ff):
                xi = x[i:i + 1]
                full = model(xi).argmax(1)
                f = 0
                for k in range(max(xi.shape[-2:]) - 1, -1, -1):
                    if model(frequency.low_pass(xi, k)).argmax(1) != full:
                        f = k + 1
                        break
                out.append(f)
        return torch.tensor(out)

    cases.append(("flipping frequency (HOL §3), batched band scan vs. a per-image, per-band loop",
                  lambda: frequency.flipping_frequency(model, x[:n_ff], batch_size=2000),
                  naive_flipping_frequency,
                  lambda o, f: float((o != f).sum())))
    rows = []
    for name, ours_fn, theirs_fn, diff in cases:
        ours_fn(), theirs_fn()  # warm-up
        t_ours, o = timed(ours_fn, args.repeats)
        t_fb, f = timed(theirs_fn, args.repeats)
        n = n_ff if name.startswith("flipping") else len(x)
        same = bool(torch.equal(o, f)) if name.startswith("flipping") else bool(torch.equal(o.success, f[2]))
        rows.append({"attack": name, "images": n, "ours_img_s": n / t_ours, "foolbox_img_s": n / t_fb,
                     "ratio": t_fb / t_ours, "max_abs_difference": diff(o, f), "same_success": same})
        print(f"{name}: ours {n / t_ours:.0f} img/s, reference {n / t_fb:.0f} img/s, "
              f"ratio {t_fb / t_ours:.2f}, max |difference| {rows[-1]['max_abs_difference']:.2e}")

    machine = {"device": str(device), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "foolbox": fb.__version__, "model": P["model"], "dataset": ds.name,
               "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")}
    out = REPO / "artifacts" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "attacks.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [f"Measured {machine['date']} on {machine['device']} ({machine['threads']} threads, {machine['cpu']}), "
             f"torch {machine['torch']}, foolbox {machine['foolbox']}; model `{machine['model']}` "
             f"({args.profile} profile), {len(x)} `{machine['dataset']}` test images in one batch "
             f"({n_ff} for the flipping frequency), median of {args.repeats} runs. Reference: foolbox for the "
             "attacks; for the flipping frequency, a loop that filters and classifies one image and one band at "
             "a time (its difference column counts samples whose F differs).", "",
             "| computation | ours (img/s) | reference (img/s) | speed-up (reference time / ours) | max abs. difference | same result flags |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['ours_img_s']:.0f} | {r['foolbox_img_s']:.0f} | {r['ratio']:.2f}× | "
                     f"{r['max_abs_difference']:.1e} | {'yes' if r['same_success'] else 'no'} |")
    (REPO / "book" / "bench_attacks.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {REPO / 'book' / 'bench_attacks.md'}")


if __name__ == "__main__":
    main()
