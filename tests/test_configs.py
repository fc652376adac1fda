"""Each training objective owns its configuration: TrainConfig holds the schedule, the objective and
``hyper`` (the objective's own frozen dataclass); flat keywords reach it only through
TrainConfig.build, which refuses a setting the objective does not have; the cache key holds the
schedule and the objective's own fields; a burn-in maps to the base objective's configuration; and
training is bit-identical to the single TrainConfig these configurations replaced."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from advbook import data
from advbook.core import cache
from advbook.training import defenses, objectives, train
from advbook.training.registry import OBJECTIVES

SCHEDULE = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup", "augment")
AT = ("at_eps", "at_step_size", "at_steps")
OWNED = {  # objective -> (its config class, the keywords of its settings, in order)
    "standard": ("StandardConfig", ()),
    "pgd_at": ("PGDATConfig", ("at_norm",) + AT),
    "kd": ("KDConfig", ("kd_tau", "kd_lambda")),
    "trades": ("TRADESConfig", AT + ("trades_beta",)),
    "mart": ("MARTConfig", AT + ("mart_beta",)),
    "gairat": ("GAIRATConfig", AT + ("gair_lambda", "reweight_from")),
    "mail_at": ("MAILConfig", AT + ("mail_bias", "mail_slope", "reweight_from")),
    "vir_at": ("VIRConfig", AT + ("vir_alpha", "vir_gamma", "vir_beta", "vir_use", "reweight_from")),
    "vir_trades": ("VIRTRADESConfig", AT + ("vir_alpha", "vir_gamma", "vir_beta", "vir_use", "reweight_from",
                                            "trades_beta")),
    "alp": ("ALPConfig", AT + ("alp_lambda",)),
    "temperature_standard": ("TemperatureConfig", ("distill_t",)),
    "distillation": ("TemperatureConfig", ("distill_t",)),
    "fgsm_rs": ("FGSMRSConfig", ("at_eps", "fgsm_alpha")),
    "free_at": ("FreeATConfig", ("at_eps", "free_m")),
    "rrm": ("RRMConfig", ("rrm_lambda",)),
    "kd_rrm": ("KDRRMConfig", ("kd_tau",)),
    "bilateral": ("BilateralConfig", AT + ("bilateral_target", "bilateral_multi")),
    "feature_scatter": ("FeatureScatterConfig", AT + ("fs_smoothing",)),
    "cat_ce": ("CATConfig", ("at_step_size", "at_steps", "cat_eta", "cat_eps_max", "cat_c")),
    "cat_mix": ("CATMixConfig", ("at_step_size", "at_steps", "cat_eta", "cat_eps_max", "cat_c", "cat_kappa")),
    "sml": ("SMLConfig", AT + ("sml_margin", "sml_lambda", "sml_reg", "sml_noise", "pool_per_class")),
    "agkd": ("AGKDConfig", AT + ("agk_smoothing", "agk_mart", "mart_beta", "pool_per_class", "agk_attention")),
    "bml": ("BMLConfig", AT + ("agk_smoothing", "agk_mart", "mart_beta", "pool_per_class", "bml_margin",
                               "bml_lambda", "bml_reg", "bml_reverse")),
    "agkd_bml": ("AGKDBMLConfig", AT + ("agk_smoothing", "agk_mart", "mart_beta", "pool_per_class", "agk_attention",
                                        "bml_margin", "bml_lambda", "bml_reg", "bml_reverse")),
}
OTHER = dict(epochs=7, batch_size=32, lr=0.1, momentum=0.8, weight_decay=1e-3, warmup=0.3, augment=False,
             at_norm="l2", at_eps=0.5, at_step_size=0.1, at_steps=3, kd_tau=2.0, kd_lambda=0.5, trades_beta=1.0,
             mart_beta=1.0, gair_lambda=0.0, mail_bias=0.0, mail_slope=2.0, vir_alpha=1.0, vir_gamma=1.0,
             vir_beta=0.5, vir_use="sv", reweight_from=3, alp_lambda=1.0, distill_t=10.0,
             fgsm_alpha=1.0, free_m=4, rrm_lambda=0.1, bilateral_target="random", bilateral_multi=4.0,
             fs_smoothing=0.3, cat_eta=0.005, cat_eps_max=0.03, cat_c=5.0,
             cat_kappa=1.0, sml_margin=0.1, sml_lambda=1.0, sml_reg=0.0, sml_noise=0.0, pool_per_class=2,
             agk_smoothing=0.1, agk_mart=False, bml_margin=0.1, bml_lambda=1.0, bml_reg=0.0,
             bml_reverse=True, agk_attention="cam_average")  # a value other than the default for every keyword
KEYED_WHEN_SET = {"agk_attention"}  # settings added later: in the key only away from their default


def test_train_config_holds_the_schedule_the_objective_and_its_own_config():
    assert [f.name for f in dataclasses.fields(train.TrainConfig)] == list(SCHEDULE) + ["objective", "hyper"]
    assert train.SCHEDULE == SCHEDULE
    for name, objective in OBJECTIVES.items():
        assert objective.config.__name__ == OWNED[name][0], name
        assert dataclasses.is_dataclass(objective.config) and objective.config.__dataclass_params__.frozen
        assert objective.keywords == OWNED[name][1], name
        assert train.TrainConfig.keywords(name) == SCHEDULE + ("objective",) + OWNED[name][1]
        cfg = train.TrainConfig(objective=name)
        assert cfg.hyper == objective.config()  # the objective's defaults
        for obj, field in [(cfg, "epochs")] + [(cfg.hyper, f.name) for f in dataclasses.fields(cfg.hyper)]:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(obj, field, None)


def test_objectives_read_their_own_config():
    """The values a loss reads come from its config: cfg.hyper.eps, not a shared field."""
    cfg = train.TrainConfig.build(objective="vir_trades", at_eps=0.1, at_step_size=0.02, at_steps=4, trades_beta=5.0,
                                  vir_alpha=8.0, vir_gamma=3.0, vir_beta=1.6, vir_use="sd", reweight_from=2)
    h = cfg.hyper
    assert (h.norm, h.eps, h.step_size, h.steps) == ("linf", 0.1, 0.02, 4)
    assert (h.trades_beta, h.alpha, h.gamma, h.beta, h.use, h.reweight_from) == (5.0, 8.0, 3.0, 1.6, "sd", 2)
    kd = train.TrainConfig.build(objective="kd", kd_tau=3.0, kd_lambda=0.4).hyper
    assert (kd.tau, kd.lam) == (3.0, 0.4)
    pgd = train.TrainConfig.build(objective="pgd_at", at_norm="l2", at_eps=0.5).hyper
    assert (pgd.norm, pgd.eps) == ("l2", 0.5)
    assert train.TrainConfig(objective="pgd_at", hyper=objectives.PGDATConfig("l2", 0.5)) == \
        train.TrainConfig.build(objective="pgd_at", at_norm="l2", at_eps=0.5)


@pytest.mark.parametrize("objective,kwargs,message", [
    ("vir_at", dict(kd_tau=2.0), r"^objective 'vir_at' takes no 'kd_tau' \(a setting of kd, kd_rrm\); valid: epochs, "
                                 r"batch_size, lr, momentum, weight_decay, warmup, augment, objective, at_eps, "
                                 r"at_step_size, at_steps, vir_alpha, vir_gamma, vir_beta, vir_use, reweight_from$"),
    ("trades", dict(at_norm="l2"), r"^objective 'trades' takes no 'at_norm' \(a setting of pgd_at\); valid: .*, "
                                   r"at_eps, at_step_size, at_steps, trades_beta$"),
    ("pgd_at", dict(reweight_from=2), r"^objective 'pgd_at' takes no 'reweight_from' \(a setting of gairat, mail_at, "
                                      r"vir_at, vir_trades\); valid: .*, objective, at_norm, at_eps, at_step_size, "
                                      r"at_steps$"),
    ("mart", dict(trades_beta=5.0), r"^objective 'mart' takes no 'trades_beta' \(a setting of trades, vir_trades\); "
                                    r"valid: .*, mart_beta$"),
    ("standard", dict(vir_bta=0.1), r"^objective 'standard' takes no 'vir_bta'; valid: epochs, batch_size, lr, "
                                    r"momentum, weight_decay, warmup, augment, objective$"),
    ("no_such_method", {}, r"^unknown objective 'no_such_method'; valid: standard, pgd_at, kd, trades, mart, gairat, "
                           r"mail_at, vir_at, vir_trades(, \w+)*$"),
])
def test_a_foreign_or_unknown_keyword_fails_with_one_line_naming_the_valid_ones(objective, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        train.TrainConfig.build(objective=objective, epochs=3, **kwargs)
    assert "\n" not in str(info.value)


def test_a_wrong_hyper_or_value_fails():
    with pytest.raises(ValueError, match=r"^objective 'vir_at' takes a VIRConfig as hyper, got PGDATConfig$"):
        train.TrainConfig(objective="vir_at", hyper=objectives.PGDATConfig())
    with pytest.raises(ValueError, match="vir_use must be one of full, sv, sd, mean, norm, got 'both'"):
        train.TrainConfig.build(objective="vir_trades", vir_use="both")
    with pytest.raises(ValueError, match=r"at_norm must be one of linf, l2.*, got 'l3'"):
        train.TrainConfig.build(objective="pgd_at", at_norm="l3")
    with pytest.raises(TypeError):  # the fixed norm of the training attack of TRADES-style methods is no setting
        objectives.TRADESConfig(norm="l2")


def test_replace_changes_checked_keywords_and_carries_the_rest_where_it_applies():
    at = train.TrainConfig.build(objective="pgd_at", epochs=5, at_eps=0.1, at_steps=3)
    vir = at.replace(objective="vir_at", reweight_from=2)
    assert (vir.epochs, vir.hyper.eps, vir.hyper.steps, vir.hyper.reweight_from) == (5, 0.1, 3, 2)
    assert vir.replace(vir_beta=0.5).hyper.beta == 0.5 and vir.replace(vir_beta=0.5).hyper.eps == 0.1
    with pytest.raises(ValueError, match=r"^objective 'pgd_at' takes no 'vir_beta'"):
        at.replace(vir_beta=0.5)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_key_is_the_schedule_and_the_objectives_own_fields(synth, name):
    base = train.TrainConfig.build(objective=name, epochs=4)
    fields = base.key_fields()
    # fixed properties of the method (init=False): in the key, no settings
    fixed = set(objectives.hyper_keywords(OBJECTIVES[name].config())) - set(OBJECTIVES[name].keywords)
    assert set(fields) == (set(SCHEDULE) | {"objective"} | set(OWNED[name][1]) | fixed) - KEYED_WHEN_SET
    if "at_norm" in fixed:
        assert fields["at_norm"] == "linf"

    def key(cfg):
        return train.model_key(model_name="tiny_cnn", dataset=synth, train_index=None, cfg=cfg, seed=0)

    again = train.TrainConfig(epochs=4, objective=name, hyper=OBJECTIVES[name].config())
    assert again.key_fields() == fields and key(again) == key(base)  # equal settings, equal keys
    for keyword in SCHEDULE + OWNED[name][1]:
        changed = train.TrainConfig.build(objective=name, **{"epochs": 4, keyword: OTHER[keyword]})
        assert key(changed) != key(base), keyword  # an owned field changes the key
    for keyword in set(OTHER) - set(SCHEDULE) - set(OWNED[name][1]):  # a foreign one cannot be given at all
        with pytest.raises(ValueError, match=rf"^objective '{name}' takes no '{keyword}'"):
            train.TrainConfig.build(objective=name, **{keyword: OTHER[keyword]})


# key_fields hashed (cache.stable_hash) with the single TrainConfig, before the per-objective configs
# (commit 9ec035b): TrainConfig(objective=o) for every o, and defense_config(d, PARAMS) for every defense.
# Changed on purpose since: mail_at, when MAIL-AT's bias and slope became its README's (-0.5, 10).
DEFAULT_KEYS = {"standard": "48636d83ae9510c2", "pgd_at": "752ad45a0a38d3b7", "kd": "9d7de66e9c7432ee",
                "trades": "2838d0300a26f492", "mart": "ef70af410152c235", "gairat": "fd02083e39c47c75",
                "mail_at": "8ce8d619c8c31319", "vir_at": "c92a2d1d4e7d6155", "vir_trades": "7e2555d040edb8f2"}
PARAMS = dict(model="tiny_cnn", seed=0, train_per_class=25, epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4,
              at_eps=8 / 255, at_step_size=4 / 255, at_steps=2, reweight_from=2, trades_beta=5.0,
              vir_trades_beta=4.0)
DEFENSE_KEYS = {"standard": "0aeae35263684fb3", "at": "1ff0d0429a51205a", "trades": "f1fcd890707d294c",
                "mart": "2c4af954bbd6ebef", "gairat": "c7836da75dca0cbf", "mail_at": "5160d563d43836d9",
                "vir_at": "b23c9ecf71aea5ec", "vir_trades": "e576aadb9111b54e"}


def test_keys_are_those_of_the_single_config_so_cached_models_stay_valid():
    # objectives and defenses added since keep their own keys; these must never change
    assert {o: cache.stable_hash(train.TrainConfig(objective=o).key_fields()) for o in DEFAULT_KEYS} == DEFAULT_KEYS
    assert {d: cache.stable_hash(defenses.defense_config(d, PARAMS).key_fields())
            for d in DEFENSE_KEYS} == DEFENSE_KEYS


def test_burn_in_maps_to_the_base_objective_with_the_same_attack_and_schedule():
    flat = dict(epochs=6, batch_size=32, lr=0.1, weight_decay=1e-3, at_eps=0.1, at_step_size=0.03, at_steps=4)
    vir = train.TrainConfig.build(objective="vir_at", **flat, vir_beta=0.5, vir_use="sv", reweight_from=3)
    pgd = train.TrainConfig.build(objective="pgd_at", **flat)
    assert vir.burn_in() == pgd and pgd.hyper == objectives.PGDATConfig(norm="linf", eps=0.1, step_size=0.03, steps=4)
    for name, own in (("gairat", dict(gair_lambda=0.5)), ("mail_at", dict(mail_bias=0.0))):
        assert train.TrainConfig.build(objective=name, **flat, **own, reweight_from=3).burn_in() == pgd  # one prefix
    vt = train.TrainConfig.build(objective="vir_trades", **flat, trades_beta=5.0, vir_beta=1.6, reweight_from=3)
    assert vt.burn_in() == train.TrainConfig.build(objective="trades", **flat, trades_beta=5.0)  # not VIR's beta
    assert vt.burn_in().hyper.beta == 5.0
    assert vt.replace(trades_beta=4.0).burn_in() != vt.burn_in()
    for reweight_from in (0, 6, 7):  # no burn-in: reweighted from the start, or never
        assert vir.replace(reweight_from=reweight_from).burn_in() is None
    assert pgd.burn_in() is None and train.TrainConfig.build(objective="trades", **flat).burn_in() is None


def test_the_registry_check_refuses_a_base_setting_the_config_lacks():
    @dataclasses.dataclass(frozen=True)
    class NoBeta(objectives.AttackConfig):  # a TRADES reweighting without trades_beta: its burn-in would use 6.0
        reweight_from: int = objectives.kw_field("reweight_from", 0)

    registry = {**OBJECTIVES, "bad": objectives.Objective(lambda *a: None, config=NoBeta, base="trades")}
    with pytest.raises(ValueError, match=r"^objective 'bad': NoBeta lacks trades_beta, needed for the burn-in"):
        objectives.check_registry(registry)

    @dataclasses.dataclass(frozen=True)
    class NoSwitch(objectives.AttackConfig):
        pass

    registry = {**OBJECTIVES, "bad": objectives.Objective(lambda *a: None, config=NoSwitch, base="pgd_at")}
    with pytest.raises(ValueError, match=r"NoSwitch lacks reweight_from"):
        objectives.check_registry(registry)

    @dataclasses.dataclass
    class Mutable:
        tau: float = objectives.kw_field("kd_tau", 1.0)

    with pytest.raises(ValueError, match=r"^objective 'bad': its config must be a frozen dataclass"):
        objectives.check_registry({"bad": objectives.Objective(lambda *a: None, config=Mutable)})
    objectives.check_registry(OBJECTIVES)


# Weights, per-epoch records and cache keys of tiny runs, recorded with the single TrainConfig before
# the per-objective configs (commit 9ec035b, torch 2.14.1 on CPU): training must stay bit-identical.
# Every setting differs from its default, and changing any of them changes these weights (checked
# when recorded), except at_norm for the methods whose training attack is L-inf only.
RECORDED_TORCH = "2.14.1"
COMMON = dict(epochs=2, batch_size=50, lr=0.05)
_AT = dict(at_eps=8 / 255, at_step_size=4 / 255, at_steps=2)
RUNS = {  # name -> (flat settings, weights digest, records digest, model key)
    "standard": (dict(objective="standard"), "981a8611e915019d", None, "cca3ff0d6a7303aa"),
    "pgd_at": (dict(objective="pgd_at", **_AT), "2c4fcef7783ad0c8", None, "e268a8cbf12c06aa"),
    "pgd_at_l2": (dict(objective="pgd_at", at_norm="l2", at_eps=0.5, at_step_size=0.25, at_steps=2),
                  "270e532668084973", None, "72aa466521223818"),
    "kd": (dict(objective="kd", kd_tau=2.0, kd_lambda=0.3), "fa83edb5eac839dc", None, "9f7eb1ca10ced067"),
    "trades": (dict(objective="trades", trades_beta=5.0, **_AT), "9bd2b729f37e4221", None, "8ef1df4c536ff864"),
    "mart": (dict(objective="mart", mart_beta=4.0, **_AT), "d5faaa82b7cb33bb", None, "139a71d523e6feb1"),
    "gairat": (dict(objective="gairat", gair_lambda=-0.5, reweight_from=1, at_eps=8 / 255, at_step_size=3 / 255,
                    at_steps=4), "72cc0e46ce61fb0e", "99f0693dc7c5a217", "78960271c80c4064"),
    "mail_at": (dict(objective="mail_at", mail_bias=-1.0, mail_slope=2.0, reweight_from=1, **_AT),
                "64e535bb23a2f164", "a1f5bed53da8b69f", "85c77caf14131d4e"),
    "vir_at": (dict(objective="vir_at", vir_alpha=6.0, vir_gamma=9.0, vir_beta=0.01, reweight_from=1, **_AT),
               "a9959225452c6942", "aad3559858e9f300", "9f845b530ce85223"),
    "vir_at_sv": (dict(objective="vir_at", vir_use="sv", vir_alpha=6.0, vir_gamma=9.0, **_AT),
                  "15e124e6be546a89", "c1c06a3ac2abd466", "0c2aec66eb58594f"),
    "vir_trades": (dict(objective="vir_trades", trades_beta=5.0, vir_alpha=8.0, vir_gamma=3.0, vir_beta=1.6,
                        reweight_from=1, **_AT), "36b48632b8feb1c3", "4a1875f6f150d0c9", "992fc11c1ac3243d"),
}


def _digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def test_training_is_bit_identical_to_the_single_config(fresh_cache):
    if not torch.__version__.startswith(RECORDED_TORCH):
        pytest.skip(f"digests recorded with torch {RECORDED_TORCH}, this is {torch.__version__}")
    ten = data.synthetic(n_train=400, n_test=200, num_classes=10, size=8, seed=0)  # GAIRAT's kappa varies
    index = torch.arange(0, 400, 4)
    teacher, got, want = None, {}, {}
    for name, (flat, weights, records, key) in RUNS.items():
        cfg = train.TrainConfig.build(**{**COMMON, **flat})
        m = train.train_model(model_name="tiny_cnn", dataset=ten, cfg=cfg, seed=0, train_index=index,
                              teacher=teacher if cfg.objective == "kd" else None)
        teacher = teacher or m
        rec = m.records()
        got[name] = (_digest(m.model.state_dict()),
                     _digest({f"{e}/{k}": v for e, r in rec.items() for k, v in r.items()}) if rec else None, m.key)
        want[name] = (weights, records, key)
    assert got == want
