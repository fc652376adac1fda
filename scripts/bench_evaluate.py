"""Throughput of the evaluation suite (advbook.evaluate), per attack, on a robust model.

    python scripts/bench_evaluate.py [--n 200] [--profile cpu]

The model is the PGD-trained one of HOL §6 for the chosen profile (from the cache, trained if
absent): evaluating a robust model is the case that costs, because most images survive the early
iterations. Each attack runs once on the same ``n`` test images (the suite attacks only the
naturally correct ones; the rate below counts all ``n``). FGSM and PGD are also timed against
foolbox in the same process. Writes ``book/bench_evaluate.md`` (included by the Performance page)
and ``artifacts/bench/evaluate.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import foolbox as fb
import torch

from advbook import data
from advbook.evaluation import evaluate
from advbook.book import experiment
from advbook.training import train

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="test images")
    parser.add_argument("--profile", default="cpu", choices=experiment.PROFILES)
    args = parser.parse_args()

    P = experiment.resolve("hol_freq", profile=args.profile)
    device = experiment.pick_device(P["device"])
    ds = data.load_dataset(P["dataset"])
    model = train.trained_for(P, ds, device=device, robust=True).model.eval()
    test = data.balanced_subset(ds.test.labels, n_per_class=args.n // len(ds.classes), seed=2)
    x = data.to_float(ds.test.images[test]).to(device)
    y = ds.test.labels[test].to(device)
    eps = 8 / 255
    suite = {"fgsm": dict(eps=eps), "pgd": dict(eps=eps, step_size=1 / 255, steps=20),
             "cw": dict(eps=eps, step_size=1 / 255, steps=20), "fmn": dict(eps=eps, steps=20),
             "autoattack": dict(eps=eps, version="custom", parts=["apgd-ce", "apgd-dlr"]),
             "square": dict(eps=eps, n_queries=300),
             "mde": dict(eps=eps, parts=["md", "mdmt"], steps=20, change_point=8, n_targets=3),
             "spsa": dict(eps=eps, steps=20, samples=32)}
    labels = {"fgsm": "FGSM", "pgd": "PGD-20 (1/255)", "cw": "CW loss, PGD-20", "fmn": "FMN L∞, 20 steps (foolbox)",
              "autoattack": "AutoAttack: APGD-CE + APGD-DLR (pyautoattack)", "square": "Square, 300 queries (pyautoattack)",
              "mde": "MDE: MD + MD-MT (3 targets), 20 steps each", "spsa": "SPSA, 20 steps × 32 directions"}
    evaluate.evaluate(model, x[:8], y[:8], attacks={"pgd": suite["pgd"]})  # warm-up
    result = evaluate.evaluate(model, x, y, attacks=suite, batch_size=len(x))
    acc = result.accuracy()
    rows = [{"evaluation": labels[k], "images": len(x), "img_s": len(x) / s, "seconds": s, "accuracy": acc[k]}
            for k, s in result.seconds.items()]

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    refs = []
    for name, ours, theirs in [
        ("FGSM", lambda: evaluate.EVALUATIONS["fgsm"](model, x, y, eps=eps),
         lambda: fb.attacks.LinfFastGradientAttack(random_start=False)(fmodel, x, y, epsilons=eps)[2]),
        ("PGD-20, random start", lambda: evaluate.EVALUATIONS["pgd"](model, x, y, eps=eps, step_size=1 / 255, steps=20),
         lambda: fb.attacks.LinfPGD(abs_stepsize=1 / 255, steps=20, random_start=True)(fmodel, x, y, epsilons=eps)[2]),
    ]:
        ours(), theirs()
        t0 = time.perf_counter(); robust = ours(); t_ours = time.perf_counter() - t0
        t0 = time.perf_counter(); success = theirs(); t_fb = time.perf_counter() - t0
        refs.append({"attack": name, "ours_img_s": len(x) / t_ours, "foolbox_img_s": len(x) / t_fb,
                     "ratio": t_fb / t_ours, "ours_robust": float(robust.float().mean() * 100),
                     "foolbox_robust": float((~success).float().mean() * 100)})

    machine = {"device": str(device), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "foolbox": fb.__version__, "model": f"{P['model']} (PGD-AT, HOL §6)",
               "dataset": ds.name, "date": time.strftime("%Y-%m-%d")}
    out = REPO / "artifacts" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate.json").write_text(json.dumps({"machine": machine, "suite": rows, "reference": refs}, indent=2) + "\n")
    lines = [f"Measured {machine['date']} on {machine['device']} ({machine['threads']} threads, {machine['cpu']}), "
             f"torch {machine['torch']}; model {machine['model']}, {len(x)} `{machine['dataset']}` test images, "
             "eps 8/255, one run each. The suite attacks only the naturally correct images; rates count all of them.", "",
             "| evaluation | img/s | seconds | robust accuracy (%) |", "|---|---|---|---|"]
    lines += [f"| {r['evaluation']} | {r['img_s']:.1f} | {r['seconds']:.1f} | {r['accuracy']:.1f} |" for r in rows]
    lines += ["", "Against foolbox, same model, images and settings (random starts differ, so robust accuracies "
              "agree to within sampling noise rather than exactly):", "",
              "| attack | ours (img/s) | foolbox (img/s) | speed-up | ours: robust % | foolbox: robust % |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['ours_img_s']:.0f} | {r['foolbox_img_s']:.0f} | {r['ratio']:.2f}× | "
              f"{r['ours_robust']:.1f} | {r['foolbox_robust']:.1f} |" for r in refs]
    (REPO / "book" / "bench_evaluate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
