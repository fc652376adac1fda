"""Speed of the LEC non-Lp and black-box attack code, against a reference where one exists.

    python scripts/bench_lec_blackbox.py [--n 100] [--repeats 3] [--profile cpu] [--threads T]

The model is the one the HOL §4 notebook trains for the chosen profile (taken from the cache,
trained if absent), on ``n`` balanced CIFAR-10 test images in one batch. Each computation runs once
to warm up, then is measured ``repeats`` times, ours and the reference alternating (a fast call is
repeated for at least 0.25 s per measurement); the median time per call gives images per second.

With a reference (same process, same inputs): the stAdv flow resampling and smoothness loss and the
ReColorAdv colour function against ``recoloradv`` (its mister_ed ``FullSpatial`` spatial transform,
``stAdv_norm``, and its RGB ``FullSpatial`` colour transform), and the Square trace against
pyautoattack's ``SquareAttack.perturb`` run once per budget (the trace calls the same implementation;
the row shows what tracing costs). Without one (no maintained PyTorch implementation to call): the
flow and colour attacks, the ZOO estimates and ZOO-Adam, the hard-label boundary search; those rows
time ours alone. Writes ``book/bench_lec_blackbox.md`` and ``artifacts/bench/lec_blackbox.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

from advbook import data
from advbook.attacks import boundary, colour, flow, square_trace, zoo
from advbook.attacks.core import margin
from advbook.book import experiment
from advbook.evaluation import evaluate
from advbook.training import train

REPO = Path(__file__).resolve().parents[1]


def timed(*fns, repeats: int, min_seconds: float = 0.25):
    """Median seconds per call and last output of each of ``fns``, after one warm-up call each. A
    measurement repeats a fast call until ``min_seconds`` have passed (as timeit's autorange), and
    the measurements alternate (a, b, a, b, ...) so that a change in the machine's load hits both
    sides alike."""
    outs = [fn() for fn in fns]
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            calls, t0 = 0, time.perf_counter()
            while True:
                outs[i] = fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    break
            times[i].append(elapsed / calls)
    return [(statistics.median(t), o) for t, o in zip(times, outs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="test images (one batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="cpu", choices=experiment.PROFILES)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from recoloradv import color_spaces, color_transformers
    from recoloradv.mister_ed import spatial_transformers

    P = experiment.resolve("hol_ddb", profile=args.profile)
    device = experiment.pick_device(P["device"])
    ds = data.load_dataset(P["dataset"])
    model = train.trained_for(P, ds, device=device).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    test = data.balanced_subset(ds.test.labels, n_per_class=max(1, args.n // len(ds.classes)), seed=1)
    x = data.to_float(ds.test.images[test]).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)                       # attack the model's own decisions
    n, k = len(x), 8
    g = torch.Generator(device=device).manual_seed(0)
    f = 0.5 * torch.randn(n, 2, *x.shape[2:], generator=g, device=device)
    grid = colour.colour_grid(k, like=x)
    shifts = torch.max(torch.min(0.06 * (2 * torch.rand(n, 3, k, k, k, generator=g, device=device) - 1), 1 - grid),
                       -grid)
    size = x.shape[-1]

    warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior")
    use_gpu = device.type == "cuda"
    spatial = spatial_transformers.FullSpatial(shape=x.shape, manual_gpu=use_gpu)
    spatial.xform_params.data = spatial.identity_params(x.shape) + f.permute(0, 2, 3, 1) * 2 / size
    recolour = color_transformers.FullSpatial(shape=x.shape, resolution_x=k, resolution_y=k, resolution_z=k,
                                              cspace=color_spaces.RGBColorSpace(), manual_gpu=use_gpu)
    recolour.xform_params.data = recolour.identity_params + shifts.permute(0, 2, 3, 4, 1)

    eps, budgets = 8 / 255, [10, 30, 100]

    def square_reference():
        return torch.stack([~evaluate._square(model, x, y, eps=eps, n_queries=b, seed=0) for b in budgets])

    def flow_norm_ours():
        return flow.flow_loss(f, eps=1e-10 * (size / 2) ** 2) * 2 / size   # mister_ed's normalised units

    with_reference = [
        ("stAdv flow resampling (bilinear, zeros outside)", "recoloradv (mister_ed FullSpatial)",
         lambda: flow.apply_flow(x, f), lambda: spatial(x).detach(),
         lambda o, r: (o - r).abs().max().item()),
        ("stAdv smoothness L_flow (relative difference)", "recoloradv (mister_ed stAdv_norm)",
         flow_norm_ours, lambda: spatial.stAdv_norm().detach(),
         lambda o, r: ((o - r).abs() / r.abs()).max().item()),
        (f"ReColorAdv colour function, {k}³ RGB grid", "recoloradv (FullSpatial, RGB)",
         lambda: colour.apply_colour(x, shifts), lambda: recolour(x).detach(),
         lambda o, r: (o - r).abs().max().item()),
        (f"Square L∞ trace at {budgets} queries, eps 8/255", "pyautoattack SquareAttack.perturb per budget",
         lambda: square_trace.square_trace(model, x, y, eps=eps, budgets=budgets).success, square_reference,
         lambda o, r: float((o != r).sum())),
    ]

    def loss_fn(batch, *, repeat):
        return margin(model(batch), y.repeat(repeat))

    ours_alone = [
        ("stAdv attack, Adam, 30 steps, tau 0.05", lambda: flow.flow_attack(model, x, y, steps=30, lr=0.01)),
        ("colour attack, PGD 20 steps, eps 0.06", lambda: colour.colour_attack(model, x, y, eps=0.06, steps=20)),
        ("ZOO coordinate estimate, 128 queries", lambda: zoo.zoo_gradient(
            loss_fn, x, h=1e-4, queries=128, generator=torch.Generator(device=device).manual_seed(0))),
        ("NES Gaussian estimate, 128 queries", lambda: zoo.zoo_gradient(
            loss_fn, x, h=1e-3, queries=128, generator=torch.Generator(device=device).manual_seed(0),
            estimator="gaussian")),
        ("ZOO-Adam, 5 steps × 32 coordinates", lambda: zoo.zoo_attack(model, x, y, steps=5, coords=32)),
        ("hard-label search, 5 random directions", lambda: boundary.hard_label_attack(
            model, x, y, directions=5, step=0.25, max_distance=5.0)),
    ]

    rows = []
    for name, ref_name, ours_fn, ref_fn, diff in with_reference:
        (t_ours, o), (t_ref, r) = timed(ours_fn, ref_fn, repeats=args.repeats)
        rows.append({"computation": name, "reference": ref_name, "images": n, "ours_img_s": n / t_ours,
                     "reference_img_s": n / t_ref, "ratio": t_ref / t_ours, "max_difference": diff(o, r)})
        print(f"{name}: ours {n / t_ours:.0f} img/s, {ref_name} {n / t_ref:.0f} img/s, ratio {t_ref / t_ours:.2f}, "
              f"difference {rows[-1]['max_difference']:.2e}")
    for name, fn in ours_alone:
        ((t_ours, _),) = timed(fn, repeats=args.repeats)
        rows.append({"computation": name, "reference": None, "images": n, "ours_img_s": n / t_ours,
                     "reference_img_s": None, "ratio": None, "max_difference": None})
        print(f"{name}: ours {n / t_ours:.1f} img/s (no reference)")

    machine = {"device": str(device), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "recoloradv": version("recoloradv"), "pyautoattack": version("pyautoattack"),
               "model": P["model"], "dataset": ds.name, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")}
    out = REPO / "artifacts" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lec_blackbox.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [f"Measured {machine['date']} on {machine['device']} ({machine['threads']} threads, {machine['cpu']}), "
             f"torch {machine['torch']}, recoloradv {machine['recoloradv']}, pyautoattack {machine['pyautoattack']}; "
             f"model `{machine['model']}` ({args.profile} profile), {n} `{machine['dataset']}` test images in one "
             f"batch, median of {args.repeats} runs after a warm-up (ours and the reference alternating). The difference column is the largest absolute "
             "difference of the outputs (relative for L_flow; for Square, the number of (budget, image) success "
             "flags that differ). Rows without a reference time our code alone: no maintained PyTorch "
             "implementation of these attacks was available to call.", "",
             "| computation | reference | ours (img/s) | reference (img/s) | speed-up (reference time / ours) | max difference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["reference"] is None:
            lines.append(f"| {r['computation']} | none (ours alone) | {r['ours_img_s']:.1f} | – | – | – |")
        else:
            lines.append(f"| {r['computation']} | {r['reference']} | {r['ours_img_s']:.0f} | {r['reference_img_s']:.0f} | "
                         f"{r['ratio']:.2f}× | {r['max_difference']:.1e} |")
    (REPO / "book" / "bench_lec_blackbox.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {REPO / 'book' / 'bench_lec_blackbox.md'}")


if __name__ == "__main__":
    main()
