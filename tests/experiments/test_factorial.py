"""Factorial designs and the effect estimator on synthetic response surfaces."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dscmr.config import Config
from dscmr.errors import ConfigError, UsageError
from dscmr.experiments.factorial import (
    best_cell,
    defining_words,
    estimate_effects,
    full_design,
    half_design,
    interaction_conclusion,
    make_design,
    parse_factor,
    resolution,
)


def test_full_design_is_balanced_and_orthogonal():
    d = full_design(3)
    assert d.shape == (8, 3) and len({tuple(r) for r in d}) == 8
    assert np.all(d.sum(axis=0) == 0)
    assert np.array_equal(d.T.astype(int) @ d.astype(int), 8 * np.eye(3))
    assert resolution(d) is None


@pytest.mark.parametrize("k", [4, 5, 6])
def test_half_fraction_resolution(k):
    d = half_design(k)
    assert d.shape == (2 ** (k - 1), k)
    assert resolution(d) == k  # I = AB...K is the only defining word
    assert defining_words(d) == [tuple(range(k))]
    design, used = make_design(k, "half")
    assert used == "half" and resolution(design) >= 4


def test_make_design_choices():
    assert make_design(3, "auto")[1] == "full"
    assert make_design(5, "auto")[1] == "half"
    with pytest.raises(UsageError, match="resolution 3"):
        make_design(3, "half")
    with pytest.raises(UsageError):
        make_design(3, "quarter")


def _surface(design, names, effects, *, seeds, noise, rng):
    """Response = 60 + sum(effect/2 * coded term) + shared seed luck + noise; effects are high-minus-low."""
    cells = design.shape[0]
    idx = {n: i for i, n in enumerate(names)}
    mean = np.full(cells, 60.0)
    for term, eff in effects.items():
        col = np.ones(cells)
        for part in term.split(":"):
            col = col * design[:, idx[part]]
        mean += eff / 2 * col
    luck = rng.normal(0.0, 2.0, size=seeds)
    return mean[:, None] + luck[None, :] + rng.normal(0.0, noise, size=(cells, seeds))


def test_full_factorial_recovers_effects_and_interaction():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    truth = {"a": 2.0, "b": -1.0, "c": 0.0, "a:b": 1.5}
    design = full_design(3)
    y = _surface(design, names, truth, seeds=3, noise=0.2, rng=rng)
    est = estimate_effects(design, y, names)
    assert est["df_resid"] == 24 - 7 - 2
    for name in names:
        e = est["main_effects"][name]
        assert e["estimate"] == pytest.approx(truth[name], abs=0.4)
        assert abs(e["estimate"] - truth[name]) <= 4 * e["se"]
    for a, b in itertools.combinations(names, 2):
        e = est["interactions"][f"{a}:{b}"]
        t = truth.get(f"{a}:{b}", 0.0)
        assert abs(e["estimate"] - t) <= 4 * e["se"]
        assert e["ci95"][0] == pytest.approx(e["estimate"] - e["se"] * 2.131, rel=1e-3)  # t(0.975, df=15)
    conclusion = interaction_conclusion(est)
    assert conclusion.startswith("interaction detected: a:b")

    y0 = _surface(design, names, {"a": 2.0, "b": -1.0}, seeds=3, noise=0.2, rng=np.random.default_rng(10))
    assert "tuned one at a time" in interaction_conclusion(estimate_effects(design, y0, names))


def test_seed_blocks_remove_shared_luck():
    rng = np.random.default_rng(1)
    design = full_design(2)
    y = _surface(design, ["a", "b"], {"a": 1.0}, seeds=4, noise=0.1, rng=rng)
    blocked = estimate_effects(design, y, ["a", "b"])
    plain = estimate_effects(design, y, ["a", "b"], block_seeds=False)
    assert blocked["main_effects"]["a"]["estimate"] == pytest.approx(plain["main_effects"]["a"]["estimate"])
    assert blocked["sigma"] < plain["sigma"]  # the seed-to-seed luck (sd 2) is removed from the residual


def test_resolution_v_half_fraction_recovers_two_factor_interactions():
    rng = np.random.default_rng(2)
    names = list("abcde")
    truth = {"a": 1.0, "b": 2.0, "c": -1.5, "d": 0.0, "e": 0.5, "b:d": -1.0, "a:e": 0.8}
    design, _ = make_design(5, "half")
    y = _surface(design, names, truth, seeds=2, noise=0.1, rng=rng)
    est = estimate_effects(design, y, names)
    for name in names:
        assert est["main_effects"][name]["estimate"] == pytest.approx(truth[name], abs=0.2)
    for a, b in itertools.combinations(names, 2):
        e = est["interactions"][f"{a}:{b}"]
        assert e["estimate"] == pytest.approx(truth.get(f"{a}:{b}", 0.0), abs=0.2)
        assert e["aliased_with"] == []


def test_resolution_iv_half_fraction_reports_aliases():
    rng = np.random.default_rng(3)
    names = list("abcd")
    design, _ = make_design(4, "half")
    y = _surface(design, names, {"a": 1.0, "b": -2.0, "c": 0.5, "d": 1.5}, seeds=2, noise=0.1, rng=rng)
    est = estimate_effects(design, y, names)
    for name, eff in {"a": 1.0, "b": -2.0, "c": 0.5, "d": 1.5}.items():
        assert est["main_effects"][name]["estimate"] == pytest.approx(eff, abs=0.2)  # clear of 2FIs at res IV
    assert est["interactions"]["a:b"]["aliased_with"] == ["c:d"]
    assert set(est["interactions"]) == {"a:b", "a:c", "a:d"}


def test_best_cell_certainty():
    rng = np.random.default_rng(4)
    y = rng.normal(60, 0.2, size=(4, 5))
    y[2] += 3.0
    best = best_cell(y, n_resamples=999)
    assert best["index"] == 2 and best["prob_best"] == pytest.approx(1.0)
    assert best["vs_runner_up"]["diff_mean"] > 2 and best["vs_runner_up"]["p_ttest"] < 0.01
    tie = best_cell(rng.normal(60, 1.0, size=(4, 5)), n_resamples=999)
    assert tie["prob_best"] < 0.95


def test_parse_factor():
    base = Config()
    f = parse_factor("model.dropout=0,0.2", base)
    assert f.key == "model.dropout" and f.levels == ("0", "0.2") and f.override(1) == "model.dropout=0.2"
    g = parse_factor("model.img_hidden=[1024,512],[2048]", base)
    assert g.levels == ("[1024,512]", "[2048]")
    for bad in ("model.dropout", "model.dropout=0", "model.dropout=0,0.1,0.2", "model.dropout=0,0", "dropout=0,1"):
        with pytest.raises(UsageError):
            parse_factor(bad, base)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_factor("model.nope=1,2", base)
    with pytest.raises(ConfigError):
        parse_factor("model.dropout=0,1.5", base)  # invalid value for the config
