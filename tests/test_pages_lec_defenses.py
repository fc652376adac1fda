"""The library behind the LEC defenses page (LEC-F11): the six models and the denoiser
(advbook.training.lecture_models), the defenses and their plain and adaptive attacks
(advbook.evaluation.defenses_lec), the figure, the profiles and the notebook's form; on the synthetic
set with tiny models, and with the page's claims decided on the per-image table it writes."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from advbook import data
from advbook.analysis import claims as engine
from advbook.book import experiment, plots, plots_lec_defenses, verdicts
from advbook.evaluation import defenses_lec
from advbook.models.defended import NoiseLayers, Purified, Purifier, Quantize, RandomResizePad
from advbook.training import defenses, lecture_models

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "14_lec_defenses.ipynb"
EPS = 8 / 255
PARAMS = dict(model="tiny_cnn", seed=0, train_per_class=10, epochs=1, batch_size=20, lr=0.05, weight_decay=5e-4,
              at_eps=EPS, at_step_size=4 / 255, at_steps=1, trades_beta=5.0, alp_lambda=0.5, distill_t=100.0,
              distill_epochs=2, purifier_width=4, purifier_sigma=0.1, purifier_steps=5, resize_out=12, noise_sigma=0.05,
              quantise_bits=5, denoiser_adaptive="pgd", eval_eps=EPS, eval_step_size=2 / 255, eval_steps=2,
              eot_samples=2, eval_batch_size=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models and images here are tiny: one thread spares OpenMP's synchronisation, which on a
    shared 2-core machine costs far more than the arithmetic (10x wall time measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(synth):
    return lecture_models.train_lecture_models(PARAMS, dataset=synth, device="cpu")


@pytest.fixture(scope="module")
def purifier(synth):
    return lecture_models.fit_purifier(PARAMS, dataset=synth, device="cpu")


@pytest.fixture(scope="module")
def batch(synth):
    index = torch.arange(40)
    return data.to_float(synth.test.images[index]), synth.test.labels[index], index


# ---------------------------------------------------------------- training

def test_vir_params_are_the_keys_defense_config_reads_with_nothing_forked():
    p = lecture_models.vir_params(PARAMS)
    assert p["reweight_from"] == 0 and p["vir_trades_beta"] == PARAMS["trades_beta"]
    assert "alp_lambda" not in p and p["at_steps"] == 1
    with pytest.raises(ValueError, match=r"^missing parameter\(s\) trades_beta; needed: model, seed, .*trades_beta$"):
        lecture_models.vir_params({k: v for k, v in PARAMS.items() if k != "trades_beta"})


def test_the_paper_profile_shares_vir_mains_cached_models():
    """Same configurations and the same subset: the same cache keys as vir_main's paper models."""
    page, vir = experiment.resolve("lec_defenses", profile="paper"), experiment.resolve("vir_main", profile="paper")
    for name in lecture_models.SHARED:
        assert (defenses.defense_config(name, lecture_models.vir_params(page)).key_fields()
                == defenses.defense_config(name, vir).key_fields()), name
    assert all(page[k] == vir[k] for k in ("model", "seed", "train_per_class"))



def test_the_cpu_profile_with_vir_mains_cpu_settings_reads_vir_mains_models():
    """The override the page names (its own cpu models are smaller, for a 3-minute page)."""
    overrides = {"train_per_class": "300", "epochs": "10", "at_steps": "3", "at_step_size": "2.5/255"}
    page = experiment.resolve("lec_defenses", profile="cpu", overrides=overrides)
    vir = experiment.resolve("vir_main", profile="cpu")
    for name in lecture_models.SHARED:
        assert (defenses.defense_config(name, lecture_models.vir_params(page)).key_fields()
                == defenses.defense_config(name, vir).key_fields()), name
    plain = experiment.resolve("lec_defenses", profile="cpu")
    assert defenses.defense_config("at", lecture_models.vir_params(plain)).key_fields() != \
        defenses.defense_config("at", vir).key_fields()


def test_lecture_configs_carry_the_schedule_attack_and_temperature():
    cfgs = lecture_models.lecture_configs(PARAMS)
    assert {n: c.objective for n, c in cfgs.items()} == {"alp": "alp", "teacher": "temperature_standard",
                                                          "student": "distillation"}
    assert cfgs["alp"].hyper.lam == 0.5 and cfgs["alp"].hyper.eps == EPS and cfgs["alp"].hyper.steps == 1
    assert cfgs["teacher"].hyper.temperature == cfgs["student"].hyper.temperature == 100.0
    assert cfgs["alp"].epochs == 1 and cfgs["teacher"].epochs == cfgs["student"].epochs == 2
    assert all(c.batch_size == 20 and c.lr == 0.05 for c in cfgs.values())


def test_train_lecture_models_trains_six_the_student_from_its_teacher_then_reads_the_cache(synth, models):
    assert list(models) == list(lecture_models.MODELS)
    objectives = {n: m.meta["config"]["objective"] for n, m in models.items()}
    assert objectives == {"standard": "standard", "at": "pgd_at", "trades": "trades", "alp": "alp",
                          "teacher": "temperature_standard", "student": "distillation"}
    assert models["student"].meta["teacher"] == models["teacher"].key
    assert {m.meta["n_train"] for m in models.values()} == {40}                 # 10 per class, 4 classes
    seen = []
    again = lecture_models.train_lecture_models(PARAMS, dataset=synth, device="cpu", on_model=seen.append)
    assert all(m.from_cache for m in again.values()) and len(seen) == 6
    assert [m.key for m in again.values()] == [m.key for m in models.values()]
    table = lecture_models.training_table(again)
    assert list(table.index) == list(lecture_models.MODELS) and table["from cache"].all()
    assert table.loc["student", "T"] == 100.0 and table.loc["at", "T"] == ""


def test_fit_purifier_is_cached_and_keyed_by_its_settings(synth, purifier):
    assert isinstance(purifier, Purifier) and not purifier.training
    again = lecture_models.fit_purifier(PARAMS, dataset=synth, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(purifier.state_dict().values(), again.state_dict().values()))
    folders = {p.parent for p in Path(lecture_models.cache.cache_dir("models")).glob("purifier-*/final.pt")}
    other = lecture_models.fit_purifier({**PARAMS, "purifier_sigma": 0.2}, dataset=synth, device="cpu")
    assert len({p.parent for p in Path(lecture_models.cache.cache_dir("models")).glob("purifier-*/final.pt")}
               - folders) == 1
    assert not torch.equal(other.net[0].weight, purifier.net[0].weight)


# ---------------------------------------------------------------- the defenses

def test_build_defenses_wraps_the_right_model_in_the_right_wrapper(models, purifier):
    built = defenses_lec.build_defenses(models, params=PARAMS, purifier=purifier)
    assert list(built) == list(defenses_lec.DEFENSES)
    kinds = {n: type(m).__name__ for n, (m, _) in built.items()}
    assert kinds["resize_pad"] == "RandomResizePad" and kinds["noise"] == "NoiseLayers"
    assert isinstance(built["quantise"][0].purifier, Quantize) and built["denoiser"][0].purifier is purifier
    assert built["resize_pad"][0].out_size == 12 and built["noise"][0].sigma == 0.05
    assert built["quantise"][0].purifier.bits == 5
    for name in ("undefended", "resize_pad", "noise", "quantise", "denoiser"):
        assert built[name][1] is models["standard"].model
    for name, model in (("distillation", "student"), ("at", "at"), ("alp", "alp"), ("trades", "trades")):
        assert built[name][0] is built[name][1] is models[model].model


def test_build_defenses_fails_in_one_line_before_any_work(models):
    with pytest.raises(ValueError, match=r"^unknown defense\(s\) jpeg; valid: undefended, resize_pad, noise, "
                                         r"quantise, denoiser, distillation, at, alp, trades$"):
        defenses_lec.build_defenses(models, params=PARAMS, names=["jpeg"])
    with pytest.raises(ValueError, match=r"^models student are needed and missing; given: standard$"):
        defenses_lec.build_defenses({"standard": models["standard"]}, params=PARAMS, names=["undefended", "distillation"])
    with pytest.raises(ValueError, match=r"^the denoiser defense needs a fitted purifier \(purifier=\)$"):
        defenses_lec.build_defenses(models, params=PARAMS, names=["denoiser"])


# ---------------------------------------------------------------- the attacks

def test_every_attack_stays_in_the_budget_and_unknown_names_fail(models, purifier, batch):
    x, y, _ = batch
    built = defenses_lec.build_defenses(models, params=PARAMS, purifier=purifier)
    for attack, name in (("pgd", "undefended"), ("margin", "distillation"), ("eot", "noise"), ("bpda", "quantise"),
                         ("transfer", "denoiser")):
        x_adv = defenses_lec.attack_examples(attack, *built[name], x, y, eps=EPS, step_size=2 / 255, steps=2,
                                             eot_samples=2, seed=0)
        assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0
    with pytest.raises(ValueError, match=r"^unknown attack 'fgsm'; valid: pgd, margin, eot, bpda, transfer$"):
        defenses_lec.attack_examples("fgsm", *built["undefended"], x, y, eps=EPS, step_size=0.01, steps=1,
                                     eot_samples=1, seed=0)
    with pytest.raises(ValueError, match=r"^bpda needs a Purified model \(a pre-processor before a classifier\), "
                                         r"got NoiseLayers$"):
        defenses_lec.attack_examples("bpda", *built["noise"], x, y, eps=EPS, step_size=0.01, steps=1,
                                     eot_samples=1, seed=0)


def test_pgd_through_a_quantiser_stays_at_its_random_start_and_bpda_moves(models, batch):
    x, y, _ = batch
    defended, base = defenses_lec.build_defenses(models, params=PARAMS, names=["quantise"])["quantise"]
    kw = dict(eps=EPS, step_size=2 / 255, eot_samples=1, seed=3)
    start = defenses_lec.attack_examples("pgd", defended, base, x, y, steps=0, **kw)
    assert torch.equal(defenses_lec.attack_examples("pgd", defended, base, x, y, steps=4, **kw), start)
    assert not torch.equal(defenses_lec.attack_examples("bpda", defended, base, x, y, steps=4, **kw), start)


def test_the_transfer_attack_ignores_the_defense(models, purifier, batch):
    x, y, _ = batch
    built = defenses_lec.build_defenses(models, params=PARAMS, purifier=purifier)
    kw = dict(eps=EPS, step_size=2 / 255, steps=2, eot_samples=1, seed=0)
    on_base = defenses_lec.attack_examples("pgd", *built["undefended"], x, y, **kw)
    assert torch.equal(defenses_lec.attack_examples("transfer", *built["denoiser"], x, y, **kw), on_base)


# ---------------------------------------------------------------- flags and the table

FLAG_KW = dict(eps=EPS, step_size=2 / 255, steps=2, eot_samples=2, batch_size=16, seed=0)


def test_defense_flags_are_per_image_and_robust_only_where_clean(models, batch):
    x, y, _ = batch
    model, base = defenses_lec.build_defenses(models, params=PARAMS, names=["undefended"])["undefended"]
    flags, seconds = defenses_lec.defense_flags(model, base, x, y, plain="pgd", adaptive="margin", **FLAG_KW)
    assert list(flags) == list(defenses_lec.EVALUATIONS) == list(seconds)
    assert all(f.shape == (40,) and f.dtype == torch.bool for f in flags.values())
    with torch.no_grad():
        assert torch.equal(flags["clean"], model(x).argmax(1) == y)
    assert not (flags["plain"] & ~flags["clean"]).any() and not (flags["adaptive"] & ~flags["clean"]).any()
    with pytest.raises(ValueError, match=r"^unknown attack 'cw'; valid: pgd, margin, eot, bpda, transfer$"):
        defenses_lec.defense_flags(model, base, x, y, plain="pgd", adaptive="cw", **FLAG_KW)


def test_a_randomised_defense_gives_the_same_flags_whatever_ran_before(models, batch):
    """Each column reseeds the wrapper: the adaptive flags do not depend on the plain attack, and a
    second evaluation repeats the first."""
    x, y, _ = batch
    model, base = defenses_lec.build_defenses(models, params=PARAMS, names=["noise"])["noise"]
    first, _ = defenses_lec.defense_flags(model, base, x, y, plain="pgd", adaptive="eot", **FLAG_KW)
    other, _ = defenses_lec.defense_flags(model, base, x, y, plain="margin", adaptive="eot", **FLAG_KW)
    again, _ = defenses_lec.defense_flags(model, base, x, y, plain="pgd", adaptive="eot", **FLAG_KW)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert torch.equal(first["adaptive"], other["adaptive"]) and torch.equal(first["clean"], other["clean"])
    with torch.no_grad():
        model(x)                                        # advance the wrapper's stream: reseeding undoes it
    after, _ = defenses_lec.defense_flags(model, base, x, y, plain="pgd", adaptive="eot", **FLAG_KW)
    assert all(torch.equal(first[k], after[k]) for k in first)


def test_reseed_restarts_every_randomised_wrapper_inside_a_model(models, batch):
    x = batch[0]
    base = models["standard"].model
    nested = Purified(NoiseLayers(base, sigma=0.1, seed=5), Quantize(bits=5))
    with torch.no_grad():
        defenses_lec.reseed(nested, 7)
        first = nested(x)
        assert not torch.equal(nested(x), first)
        defenses_lec.reseed(nested, 7)
        assert torch.equal(nested(x), first)
        assert torch.equal(RandomResizePad(base, out_size=12, seed=7)(x), RandomResizePad(base, out_size=12, seed=7)(x))


@pytest.fixture(scope="module")
def evaluated(models, purifier, batch):
    x, y, index = batch
    built = defenses_lec.build_defenses(models, params=PARAMS, purifier=purifier)
    return defenses_lec.evaluate_defenses(built, x=x, y=y, index=index, params=PARAMS)


def test_evaluate_defenses_table_is_the_mean_of_its_per_image_flags(evaluated):
    table, samples = evaluated
    assert list(table["defense"]) == list(defenses_lec.DEFENSES)
    assert list(samples.columns) == ["seed", "index", "label", "defense", "evaluation", "attack", "robust"]
    assert len(samples) == 9 * 3 * 40 and samples["robust"].dtype == bool
    means = samples.groupby(["defense", "evaluation"])["robust"].mean() * 100
    for _, row in table.iterrows():
        for evaluation in defenses_lec.EVALUATIONS:
            assert row[evaluation] == pytest.approx(means[(row["defense"], evaluation)])
    row = table.set_index("defense")
    assert row.loc["noise", "adaptive attack"] == "EOT-PGD, 2 draws, 2 steps"
    assert row.loc["quantise", "adaptive attack"].startswith("BPDA") and row.loc["denoiser", "plain attack"].startswith(
        "PGD on the undefended classifier")
    assert row["randomised"].to_dict() == {n: n in ("resize_pad", "noise") for n in defenses_lec.DEFENSES}


def test_the_denoisers_adaptive_attack_is_a_parameter(models, purifier, batch):
    x, y, index = batch
    built = defenses_lec.build_defenses(models, params=PARAMS, purifier=purifier, names=["denoiser"])
    table, _ = defenses_lec.evaluate_defenses(built, x=x, y=y, index=index, params={**PARAMS, "denoiser_adaptive": "bpda"})
    assert table["adaptive attack"].iloc[0].startswith("BPDA")


def test_the_pages_claims_are_decided_on_its_per_image_table(evaluated):
    """Every LEC-F11 claim finds its rows in the samples table and gets a verdict, not 'not run'."""
    _, samples = evaluated
    claims = verdicts.load_claims("LEC-F11")
    assert len(claims) == 8
    ctx = engine.Context(profile="smoke", dataset="synthetic", seeds=(0,))
    for claim in claims:
        v = engine.decide(claim, {"samples": samples}, ctx)
        assert v.outcome in ("holds", "does not hold", "inconclusive"), (claim["id"], v.why)
        assert v.n == 40


def test_a_claim_can_fail_either_way_on_hand_made_flags():
    """within_model: adaptive below plain holds, above it does not hold; paired_best likewise."""
    n = 60
    def table(plain, adaptive, defense="noise"):
        return pd.concat([pd.DataFrame({"seed": 0, "index": range(n), "defense": defense, "evaluation": e, "robust": f})
                          for e, f in (("plain", plain), ("adaptive", adaptive))], ignore_index=True)
    ctx = engine.Context(profile="smoke", dataset="synthetic", seeds=(0,))
    claim = next(c for c in verdicts.load_claims("LEC-F11") if c["id"] == "LEC-F11.2")
    ones, zeros = [True] * n, [False] * n
    assert engine.decide(claim, {"samples": table(ones, zeros)}, ctx).outcome == "holds"
    assert engine.decide(claim, {"samples": table(zeros, ones)}, ctx).outcome == "does not hold"
    best = next(c for c in verdicts.load_claims("LEC-F11") if c["id"] == "LEC-F11.6")
    both = pd.concat([table(ones, ones, "at"), table(zeros, zeros, "undefended")], ignore_index=True)
    assert engine.decide(best, {"samples": both}, ctx).outcome == "holds"
    flipped = pd.concat([table(zeros, zeros, "at"), table(ones, ones, "undefended")], ignore_index=True)
    assert engine.decide(best, {"samples": flipped}, ctx).outcome == "does not hold"


def test_gradient_table_sees_shattered_and_stochastic_gradients(models, batch):
    x, y, _ = batch
    built = defenses_lec.build_defenses(models, params={**PARAMS, "quantise_bits": 3},
                                        names=["undefended", "quantise", "noise"])
    g = defenses_lec.gradient_table(built, x=x, y=y, seed=0, batch_size=16).set_index("defense")
    assert g.loc["quantise", "zero gradient (%)"] == 100.0
    assert g.loc["undefended", "zero gradient (%)"] < 100.0
    assert g.loc["undefended", "median cosine, two calls"] == pytest.approx(1.0)
    assert g.loc["noise", "median cosine, two calls"] < 0.999


def test_gradient_table_cosine_survives_gradients_that_underflow_float32(affine):
    """A saturated softmax leaves gradients of ~1e-41 (float32 denormals): still 1 for a deterministic
    model, where a float32 cosine would read 0."""
    model = affine(torch.eye(2), torch.tensor([95.0, 0.0]))      # margin 95: p_1 = e^-95 ~ 5e-42
    x, y = torch.full((4, 2), 0.5), torch.zeros(4, dtype=torch.long)
    g = defenses_lec.gradient_table({"saturated": (model, model)}, x=x, y=y, seed=0, batch_size=4).iloc[0]
    assert g["images"] == 4 and g["zero gradient (%)"] == 0.0
    assert g["median cosine, two calls"] == pytest.approx(1.0)
    xs = x.clone().requires_grad_(True)
    (raw,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xs), y, reduction="sum"), xs)
    assert 0 < raw.abs().max() < 1e-38 and torch.nn.functional.cosine_similarity(raw, raw, dim=1).max() == 0


# ---------------------------------------------------------------- figure, profiles, notebook

def test_the_figure_draws_three_bars_per_defense_and_has_alt_text(evaluated):
    table, _ = evaluated
    fig = plots_lec_defenses.plain_vs_adaptive(table, title="t", budget="L-inf 8/255")
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * len(table) and len(ax.get_yticklabels()) == len(table)
    assert fig.get_size_inches()[0] <= plots.COLUMN_INCHES
    assert min(t.get_fontsize() for t in ax.texts) >= plots.MIN_FONT
    assert "LEC-F11" in plots.FIGURES
    with pytest.raises(ValueError, match=r"^table lacks column\(s\) adaptive$"):
        plots_lec_defenses.plain_vs_adaptive(table.drop(columns=["adaptive"]))


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_profile_passes_the_schema(profile):
    p = experiment.resolve("lec_defenses", profile=profile)
    assert p["eval_eps"] == pytest.approx(8 / 255) and p["resize_out"] > 32
    assert p["n_eval"] % 10 == 0


def test_the_notebook_has_one_parameters_cell_ids_no_outputs_and_library_calls_only():
    nb = json.loads(NOTEBOOK.read_text())
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5)
    cells = nb["cells"]
    assert all(c.get("id") for c in cells) and len({c["id"] for c in cells}) == len(cells)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    lines = [ln.split("#")[0].strip() for ln in "".join(params[0]["source"]).splitlines()]
    assert [ln for ln in lines if ln] == ['profile = "cpu"', "params = {}"]
    source = "\n".join("".join(c["source"]) for c in code)
    assert "def " not in source and "lambda" not in source
    assert not any(ln.lstrip().startswith(("for ", "while ", "if ")) for ln in source.splitlines())
    assert sum(1 for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")) <= 40
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert text.count(":::{exercise}") >= 3 and text.count(":::{solution}") == text.count(":::{exercise}")
    assert 'report.write_artifact(run, "LEC-F11"' in source and 'verdicts.show(run, "LEC-F11")' in source
