"""Throughput of the LEC chapter's white-box attacks against the reference libraries, in one process,
on the same model, images and settings.

    python scripts/bench_lec_whitebox.py [--n 200] [--repeats 3] [--profile cpu]

The model is the one the HOL §4 notebook trains for the chosen profile (the same as
scripts/bench_attacks.py: taken from the cache, trained if absent). Each attack runs ``repeats``
times after a warm-up; the median wall time gives images per second, and the ratio reference /
ours is reported beside how the two results compare. References: foolbox for FGSM and C&W-L2,
ART for JSMA and the universal perturbation. JSMA and the universal perturbation are slow per image
(one pair of features per iteration; one image at a time), so they run on at most ``--n-slow``
images. Writes ``book/bench_lec_whitebox.md`` and ``artifacts/bench/lec_whitebox.json`` and prints
the table. ``--n 20 --repeats 1`` is a quick check once the model is cached.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import art
import foolbox as fb
import numpy as np
import torch
from art.attacks.evasion import SaliencyMapMethod, UniversalPerturbation
from art.estimators.classification import PyTorchClassifier

from advbook import data
from advbook.attacks.cw import cw_l2
from advbook.attacks.fgsm import fgsm
from advbook.attacks.jsma import jsma
from advbook.attacks.universal import fooling_rate, universal_perturbation
from advbook.book import experiment
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
    parser.add_argument("--n", type=int, default=200, help="test images for FGSM and C&W-L2 (one batch)")
    parser.add_argument("--n-slow", type=int, default=20, help="at most this many images for JSMA and the UAP")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="cpu", choices=experiment.PROFILES)
    args = parser.parse_args()

    P = experiment.resolve("hol_ddb", profile=args.profile)
    device = experiment.pick_device(P["device"])
    ds = data.load_dataset(P["dataset"])
    model = train.trained_for(P, ds, device=device).model.eval()
    k = len(ds.classes)
    test = data.balanced_subset(ds.test.labels, n_per_class=max(1, args.n // k), seed=1)
    x = data.to_float(ds.test.images[test]).to(device)
    y = ds.test.labels[test].to(device)
    n_slow = min(args.n_slow, len(x))
    xs = x[:n_slow]
    with torch.no_grad():
        pred_s = model(xs).argmax(1)
    target_s = (pred_s + 1) % k
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=k, clip_values=(0.0, 1.0),
                                   device_type="gpu" if device.type == "cuda" else "cpu")

    eps = 8 / 255
    cw = dict(binary_steps=5, steps=100, lr=1e-2, initial_const=1e-2, kappa=0.0)
    jsma_theta, jsma_gamma = 1.0, 0.1
    uap_eps, uap_passes = 10 / 255, 2

    def fgsm_compare(o, f):
        return (f"max abs. difference of x_adv {(o.x_adv - f[1]).abs().max().item():.1e}",
                bool(torch.equal(o.success, f[2])))

    def cw_compare(o, f):
        theirs = (f[0] - x).flatten(1).norm(dim=1)
        both = o.success & f[2]
        ratio = (o.l2[both].median() / theirs[both].median()).item() if both.any() else float("nan")
        return f"median L2 ours / foolbox {ratio:.3f}", bool(torch.equal(o.success, f[2]))

    def jsma_compare(o, f):
        theirs = torch.from_numpy(f).to(device)
        with torch.no_grad():
            hit = model(theirs).argmax(1) == target_s
        l0 = lambda ch, ok: ch.flatten(1).sum(1)[ok].float().median().item() if ok.any() else float("nan")
        return (f"success {o.result.success.float().mean():.0%} vs {hit.float().mean():.0%}, median L0 "
                f"{l0(o.changed, o.result.success):.0f} vs {l0(theirs != xs, hit):.0f} (ART: top-2 target "
                "gradient, not the pairwise map)", bool(torch.equal(o.result.success, hit)))

    def uap_compare(o, f):
        return (f"fooling rate {o.fooling_rate:.2f} vs {fooling_rate(model, xs, torch.from_numpy(f).to(device)):.2f}",
                None)

    def art_jsma(m):
        return SaliencyMapMethod(classifier, theta=jsma_theta, gamma=jsma_gamma, batch_size=n_slow,
                                 verbose=False).generate(xs[:m].cpu().numpy(), y=target_s[:m].cpu().numpy())

    def art_uap(m):
        random.seed(0)
        attack = UniversalPerturbation(classifier, attacker="deepfool", delta=0.2, max_iter=uap_passes, eps=uap_eps,
                                       norm=np.inf, verbose=False,
                                       attacker_params={"max_iter": 50, "epsilon": 0.02, "nb_grads": k, "verbose": False})
        attack.generate(xs[:m].cpu().numpy())
        return attack.noise

    def fb_cw(m):
        return fb.attacks.L2CarliniWagnerAttack(binary_search_steps=cw["binary_steps"], steps=cw["steps"],
                                                stepsize=cw["lr"], confidence=cw["kappa"], initial_const=cw["initial_const"],
                                                abort_early=False)(fmodel, x[:m], y[:m], epsilons=None)

    # each side is a function of the number of images m: a warm-up on 2 images, then the timed runs on all
    cases = [
        ("FGSM L∞, eps 8/255", len(x),
         lambda m: fgsm(model, x[:m], y[:m], eps=eps),
         lambda m: fb.attacks.FGSM()(fmodel, x[:m], y[:m], epsilons=eps), fgsm_compare, "foolbox"),
        (f"C&W-L2, {cw['binary_steps']} x {cw['steps']} steps, no early abort (the same algorithm on both sides)", len(x),
         lambda m: cw_l2(model, x[:m], y[:m], abort_early=False, **cw), fb_cw, cw_compare, "foolbox"),
        (f"JSMA, theta {jsma_theta:g}, gamma {jsma_gamma:g}, target = prediction + 1", n_slow,
         lambda m: jsma(model, xs[:m], target_s[:m], theta=jsma_theta, gamma=jsma_gamma), art_jsma, jsma_compare, "ART"),
        (f"universal perturbation L∞ 10/255, DeepFool, {uap_passes} passes", n_slow,
         lambda m: universal_perturbation(model, xs[:m], eps=uap_eps, norm="linf", max_passes=uap_passes, seed=0),
         art_uap, uap_compare, "ART"),
    ]
    rows = []
    for name, n, ours_fn, theirs_fn, compare, ref in cases:
        ours_fn(2), theirs_fn(2)  # warm-up
        t_ours, o = timed(lambda: ours_fn(n), args.repeats)
        t_ref, f = timed(lambda: theirs_fn(n), args.repeats)
        agreement, same = compare(o, f)
        rows.append({"attack": name, "reference": ref, "images": n, "ours_img_s": n / t_ours, "reference_img_s": n / t_ref,
                     "ratio": t_ref / t_ours, "agreement": agreement, "same_success": same})
        print(f"{name}: ours {n / t_ours:.1f} img/s, {ref} {n / t_ref:.1f} img/s, ratio {t_ref / t_ours:.2f}; {agreement}")

    machine = {"device": str(device), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "foolbox": fb.__version__, "art": art.__version__, "model": P["model"],
               "dataset": ds.name, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d")}
    out = REPO / "artifacts" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lec_whitebox.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [f"Measured {machine['date']} on {machine['device']} ({machine['threads']} threads, {machine['cpu']}), "
             f"torch {machine['torch']}, foolbox {machine['foolbox']}, ART {machine['art']}; model `{machine['model']}` "
             f"({args.profile} profile), `{machine['dataset']}` test images in one batch, median of {args.repeats} runs. "
             "Both sides get the same images and settings. ART's JSMA is a different rule (the two largest target "
             "derivatives, not the paper's pairwise map), so its column compares cost, not the same computation.", "",
             "| attack | reference | images | ours (img/s) | reference (img/s) | speed-up (reference time / ours) | results | same success flags |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flags = "—" if r["same_success"] is None else ("yes" if r["same_success"] else "no")
        lines.append(f"| {r['attack']} | {r['reference']} | {r['images']} | {r['ours_img_s']:.1f} | {r['reference_img_s']:.1f} | "
                     f"{r['ratio']:.2f}× | {r['agreement']} | {flags} |")
    text = "\n".join(lines) + "\n"
    (REPO / "book" / "bench_lec_whitebox.md").write_text(text)
    print(text)
    print(f"wrote {REPO / 'book' / 'bench_lec_whitebox.md'}")


if __name__ == "__main__":
    main()
