"""Gao et al.'s over-optimisation fits: they recover known coefficients, refuse points they cannot fit, and
run on a real best-of-n draw and a real PPO run's log."""

import math

import numpy as np
import pandas as pd
import pytest

from rlhflab import load_policy
from rlhflab.lab.overoptimization import fit_gao, gold_peak, overoptimization, rl_points
from rlhflab.trainers.best_of_n import best_of_n_curve, kl_of_best_of_n, sample_best_of_n
from rlhflab.trainers.reward_functions import length_reward

TRUTH = {"best-of-n": (0.8, 0.12), "rl": (0.5, 0.2)}


def gao(form, kl, alpha, beta):
    d = np.sqrt(kl)
    return d * (alpha - beta * (d if form == "best-of-n" else np.log(np.where(d > 0, d, 1.0))))


@pytest.mark.parametrize("form", list(TRUTH))
def test_the_fit_recovers_known_coefficients_with_and_without_noise(form):
    alpha, beta = TRUTH[form]
    kl = np.array([kl_of_best_of_n(2 ** k) for k in range(7)] if form == "best-of-n" else np.linspace(0, 30, 40))
    exact = fit_gao(kl, gao(form, kl, alpha, beta), form)
    assert (exact.alpha, exact.beta, exact.rmse) == pytest.approx((alpha, beta, 0.0), abs=1e-9)
    peak_d = alpha / (2 * beta) if form == "best-of-n" else math.exp(alpha / beta - 1)
    assert exact.peak_kl == pytest.approx(peak_d ** 2)
    assert exact.gain([4.0]) == pytest.approx(gao(form, np.array([4.0]), alpha, beta))
    assert fit_gao(kl, np.sqrt(kl), form).peak_kl == math.inf  # a straight line never turns down

    many = np.repeat(kl, 50)  # 50 noisy measurements at each KL, as over seeds or prompts
    noisy = fit_gao(many, gao(form, many, alpha, beta) + np.random.default_rng(0).normal(0, 0.1, len(many)), form)
    assert noisy.alpha == pytest.approx(alpha, abs=0.05) and noisy.beta == pytest.approx(beta, abs=0.03)
    assert noisy.rmse == pytest.approx(0.1, abs=0.01)


def test_each_seed_gains_from_its_own_start():
    points = pd.DataFrame({"kl/to_sft": [0.0, 1.0, 4.0] * 2, "seed": [0, 0, 0, 1, 1, 1],
                           "gold/mean": [1.0, 1.5, 1.8, 2.0, 2.5, 2.8], "reward/mean": [0.0, 1.0, 2.0, 0.1, 1.1, 2.1]})
    study = overoptimization(rl=points)
    assert study.curves["rl"]["gold/gain"].tolist() == pytest.approx([0.0, 0.5, 0.8] * 2)
    assert study.fits["rl", "proxy"].alpha == pytest.approx(1.0)


@pytest.mark.parametrize("kl, gain, form, message", [
    ([1.0], [0.5], "rl", "at least 2 points"),
    ([0.0, 1.0, -0.2], [0.0, 0.5, 0.1], "rl", "negative KL: \\[-0.2\\]"),
    ([0.0, 1.0, float("nan")], [0.0, 0.5, 0.1], "best-of-n", "KL holds NaN .* positions \\[2\\]"),
    ([0.0, 1.0, 2.0], [0.0, float("nan"), 0.1], "best-of-n", "gain holds NaN .* positions \\[1\\]"),
    ([0.0, 1.0, 1.0], [0.0, 0.5, 0.6], "best-of-n", "at least 2 different KL values above 0"),
    ([0.0, 1.0], [0.0, 0.5, 0.6], "rl", "got 2 KL values and 3 gains"),
    ([0.0, 1.0], [0.0, 0.5], "ppo", "form must be one of best-of-n, rl"),
])
def test_points_that_cannot_be_fitted_are_refused_by_name(kl, gain, form, message):
    with pytest.raises(ValueError, match=message):
        fit_gao(kl, gain, form)


def test_a_run_without_gold_scores_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no objective/gold_scores: .* gold=gold"):
        rl_points([{"objective/kl_k3": 0.0, "objective/scores": 0.1}])
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        rl_points(tmp_path)


def test_best_of_n_against_a_length_proxy(world, gold):
    """A real draw whose proxy (closeness to 12 words) is not gold: both gains are fitted and drawn."""
    prompts = [q.text for q in world.questions("heldout", 16, seed=3)]
    policy = load_policy("tiny")
    draw = sample_best_of_n(policy, length_reward(target=12), prompts, 8, max_new_tokens=24, seed=1)
    curve = best_of_n_curve(draw, gold, policy.generate(prompts, max_new_tokens=24, seed=99))
    study = overoptimization(best_of_n=curve)
    assert study.fits["best-of-n", "proxy"].alpha > 0  # picking by the proxy raises the proxy
    table = study.table()
    assert table[["curve", "reward"]].values.tolist() == [["best-of-n", "gold"], ["best-of-n", "proxy"]]
    assert table["points"].tolist() == [4, 4]  # n = 1, 2, 4, 8
    legend = [trace.name for trace in study.figure().data]
    assert f"best-of-n proxy fit: alpha {study.fits['best-of-n', 'proxy'].alpha:.3g}, " in " ".join(legend)


def test_rl_curve_of_the_quickstart_ppo_run(quickstart):
    """The loop's PPO log over both rounds: read from its directory, it starts at SFT and fits."""
    points = rl_points(quickstart[0] / "runs" / "ppo")
    assert points["step"].tolist() == list(range(1, len(points) + 1)) and len(points) >= 4
    assert points["kl/to_sft"].iloc[0] == pytest.approx(0.0, abs=1e-3)  # the first rollout is SFT's
    assert (points["kl/to_sft"] >= 0).all()
    study = overoptimization(rl=points)
    assert {fit.points for fit in study.fits.values()} == {len(points)}
    assert gold_peak(points)["step"] in set(points["step"])
