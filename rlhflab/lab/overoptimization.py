"""Reward over-optimisation: gold and proxy reward as the policy moves away from SFT, and Gao et al.'s fits.

A policy optimised against a learned reward model (the proxy) first gains on the truth (gold), then
loses it again while the proxy keeps rising. Gao, Schulman and Hilton 2022 ("Scaling Laws for Reward
Model Overoptimization") found that the gold gain over the initial policy follows, with
d = sqrt(KL(policy || initial policy)) in sqrt-nats,

    best-of-n   R(d) = d (alpha - beta d)
    RL          R(d) = d (alpha - beta log d)

alpha is how fast gold rises as the policy leaves SFT (best-of-n: the slope at d = 0; RL: the gain at
d = 1, one nat), and beta how fast the gain bends back down; the predicted gain peaks at
d = alpha / (2 beta) for best-of-n and at d = exp(alpha / beta - 1) for RL. Both forms are linear in
(alpha, beta), so ordinary least squares fits them exactly, with no optimiser.

The points come from what the lab already measures, on the tiny world where gold is known:
- best-of-n: `rlhflab.trainers.best_of_n.best_of_n_curve` (or `compare_methods`' best-of rows), KL in closed form;
- RL: the per-step log of a PPO run (`metrics.jsonl` or `PPOResult.history`): `objective/scores`
  (proxy), `objective/gold_scores` (gold) and `objective/kl_k3`. The k3 estimate is used because it
  is never negative on any batch, where a batch's k1 estimate (`objective/kl`) can dip below 0 near SFT.
Gains are measured from each curve's point of least KL (best-of-1; PPO's first rollout, which is
SFT's), per seed when the points carry a `seed` column. Notebooks 04 and 05 and
benchmarks/rlhf_methods.py draw their over-optimisation curves with this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..trainers.live import COLORS
from .stages import RLHFConfig

__all__ = ["GaoFit", "fit_gao", "best_of_n_points", "rl_points", "gold_peak", "Overoptimization",
           "overoptimization", "chasing_config"]

FORMS = {"best-of-n": "d (alpha - beta d)", "rl": "d (alpha - beta log d)"}  # Gao et al. 2022
REWARDS = {"gold": ("gold/mean", "gold/gain"), "proxy": ("reward/mean", "reward/gain")}  # score, its gain over SFT
COLOR = {"proxy": COLORS[0], "gold": COLORS[1]}  # as on the PPO dashboard
TITLES = {"best-of-n": "best-of-n (n = 1, 2, 4, ...)", "rl": "RL (the steps of a PPO run)"}
RL_METRICS = {"objective/kl_k3": "kl/to_sft", "objective/scores": "reward/mean", "objective/gold_scores": "gold/mean"}


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GaoFit:
    """One of Gao et al.'s forms fitted by least squares to (KL, gain over SFT) points."""

    form: str  # 'best-of-n': R(d) = d (alpha - beta d); 'rl': R(d) = d (alpha - beta log d)
    alpha: float  # rise: best-of-n's slope at SFT (gain per sqrt-nat), RL's gain at 1 nat
    beta: float  # bend: how fast the gain turns back down; <= 0 means no turn within reach
    points: int  # points fitted
    rmse: float  # root-mean-square residual, in the reward's units

    def gain(self, kl) -> np.ndarray:
        """The fitted gain over SFT at `kl` nats."""
        return _design(np.sqrt(np.asarray(kl, dtype=float)), self.form) @ np.array([self.alpha, self.beta])

    @property
    def peak_kl(self) -> float:
        """KL (nats) at which the fitted gain peaks; inf when beta <= 0 (it never turns down)."""
        if self.beta <= 0:
            return math.inf
        if self.form == "best-of-n":
            return max(self.alpha / (2 * self.beta), 0.0) ** 2
        exponent = 2 * (self.alpha / self.beta - 1)  # log of d*^2; a beta near 0 puts it past any float
        return math.exp(exponent) if exponent < 700 else math.inf

    @property
    def formula(self) -> str:
        """The fitted curve, e.g. 'd (0.62 - 0.09 d)'."""
        return FORMS[self.form].replace("alpha", f"{self.alpha:.3g}").replace("beta", f"{self.beta:.3g}")


def _design(d: np.ndarray, form: str) -> np.ndarray:
    """Columns of R(d) = alpha * c1 - beta * c2 (n, 2); d log d is 0 at d = 0, its limit."""
    bend = d * d if form == "best-of-n" else d * np.log(np.where(d > 0, d, 1.0))
    return np.stack([d, -bend], axis=1)


def fit_gao(kl, gain, form: str) -> GaoFit:
    """Least-squares fit of Gao et al.'s `form` ('best-of-n' or 'rl') to gains over SFT at KL `kl` (nats).

    Examples:
        >>> kl = [0.0, 0.19, 0.85, 1.84, 2.87]  # best-of-1, 2, 4, 8 and 16
        >>> fit = fit_gao(kl, [0.8 * d - 0.1 * d * d for d in map(math.sqrt, kl)], "best-of-n")
        >>> round(fit.alpha, 3), round(fit.beta, 3)
        (0.8, 0.1)
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    kl, gain = np.asarray(kl, dtype=float).ravel(), np.asarray(gain, dtype=float).ravel()
    if len(kl) != len(gain):
        raise ValueError(f"the fit needs one gain per KL: got {len(kl)} KL values and {len(gain)} gains")
    if len(kl) < 2:
        raise ValueError(f"the fit has two coefficients, so it needs at least 2 points; got {len(kl)} "
                         "(measure more n, or more steps of the run)")
    for name, values in (("KL", kl), ("gain", gain)):
        if not np.isfinite(values).all():
            raise ValueError(f"{name} holds NaN or infinite values at positions "
                             f"{np.flatnonzero(~np.isfinite(values)).tolist()}; drop those points first")
    if (kl < 0).any():
        raise ValueError(f"KL is never negative, but these points have negative KL: {kl[kl < 0].tolist()}; "
                         "a k1 estimate on a few samples can be, so use a non-negative estimate (k3) or more samples")
    design = _design(np.sqrt(kl), form)
    coefficients, _, rank, _ = np.linalg.lstsq(design, gain, rcond=None)
    if rank < 2:
        raise ValueError(f"the points fix only one of alpha and beta: they need at least 2 different KL values "
                         f"above 0, not {sorted(set(kl.tolist()))}")
    residual = gain - design @ coefficients
    return GaoFit(form, float(coefficients[0]), float(coefficients[1]), len(kl),
                  float(np.sqrt(np.mean(residual ** 2))))


# ---------------------------------------------------------------------------------------------
# The points: best-of-n and RL curves, in METRICS' names
# ---------------------------------------------------------------------------------------------

def best_of_n_points(table: pd.DataFrame) -> pd.DataFrame:
    """The best-of-n rows of a `compare_methods` table ('best-of-<n>'), with their n, sorted by n."""
    rows = table[table["method"].str.startswith("best-of-")].copy()
    if rows.empty:
        raise ValueError("the table has no best-of-n rows: run compare_methods with best_of=(1, 2, 4, ...)")
    rows.insert(0, "n", rows["method"].str.removeprefix("best-of-").astype(int))
    return rows.sort_values(["n"]).reset_index(drop=True)


def rl_points(run) -> pd.DataFrame:
    """Step, KL to SFT, proxy and gold means of every step of a PPO run.

    Args:
        run: the run's directory (or its `metrics.jsonl`), or `PPOResult.history`. The run must have
            been given the gold annotator (`ppo_trainer` does that; `PPOTrainer(..., gold=gold)`).
    """
    if isinstance(run, (str, Path)):
        path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
        if not path.exists():
            raise FileNotFoundError(f"no metrics.jsonl at {path}: pass a PPO run's directory (its LivePlot's run_dir)")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        records = [{"step": step, **metrics} for step, metrics in enumerate(run, 1)]
    missing = sorted({name for name in RL_METRICS if any(name not in r for r in records)})
    if not records or missing:
        raise ValueError(f"the run logged no {', '.join(missing) or 'steps'}: an RL curve needs PPO's "
                         f"{', '.join(RL_METRICS)} at every step, and PPO logs gold scores only when given the gold "
                         "annotator (PPOTrainer(..., gold=gold))")
    points = pd.DataFrame(records)[["step", *RL_METRICS]].rename(columns=RL_METRICS)
    return points.sort_values("step").reset_index(drop=True)


def gold_peak(points: pd.DataFrame, window: int = 5) -> pd.Series:
    """The row of an RL curve where gold peaked, on a rolling mean of `window` steps (one step's gold
    is the mean of one batch, too noisy to pick a peak from)."""
    smoothed = points["gold/mean"].rolling(window, min_periods=1).mean()
    return points.loc[smoothed.idxmax()]


def with_gains(points: pd.DataFrame) -> pd.DataFrame:
    """`points` with 'gold/gain' and 'reward/gain': each score minus its value at the least KL (per seed)."""
    groups = points.groupby("seed") if "seed" in points else [(None, points)]
    parts = []
    for _, part in groups:
        start = part.loc[part["kl/to_sft"].idxmin()]
        parts.append(part.assign(**{gain: part[score] - start[score] for score, gain in REWARDS.values()}))
    return pd.concat(parts)


# ---------------------------------------------------------------------------------------------
# Both curves, fitted and drawn
# ---------------------------------------------------------------------------------------------

@dataclass
class Overoptimization:
    """The curves (form -> points with gains) and their fits ((form, 'gold' or 'proxy') -> GaoFit)."""

    curves: dict[str, pd.DataFrame]
    fits: dict[tuple[str, str], GaoFit]

    def table(self) -> pd.DataFrame:
        """One row per fit: the curve, the reward, alpha, beta, the KL of the fitted peak, points, rmse."""
        return pd.DataFrame([{"curve": form, "reward": reward, "alpha": fit.alpha, "beta": fit.beta,
                              "peak KL (nats)": fit.peak_kl, "fit": fit.formula, "points": fit.points,
                              "rmse": fit.rmse} for (form, reward), fit in self.fits.items()])

    def figure(self, title: str = "Reward over-optimisation: gain over SFT as KL grows (Gao et al. 2022 fits)"):
        """The points and the fitted curves against d = sqrt(KL), one panel per curve; coefficients in the legend."""
        from plotly.subplots import make_subplots

        forms = list(self.curves)
        figure = make_subplots(rows=1, cols=len(forms),
                               subplot_titles=[f"{TITLES[form]}: R(d) = {FORMS[form]}" for form in forms])
        for column, form in enumerate(forms, 1):
            points = self.curves[form]
            d = np.sqrt(points["kl/to_sft"])
            line = np.linspace(0, d.max() * 1.05, 100)
            for reward, (_, gain) in REWARDS.items():
                color = COLOR[reward]
                figure.add_scatter(x=d, y=points[gain], mode="markers", name=f"{form} {reward}", row=1, col=column,
                                   marker={"color": color, "size": 6, "opacity": 0.6}, legendgroup=f"{form} {reward}")
                fit = self.fits[form, reward]
                figure.add_scatter(x=line, y=fit.gain(line ** 2), mode="lines", row=1, col=column,
                                   name=f"{form} {reward} fit: alpha {fit.alpha:.3g}, beta {fit.beta:.3g}",
                                   line={"color": color}, legendgroup=f"{form} {reward}")
            figure.update_xaxes(title_text="d = sqrt(KL to SFT) (sqrt nats)", row=1, col=column)
        figure.update_yaxes(title_text="gain over SFT (gold: its points; proxy: SFT's std)", row=1, col=1)
        return figure.update_layout(title=title, height=460, legend={"orientation": "h", "y": -0.25})


def overoptimization(best_of_n: pd.DataFrame | None = None, rl: pd.DataFrame | None = None) -> Overoptimization:
    """Fit Gao et al.'s forms to gold and proxy gains along a best-of-n curve and an RL run.

    Args:
        best_of_n: `best_of_n_curve`'s table or `best_of_n_points(compare_methods(...))`: n,
            'kl/to_sft', 'gold/mean', 'reward/mean'; n = 1 (KL 0) is the SFT point gains start from.
        rl: `rl_points(run)`; its first step (SFT's rollout) is the point gains start from.
        Either may carry a 'seed' column: each seed's gains start from its own least-KL point, and
        the fit runs over every seed's points.

    Examples:
        >>> curve = best_of_n_curve(draw, gold, baseline)  # doctest: +SKIP
        >>> study = overoptimization(best_of_n=curve, rl=rl_points("runs/04_ppo/overoptimized/ppo"))  # doctest: +SKIP
        >>> study.table()  # alpha, beta and the fitted peak of each curve  # doctest: +SKIP
        >>> study.figure()  # doctest: +SKIP
    """
    curves = {form: with_gains(points) for form, points in (("best-of-n", best_of_n), ("rl", rl)) if points is not None}
    if not curves:
        raise ValueError("pass best_of_n=, rl= or both: points to fit")
    fits = {(form, reward): fit_gao(points["kl/to_sft"], points[gain], form)
            for form, points in curves.items() for reward, (_, gain) in REWARDS.items()}
    return Overoptimization(curves, fits)


def chasing_config(config: RLHFConfig, steps: int, out_dir: str) -> RLHFConfig:
    """`config` for a PPO run of `steps` that chases the reward model far from SFT: a weak, fixed-target KL
    penalty and a high learning rate (notebook 04's second run, the benchmark's RL curve)."""
    return replace(config, out_dir=out_dir, ppo_steps=steps, kl_coef=0.001, target_kl=100.0, ppo_learning_rate=1e-3)
