"""The evaluation suite: per-sample robust flags, their bounds, resume, and reference attacks."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from advbook.evaluation import compare, evaluate

EPS = 8 / 255


def test_cw_loss_on_a_hand_case():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    # -clamp(z_y - max_other + kappa, 0): sample 1: 3 - 1 + 0.5 = 2.5; sample 2: 0 - 2 + 0.5 -> clamped to 0
    assert evaluate.cw_loss(logits, y, kappa=0.5).item() == pytest.approx(-2.5)


@pytest.fixture(scope="module")
def result(tiny_model, test_batch):
    x, _, y = test_batch
    attacks = {"fgsm": dict(eps=EPS), "pgd": dict(eps=EPS, step_size=2 / 255, steps=10),
               "cw": dict(eps=EPS, step_size=2 / 255, steps=10), "fmn": dict(eps=EPS, steps=20),
               "autoattack": dict(eps=EPS, version="custom", parts=["apgd-ce"]),
               "square": dict(eps=EPS, n_queries=50)}
    return evaluate.evaluate(tiny_model, x, y, attacks=attacks, batch_size=32)


def test_no_attack_makes_a_wrong_sample_right(result):
    r = result.robust
    for column in r.columns:
        assert not (r[column] & ~r["natural"]).any(), column
    assert result.accuracy()["pgd"] < result.accuracy()["natural"]  # the tiny model is not robust at 8/255


def test_worst_case_is_the_per_sample_and_of_the_flags():
    flags = pd.DataFrame({"natural": [True, True, True, True, False],
                          "pgd": [True, False, True, True, False],
                          "cw": [True, True, False, True, False]})
    acc = evaluate.EvalResult(flags, {}).accuracy()
    assert acc.drop("worst").tolist() == [80.0, 60.0, 60.0]
    assert acc["worst"] == 40.0  # samples 0 and 3 survive both: less than either attack alone (60)


def test_iterative_attacks_are_at_least_as_strong_as_fgsm_here(result):
    acc = result.accuracy()
    assert acc["pgd"] <= acc["fgsm"] and acc["autoattack"] <= acc["fgsm"]


def test_a_vanishing_budget_changes_nothing(tiny_model, test_batch):
    x, _, y = test_batch
    res = evaluate.evaluate(tiny_model, x, y, attacks={"pgd": dict(eps=1e-7, step_size=1e-7, steps=3),
                                                        "fgsm": dict(eps=1e-7)})
    assert res.robust["pgd"].equals(res.robust["natural"]) and res.robust["fgsm"].equals(res.robust["natural"])


def test_an_interrupted_evaluation_resumes_from_its_files(tiny_model, test_batch, tmp_path):
    x, _, y = test_batch
    attacks = {"fgsm": dict(eps=EPS), "pgd:5": dict(eps=EPS, step_size=2 / 255, steps=5)}
    first = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert first.seconds["pgd:5"] > 0 and len(list(tmp_path.glob("*.pt"))) == 2
    again = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert again.seconds == {"fgsm": 0.0, "pgd:5": 0.0}
    assert again.robust.equals(first.robust)
    victim = next(tmp_path.glob("pgd_5-*.pt"))
    victim.write_bytes(victim.read_bytes()[:10])  # truncated: recomputed, not trusted
    third = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert third.seconds["pgd:5"] > 0 and third.robust.equals(first.robust)


def test_unknown_evaluation_names_the_valid_ones(tiny_model, test_batch):
    x, _, y = test_batch
    with pytest.raises(ValueError, match="^unknown evaluation\\(s\\) bogus; valid: fgsm, pgd, cw, fmn, autoattack, square, "
                                         "spsa, mde, apgd_ce, bim, mim, transfer$"):
        evaluate.evaluate(tiny_model, x, y, attacks={"bogus": {}})
    with pytest.raises(ValueError, match="^unknown MDE part\\(s\\) apgd-t; valid: apgd-ce, md, mdmt, fab-t$"):
        evaluate.evaluate(tiny_model, x, y, attacks={"mde": dict(eps=EPS, parts=["md", "apgd-t"])})


# --- resume files are keyed by code version -------------------------------------------------------

def test_bumping_an_evaluations_code_version_reruns_it_and_only_it(tiny_model, test_batch, tmp_path, monkeypatch):
    x, _, y = test_batch
    attacks = {"fgsm": dict(eps=EPS), "pgd:5": dict(eps=EPS, step_size=2 / 255, steps=5)}
    first = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    monkeypatch.setitem(evaluate.EVAL_CODE_VERSION, "pgd", evaluate.EVAL_CODE_VERSION["pgd"] + 1)
    fixed = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert fixed.seconds["fgsm"] == 0.0 and fixed.seconds["pgd:5"] > 0    # pgd re-run, fgsm read back
    assert fixed.code["pgd:5"] != first.code["pgd:5"] and fixed.code["fgsm"] == first.code["fgsm"]
    assert fixed.robust.equals(first.robust)
    again = evaluate.evaluate(tiny_model, x, y, attacks=attacks, resume_dir=tmp_path)
    assert again.seconds == {"fgsm": 0.0, "pgd:5": 0.0}                   # the new version's file is kept


def test_code_version_follows_what_an_evaluation_calls(monkeypatch):
    import foolbox

    before = evaluate.code_version("mde")
    monkeypatch.setitem(evaluate.EVAL_CODE_VERSION, "autoattack", evaluate.EVAL_CODE_VERSION["autoattack"] + 1)
    assert evaluate.code_version("mde") != before            # MDE runs AutoAttack's code for APGD-CE, FAB-T
    assert evaluate.code_version("fmn")["libraries"] == {"foolbox": foolbox.__version__}
    assert set(evaluate.EVAL_CODE_VERSION) == set(evaluate.EVALUATIONS)


# --- the name of what ran ------------------------------------------------------------------------

@pytest.mark.parametrize("name, settings, expected", [
    ("autoattack", dict(eps=EPS), "AutoAttack"),
    ("autoattack", dict(eps=EPS, version="standard", parts=["apgd-ce", "apgd-t", "fab-t", "square"]), "AutoAttack"),
    ("autoattack", dict(eps=EPS, version="custom", parts=["apgd-ce", "apgd-t", "fab-t", "square"]), "AutoAttack"),
    ("autoattack", dict(eps=EPS, version="custom", parts=["apgd-ce"]), "APGD-CE"),
    ("autoattack", dict(eps=EPS, version="custom", parts=["apgd-ce", "apgd-dlr"]), "APGD-CE + APGD-DLR"),
    ("mde", dict(eps=EPS), "MDE"),
    ("mde", dict(eps=EPS, parts=["apgd-ce", "md", "mdmt", "fab-t"]), "MDE"),
    ("mde", dict(eps=EPS, parts=["md", "mdmt"]), "MD + MD-MT"),
    ("mde", dict(eps=EPS, parts=["md"]), "MD"),
    ("fgsm", dict(eps=EPS), "FGSM"),
    ("pgd:20", dict(eps=EPS, step_size=1 / 255, steps=20), "PGD-20"),
    ("square", dict(eps=EPS, n_queries=5000), "Square-5000"),
])
def test_display_name_says_what_ran(name, settings, expected):
    assert evaluate.display_name(name, settings) == expected


def test_the_profiles_evaluations_are_named_by_what_they_run():
    from advbook.book import experiment

    names = lambda profile: {k: evaluate.display_name(k, s)  # noqa: E731
                             for k, s in compare.attack_suite(experiment.resolve("vir_main", profile=profile)).items()}
    assert (names("paper")["autoattack"], names("paper")["mde"]) == ("AutoAttack", "MDE")
    cpu = names("cpu")
    assert cpu["autoattack"] == "APGD-CE" and cpu["mde"] == "MD + MD-MT"


def test_results_carry_what_ran(tiny_model, test_batch):
    x, _, y = test_batch
    attacks = {"fgsm": dict(eps=EPS), "mde": dict(eps=EPS, parts=["md"], steps=4, change_point=2)}
    model = SimpleNamespace(model=tiny_model, key="tiny-ran-test")
    rows, _, seconds = compare.evaluate_models({"tiny": model}, x=x, y=y, index=torch.arange(len(x)),
                                               attacks=attacks, batch_size=32)
    ran = dict(zip(rows.evaluation, rows.ran))
    assert ran == {"natural": "natural", "fgsm": "FGSM", "mde": "MD", "worst": "worst of FGSM, MD"}
    assert dict(zip(seconds.evaluation, seconds.ran)) == {"fgsm": "FGSM", "mde": "MD"}


# --- settings are checked before any work --------------------------------------------------------

class Untouchable(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("the model was called before the settings were checked")


@pytest.mark.parametrize("kind", list(evaluate.EVALUATIONS))
def test_a_misspelled_setting_is_an_error_naming_the_valid_ones(kind):
    valid, required = evaluate.valid_settings(kind)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD
                   for p in inspect.signature(evaluate.EVALUATIONS[kind]).parameters.values())
    settings = {**{k: 1 for k in required}, "epsilon": 0.1}
    x, y = torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=f"^{kind}:2: unknown setting\\(s\\) epsilon; valid: {', '.join(valid)}$"):
        evaluate.evaluate(Untouchable(), x, y, attacks={f"{kind}:2": settings})
    if required[1:]:
        with pytest.raises(ValueError, match=f"^{kind}: missing setting\\(s\\) {', '.join(required[1:])}; valid: "):
            evaluate.evaluate(Untouchable(), x, y, attacks={kind: {required[0]: 1}})


def test_the_registry_settings_are_the_signatures_less_what_evaluate_supplies():
    assert evaluate.valid_settings("pgd") == (["eps", "step_size", "steps", "seed"], ["eps", "step_size", "steps"])
    assert evaluate.valid_settings("autoattack")[0] == ["eps", "version", "parts", "seed"]  # no batch_size, state_path
    assert "batch_size" not in evaluate.valid_settings("mde")[0]


@pytest.mark.parametrize("settings, message", [
    (dict(eps=EPS, version="rand"), "autoattack: version must be standard or custom, got 'rand'"),
    (dict(eps=EPS, version="custom"), "autoattack: version='custom' needs parts"),
    (dict(eps=EPS, version="custom", parts=["apgd-x"]), r"autoattack: unknown AutoAttack part\(s\) apgd-x; valid: "),
    (dict(eps=EPS, version="standard", parts=["apgd-ce"]), "autoattack: parts apgd-ce would be ignored"),
])
def test_autoattack_settings_that_would_not_run_as_written_are_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        evaluate.evaluate(Untouchable(), torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long),
                          attacks={"autoattack": settings})


def test_pgd_predictions_and_the_pgd_evaluation_give_the_same_flags(tiny_model, test_batch):
    """VIR-F1's confusion matrices (pgd_predictions) and VIR-T1's PGD column (evaluate) on the same
    model, images and settings: one computation, so the same samples survive."""
    x, _, y = test_batch
    kw = dict(eps=EPS, step_size=2 / 255, steps=5, seed=3)
    flags = evaluate.evaluate(tiny_model, x, y, attacks={"pgd": kw}, batch_size=16).robust["pgd"]
    pred = evaluate.pgd_predictions(tiny_model, x, y, batch_size=16, **kw)
    assert 0 < flags.sum() < flags.size and not flags.all()
    assert torch.equal(pred == y, torch.tensor(flags.to_numpy()))
    with torch.no_grad():
        natural = tiny_model(x).argmax(1)
    wrong = natural != y
    assert wrong.any() and torch.equal(pred[wrong], natural[wrong])  # a wrong sample is not attacked


def test_evaluate_gives_the_model_back_in_its_mode(tiny_model, test_batch):
    x, _, y = test_batch
    tiny_model.train()
    try:
        evaluate.evaluate(tiny_model, x[:8], y[:8], attacks={"fgsm": dict(eps=EPS)})
        evaluate.pgd_predictions(tiny_model, x[:8], y[:8], eps=EPS, step_size=EPS, steps=1)
        assert tiny_model.training
    finally:
        tiny_model.eval()


# --- each evaluation against a closed form or a reference library --------------------------------

def linear_model(k: int, *, n: int = 200, lo: float = 0.0, hi: float = 1.0, seed: int = 0):
    """A linear ``k``-class model on 3x4x4 inputs in [lo, hi], with the labels it predicts."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, k)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = lo + (hi - lo) * torch.rand(n, 3, 4, 4)
    return model, x, model(x).argmax(1)


def exact_robust(model, x, y, eps):
    """Robust iff for every other class j the smallest z_y - z_j over the box [max(0, x - eps),
    min(1, x + eps)] is positive: each coordinate at the end of its interval that lowers it."""
    w, b = model[1].weight, model[1].bias
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    robust = torch.ones(len(x), dtype=torch.bool)
    for j in range(w.shape[0]):
        d = w[y] - w[j]
        robust &= ((d * torch.where(d > 0, lo, hi)).sum(1) + b[y] - b[j] > 0) | (y == j)
    return robust


def minimal_eps(model, x, y, *, iterations: int = 30):
    """Per sample, the smallest eps at which :func:`exact_robust` fails (bisection; it is monotone)."""
    lo, hi = torch.zeros(len(x)), torch.ones(len(x))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        robust = exact_robust(model, x, y, mid.view(-1, 1, 1, 1))
        lo, hi = torch.where(robust, mid, lo), torch.where(robust, hi, mid)
    return hi


def exact_linf_distance(model, x, y):
    """The smallest L-inf perturbation that changes a linear model's label, ignoring [0, 1]:
    ``min_j (z_y - z_j) / ||w_y - w_j||_1``."""
    w, z = model[1].weight, model(x)
    gaps = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(2)
    return gaps.scatter(1, y[:, None], float("inf")).amin(1)


def test_fgsm_is_the_closed_form_sign_step_on_a_linear_model():
    model, x, y = linear_model(2)
    eps = 0.08
    w = model[1].weight
    x_adv = (x + eps * (w[1 - y] - w[y]).sign().view_as(x)).clamp(0, 1)   # x + eps sign(w_y' - w_y), clipped
    expected = model(x_adv).argmax(1) == y
    assert 0.2 < expected.float().mean() < 0.8
    assert torch.equal(evaluate._fgsm(model, x, y, eps=eps), expected)
    assert torch.equal(expected, exact_robust(model, x, y, eps))  # and for two classes it is optimal


@pytest.mark.parametrize("kappa", [50.0, 0.0])
def test_cw_reaches_the_exact_robustness_of_a_linear_two_class_model(kappa):
    model, x, y = linear_model(2)
    eps = 0.08
    expected = exact_robust(model, x, y, eps)
    assert 0.2 < expected.float().mean() < 0.8
    got = evaluate._cw(model, x, y, eps=eps, step_size=eps / 4, steps=10, kappa=kappa)
    assert torch.equal(got, expected)


def test_fmn_finds_the_minimal_linf_distance_of_a_linear_model():
    model, x, y = linear_model(5, lo=0.3, hi=0.7)   # far enough from 0 and 1 that the box never binds
    dist = exact_linf_distance(model, x, y)
    eps = float(dist.median())
    assert eps < 0.3
    got = evaluate._fmn(model, x, y, eps=eps, steps=50)
    assert torch.equal(got[dist > eps], torch.ones(int((dist > eps).sum()), dtype=torch.bool))  # none beyond eps
    clear = dist < 0.9 * eps
    assert clear.sum() > 50 and not got[clear].any()   # all well inside eps found (FMN is within 5% here)


def test_square_stays_in_the_ball_and_breaks_only_what_can_be_broken():
    model, x, y = linear_model(5)
    eps = 0.05
    x_adv = evaluate._square_examples(model, x, y, eps=eps, n_queries=300, seed=0)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    flags = evaluate._square(model, x, y, eps=eps, n_queries=300, seed=0)
    assert torch.equal(flags, model(x_adv).argmax(1) == y)      # broken only where it truly flips
    exact = exact_robust(model, x, y, eps)
    assert 0.2 < exact.float().mean() < 0.8
    assert not (exact & ~flags).any()                            # robust accuracy >= the white-box exact one
    easy = minimal_eps(model, x, y) < 0.6 * eps
    assert easy.sum() > 30 and not flags[easy].any()             # and it breaks all that break well inside eps


def autoattack_case():
    """A linear 10-class model (the standard 9 targets exist), a few samples it gets wrong, and a
    budget at the median of the exact minimal one (so flags are sensitive to it)."""
    model, x, y = linear_model(10, n=64)
    eps = float(minimal_eps(model, x, y).median())
    y[:4] = (y[:4] + 1) % 10
    return model, x, y, eps


def pyautoattack_flags(model, x, y, *, eps, seed, parts=None):
    """pyautoattack called directly: its standard version, or that version with ``attacks_to_run``
    set to ``parts``."""
    from pyautoattack import AutoAttack

    reference = AutoAttack(model, eps=eps, norm="Linf", seed=seed, version="standard", device="cpu")
    reference.verbose = False
    if parts is not None:
        reference.attacks_to_run = list(parts)
    x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=500)
    return model(x_adv).argmax(1) == y


def test_autoattack_wrapper_agrees_with_pyautoattack_called_directly():
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y, eps = autoattack_case()
    parts = ["apgd-ce", "apgd-t"]   # FAB-T and Square cost seconds: the full version is the slow test below
    ours = evaluate.evaluate(model, x, y, attacks={"autoattack": dict(eps=eps, version="custom", parts=parts,
                                                                      seed=1)}).robust["autoattack"]
    theirs = pyautoattack_flags(model, x, y, eps=eps, seed=1, parts=parts)
    assert 10 < theirs.sum() < len(x) - 10
    assert torch.equal(torch.tensor(ours.to_numpy()), theirs)
    # one part alone is that attack with the standard settings: APGD-CE, one restart of 100 steps
    apgd = APGDAttack(model, n_restarts=1, n_iter=100, eps=eps, norm="Linf", seed=1, loss="ce", device="cpu")
    alone = model(apgd.perturb(x[4:], y[4:])).argmax(1) == y[4:]
    assert torch.equal(evaluate._autoattack(model, x[4:], y[4:], eps=eps, version="custom", parts=["apgd-ce"],
                                            seed=1), alone)


@pytest.mark.slow
def test_standard_autoattack_agrees_with_pyautoattack_called_directly():
    model, x, y, eps = autoattack_case()
    ours = evaluate.evaluate(model, x, y, attacks={"autoattack": dict(eps=eps, seed=1)}).robust["autoattack"]
    assert torch.equal(torch.tensor(ours.to_numpy()), pyautoattack_flags(model, x, y, eps=eps, seed=1))


def test_a_reduced_autoattack_keeps_the_standard_settings(tiny_model, test_batch, monkeypatch):
    """version="custom" runs the listed parts with the standard version's settings (one APGD restart,
    5000 Square queries), and as many targets as the model has other classes (at most 9)."""
    from pyautoattack import AutoAttack

    seen = {}

    def capture(self, x, y, *, batch_size, state_path):
        seen["adversary"], seen["batch_size"] = self, batch_size
        return x, y

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", capture)
    x, pred, _ = test_batch
    evaluate._autoattack(tiny_model, x, pred, eps=EPS, version="custom", parts=["apgd-ce", "fab-t"], seed=4,
                         batch_size=17)
    a = seen["adversary"]
    assert a.attacks_to_run == ["apgd-ce", "fab-t"] and (a.epsilon, a.norm, a.seed) == (EPS, "Linf", 4)
    assert (a.apgd.n_restarts, a.apgd.n_iter, a.fab.n_restarts, a.square.n_queries) == (1, 100, 1, 5000)
    assert a.apgd_targeted.n_target_classes == a.fab.n_target_classes == 3   # tiny_model has 4 classes
    assert seen["batch_size"] == 17
