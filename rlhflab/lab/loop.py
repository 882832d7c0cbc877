"""The iterated RLHF loop: label, train a reward model, update the policy, label its new answers.

InstructGPT's steps 2 and 3 "can be iterated continuously" (Ouyang et al. 2022, sec. 3.1), and
Llama 2 ran five such rounds (Touvron et al. 2023, sec. 3.2.2). One round here is:

    1. pool     two samples per prompt: the current policy against the previous one
                (round 1: two samples of SFT)
    2. choose   active learning picks `labels_per_round` pairs of the pool (`rlhflab.labeling.active`)
    3. label    people label the store's queue in the widgets; the task's judge labels what is left
    4. reward   a fresh LoRA reward model on every label so far, normalised on SFT samples
    5. policy   PPO from the current policy against that reward, KL to SFT (a fresh value head and KL
                controller each round); or DPO, KTO or ILQL on all labels (iterated: each round's
                reference is the policy it starts from)
    6. evaluate held-out prompts: the judge's win-rate against SFT (95% interval), KL to SFT, proxy means,
                and gold means where the task knows the truth

The loop runs on a task (`rlhflab.lab.task`): a user's own prompts and judge, or the tiny world judged by
its gold annotator. Every stage is a function of `rlhflab.lab.stages`; this module only sequences them and
keeps the store, the rounds' table and their plots. Pairs of round r's policy against round r-1's are labelled
in the next round, so the store's Elo / Bradley-Terry leaderboard (`rlhflab.labeling.metrics.leaderboard`)
ranks the rounds' policies. Everything a round writes lives under `out_dir/round_<r>/`; the labels
live in `out_dir/labels.db`. `compare_methods` and `active_vs_random` measure methods and label
strategies on the same stages (notebook 05 and benchmarks/rlhf_methods.py).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from ..labeling.active import ActiveConfig, choose_items
from ..labeling.exports import trl_rows
from ..labeling.metrics import people_win_rates
from ..labeling.records import Item
from ..labeling.store import LabelStore
from ..trainers.best_of_n import best_of_n_curve, sample_best_of_n
from ..trainers.live import LivePlot
from ..trainers.models import Policy
from ..trainers.reward import evaluate_reward_model, load_reward_model
from .stages import (METHODS, Baseline, RLHFConfig, evaluate, heldout_prompts, load,
                     policy_stage, reward_stage, sample, sft_baseline, sft_stage)

__all__ = ["RoundResult", "RLHFLoop", "compare_methods", "active_vs_random"]

SFT_SOURCE = "sft"


@dataclass
class RoundResult:
    round: int
    policy_dir: Path  # the round's policy adapter (peft format)
    reward_dir: Path | None  # the round's reward model (None with DPO)
    metrics: dict  # 'round', 'labels' and stages.METRICS' numbers, also in rounds.jsonl
    samples: pd.DataFrame  # held-out prompt / SFT / this round's policy (with gold scores on the tiny world)


class RLHFLoop:
    """Runs the iterated loop round by round on a task.

    Args:
        task: a `Task` (your prompts, demonstrations and judge) or the tiny world's `WorldTask`.
        config: RLHFConfig.
        annotator: the name the task's judge labels under in the store (default: the judge's name).

    Examples:
        >>> loop = RLHFLoop(WorldTask(TinyWorld(), gold), RLHFConfig.quick("runs/loop"))  # doctest: +SKIP
        >>> PairwiseLabeler(loop.store, annotator="you")  # label some yourself first  # doctest: +SKIP
        >>> loop.run()  # doctest: +SKIP
    """

    def __init__(self, task, config: RLHFConfig | None = None, *, annotator: str | None = None,
                 live: LivePlot | None = None):
        self.task, self.config, self.annotator = task, config or RLHFConfig(), annotator or task.judge_name
        self.out_dir = Path(self.config.out_dir)
        if (self.out_dir / "rounds.jsonl").exists():
            raise ValueError(f"{self.out_dir} already holds a loop's rounds and labels; give a new out_dir "
                             "(or delete that one) so nothing of the earlier run is mixed in or lost")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.store = LabelStore(self.out_dir / "labels.db")
        self.live = live or LivePlot(self.out_dir / "ppo", title="PPO over the rounds", layout="ppo")
        self.rounds_live = LivePlot(self.out_dir / "rounds", title="per round", layout="rounds")
        self.rounds_live.track(self.config.report_to)
        self.heldout = heldout_prompts(task, self.config)  # every round is scored on these
        self.sft_dir: Path | None = None  # set by sft()
        self.baseline: Baseline | None = None  # SFT's held-out answers: what every round is scored against
        self.results: list[RoundResult] = []
        self.queued_round = 0  # the round whose pairs are in the queue
        self.ppo_steps_done = 0

    # -- the pieces of a round -------------------------------------------------------------------

    @property
    def sft_policy(self) -> Policy:
        return self.baseline.policy

    @property
    def sft_responses(self) -> list[str]:
        return self.baseline.responses

    def sample(self, policy: Policy, prompts: list[str], seed: int) -> list[str]:
        return sample(policy, prompts, self.config, seed)

    def sft(self) -> Path:
        """LoRA SFT of the base on a small demonstration budget (round 0), and its held-out answers."""
        live = LivePlot(self.out_dir / "sft", title="SFT", widgets=False)
        self.sft_dir = sft_stage(self.task, self.config, live=live)
        self.baseline = sft_baseline(self.task, self.config, self.sft_dir)
        if self.baseline.gold_scores is not None:
            self.rounds_live.reference("gold/mean", statistics.fmean(self.baseline.gold_scores), "SFT")
        self.rounds_live.reference(f"{self.task.judge_name}/win_rate_vs_sft", 0.5, "SFT against itself")
        return self.sft_dir

    def pool(self, round_number: int) -> list[Item]:
        """Candidate pairs: the newest policy against the one before (two SFT samples in round 1)."""
        c = self.config
        prompts = self.task.draw("train", c.labels_per_round * c.pool_per_label, seed=c.seed + 1000 * round_number)
        if round_number == 1:
            newer = older = self.sft_policy
            names = (SFT_SOURCE, SFT_SOURCE)
        else:
            newer, older = load(self.config, self.results[-1].policy_dir), self.policy_of(round_number - 2)
            names = (f"round {round_number - 1}", self.source_of(round_number - 2))
        first = self.sample(newer, prompts, seed=c.seed + 31 * round_number)
        second = self.sample(older, prompts, seed=c.seed + 31 * round_number + 1)
        return [Item(p, (a, b), names, meta={"round": round_number}) for p, a, b in zip(prompts, first, second)]

    def policy_of(self, round_number: int) -> Policy:
        return self.sft_policy if round_number == 0 else load(self.config, self.results[round_number - 1].policy_dir)

    def source_of(self, round_number: int) -> str:
        return SFT_SOURCE if round_number == 0 else f"round {round_number}"

    def label(self) -> int:
        """The task's judge labels every item nobody has labeled yet; returns how many it labeled."""
        return self.task.label(self.store, annotator=self.annotator, seed=self.config.seed + len(self.results))

    def fit_reward(self, round_number: int):
        """Step 4: a fresh reward model on every label so far."""
        reward_dir = self.out_dir / f"round_{round_number}" / "reward"
        live = LivePlot(reward_dir, title=f"reward model, round {round_number}", widgets=False)
        return reward_dir, reward_stage(trl_rows(self.store), self.config, self.baseline, reward_dir, live=live)

    def update_policy(self, round_number: int, start: Path, reward_dir: Path | None, method: str | None = None) -> Path:
        """Step 5: `config.method` (or `method`) from the `start` adapter; returns the new policy's directory."""
        method = method or self.config.method
        live = self.live if method == "ppo" else LivePlot(self.out_dir / f"round_{round_number}" / method,
                                                          title=f"{method.upper()}, round {round_number}",
                                                          layout=METHODS[method].dashboard)
        policy_dir, self.ppo_steps_done = policy_stage(
            method, self.task, self.config, sft_dir=self.sft_dir, start=start,
            out=self.out_dir / f"round_{round_number}", reward_dir=reward_dir, comparisons=self.store,
            seed=self.config.seed + round_number, first_step=self.ppo_steps_done, live=live)
        return policy_dir

    def evaluate(self, round_number: int, policy_dir: Path, reward_model=None) -> tuple[dict, pd.DataFrame]:
        """Step 6: `stages.evaluate` of the round's policy, with the round and the labels so far."""
        metrics, samples = evaluate(load(self.config, policy_dir), self.baseline, self.task, self.config,
                                    reward_model, name=f"round {round_number}")
        return {"round": round_number, "labels": len(self.store.labels()), **metrics}, samples

    # -- the loop --------------------------------------------------------------------------------

    def queue_round(self) -> list[Item]:
        """Steps 1-2 of the next round: sample the pool and queue the chosen pairs for labeling.

        Label them in a widget now (`PairwiseLabeler(loop.store, annotator=...)`) if you like;
        `finish_round` lets the task's judge label whatever is left.
        """
        c = self.config
        if self.sft_dir is None:
            self.sft()
        round_number = len(self.results) + 1
        previous = self.results[-1] if self.results else None
        previous_reward = None  # round 1, and DPO rounds, have no reward model to be unsure with: random picks
        if previous is not None and previous.reward_dir is not None:
            previous_reward = load_reward_model(str(previous.reward_dir), quantization=c.quantization)
        self.queued_round = round_number
        return self.store.add_items(choose_items(self.pool(round_number), c.labels_per_round, reward=previous_reward,
                                                 store=self.store, config=ActiveConfig(random_share=c.random_share,
                                                                                       seed=c.seed + round_number)))

    def finish_round(self) -> RoundResult:
        """Steps 3-6: label what is left, reward model, policy update, evaluation."""
        c = self.config
        round_number = len(self.results) + 1
        if self.queued_round != round_number:
            self.queue_round()
        previous = self.results[-1] if self.results else None
        self.label()
        reward_dir, reward_model = self.fit_reward(round_number) if METHODS[c.method].reward_model else (None, None)
        policy_dir = self.update_policy(round_number, previous.policy_dir if previous else self.sft_dir, reward_dir)
        metrics, samples = self.evaluate(round_number, policy_dir, reward_model)
        if self.task.judge is None:  # people judge: the round's held-out answers wait in the queue beside SFT's
            self.queue_evaluation(round_number, samples)
        self.rounds_live.log(round_number, {k: v for k, v in metrics.items() if k != "round"})
        self.rounds_live.close()
        result = RoundResult(round_number, policy_dir, reward_dir, metrics, samples)
        self.results.append(result)
        with (self.out_dir / "rounds.jsonl").open("a") as f:
            f.write(json.dumps({**metrics, "config": asdict(c)}) + "\n")
        return result

    def queue_evaluation(self, round_number: int, samples: pd.DataFrame) -> list[Item]:
        """Queue the round's held-out answers against SFT's for people to compare blind (the widget shows no
        source, and a random side first). Marked as evaluation, they never train a reward model or a policy;
        `people_evaluation` reads their verdicts. Answers identical to SFT's are not asked about."""
        source = self.source_of(round_number)
        return self.store.add_items([
            Item(row["prompt"], (row[source], row["SFT"]), (source, SFT_SOURCE), meta={"evaluation": True})
            for row in samples.to_dict("records") if row[source] != row["SFT"]])

    def people_evaluation(self) -> pd.DataFrame:
        """Per round with verdicts: people's win-rate against SFT on held-out prompts, its 95% interval, and
        the number of verdicts (`rlhflab.labeling.metrics.people_win_rates`)."""
        sources = {self.source_of(result.round): result.round for result in self.results}
        rates = people_win_rates(self.store, list(sources), SFT_SOURCE, seed=self.config.seed)
        return pd.DataFrame([{"round": sources[source], **rate} for source, rate in rates.items()])

    def run_round(self) -> RoundResult:
        """One whole round: pool, choose, label, reward model, policy update, evaluation."""
        self.queue_round()
        return self.finish_round()

    def run(self) -> list[RoundResult]:
        """Every round left of `config.rounds`, then a last labeled batch so the final policy is ranked too."""
        while len(self.results) < self.config.rounds:
            self.finish_round()  # queues the round's pairs first unless queue_round already did
        self.label_final_policy()
        return self.results

    def label_final_policy(self, n: int | None = None) -> int:
        """Label pairs of the last round's policy against the one before, for the leaderboard."""
        last = len(self.results)
        n = n or self.config.n_heldout
        prompts = self.task.draw("train", n, seed=self.config.seed + 7777)
        newer, older = self.policy_of(last), self.policy_of(last - 1)
        items = [Item(p, (a, b), (self.source_of(last), self.source_of(last - 1)), meta={"round": "final"})
                 for p, a, b in zip(prompts, self.sample(newer, prompts, seed=1), self.sample(older, prompts, seed=2))]
        self.store.add_items(items)
        return self.label()

    def table(self) -> pd.DataFrame:
        """One row of metrics per round."""
        return pd.DataFrame([r.metrics for r in self.results])


# ---------------------------------------------------------------------------------------------
# Measurements of methods and label strategies (notebook 05 and benchmarks/rlhf_methods.py)
# ---------------------------------------------------------------------------------------------

def compare_methods(task, config: RLHFConfig, best_of: tuple[int, ...] = (4, 16),
                    methods: tuple[str, ...] | None = None, kto_ratings: bool = True) -> pd.DataFrame:
    """SFT, best-of-n and each method of `methods` (default: every registered one) from the same labels
    (`config.labels_per_round`), on held-out prompts.

    Every method sees the same gold-labelled pairs of SFT samples: DPO, KTO (chosen up, rejected
    down) and ILQL (+1 / -1) learn from them directly, best-of-n and PPO through one reward model
    trained on them. With `kto_ratings`, 'KTO (ratings)' learns from as many gold thumbs ratings of
    single SFT samples instead: a rating reads one response where a comparison reads two. One row
    per method, in METRICS' names: gold win-rate against SFT (ties count half), KL to SFT in nats
    per response (measured; best-of-n's is its closed form), gold and proxy means. It needs a task with a
    gold annotator (the tiny world's `WorldTask`): best-of-n's curve and the ratings are scored by gold.
    """
    if task.gold is None:
        raise ValueError("compare_methods scores every method by gold, and this task has no gold annotator; "
                         "run RLHFLoop(task, RLHFConfig(method=...)) per method and compare their win-rates")
    loop = RLHFLoop(task, config)
    loop.sft()
    loop.queue_round()
    loop.label()
    reward_dir, reward_model = loop.fit_reward(1)
    columns = ["gold/win_rate_vs_sft", "kl/to_sft", "gold/mean", "reward/mean"]
    rows = [{"method": "SFT", **{k: loop.evaluate(0, loop.sft_dir, reward_model)[0][k] for k in columns}}]
    if best_of:
        draw = sample_best_of_n(loop.sft_policy, reward_model, loop.heldout, max(best_of),
                                max_new_tokens=config.response_length, seed=config.seed + 51)
        for row in best_of_n_curve(draw, task.gold, loop.sft_responses, list(best_of)).to_dict("records"):
            rows.append({"method": f"best-of-{row.pop('n')}", **row})
    for method in methods or tuple(METHODS):
        metrics = loop.evaluate(1, loop.update_policy(1, loop.sft_dir, reward_dir, method=method), reward_model)[0]
        rows.append({"method": method.upper(), **{k: metrics[k] for k in columns}})
    if kto_ratings:
        ratings = task.ratings(loop.sft_policy, config.labels_per_round, seed=config.seed + 71)
        policy_dir, _ = policy_stage("kto", task, config, sft_dir=loop.sft_dir, start=loop.sft_dir,
                                     out=loop.out_dir / "ratings", comparisons=ratings, seed=config.seed)
        metrics = loop.evaluate(1, policy_dir, reward_model)[0]
        rows.append({"method": "KTO (ratings)", **{k: metrics[k] for k in columns}})
    table = pd.DataFrame(rows, columns=["method", *columns])
    table.attrs["labels"] = len(loop.store.labels())
    return table


def active_vs_random(task, config: RLHFConfig, batches: int = 4, ensemble: int = 3) -> pd.DataFrame:
    """Reward-model agreement with gold on held-out pairs per label spent: active learning vs random picks.

    Every strategy draws from one pool of SFT sample pairs (`batches * labels_per_round *
    pool_per_label` of them) and spends `labels_per_round` gold labels per batch; after each batch a
    fresh reward model trains on every label so far. 'random' picks uniformly; 'active' picks by that
    reward model's uncertainty, and 'ensemble' by the disagreement of `ensemble` reward models (the
    same one and `ensemble - 1` more, each on a bootstrap resample of the labels, as Christiano et al.
    2017 did), both with `random_share` random. Agreement is always the first model's, trained on
    every label, so the strategies differ only in which pairs were labelled (0 or 1: no 'ensemble').
    """
    rows = []
    pool, sft_dir = None, None
    strategies = ("random", "active", "ensemble") if ensemble > 1 else ("random", "active")
    for strategy in strategies:
        loop = RLHFLoop(task, replace(config, out_dir=str(Path(config.out_dir) / strategy),
                                             labels_per_round=config.labels_per_round * batches))
        if sft_dir is not None:  # every strategy starts from the same SFT policy
            shutil.copytree(sft_dir, loop.out_dir / "sft")
        sft_dir = loop.sft()
        pool = pool or loop.pool(1)
        second = loop.sample(loop.sft_policy, loop.heldout, seed=config.seed + 61)
        heldout_pairs = task.preferences(loop.heldout, loop.sft_responses, second)
        picker = None  # what choose_items is unsure with: nothing (random), one reward model, or an ensemble
        for batch in range(1, batches + 1):
            shares = ActiveConfig(random_share=1.0 if strategy == "random" else config.random_share,
                                  seed=config.seed + batch)
            loop.store.add_items(choose_items(pool, config.labels_per_round, reward=picker, store=loop.store,
                                              config=shares))
            loop.label()
            _, reward_model = loop.fit_reward(batch)
            pairs = trl_rows(loop.store)  # the decided labels, as training pairs
            picker = reward_model
            if strategy == "ensemble" and batch < batches:  # the members only pick the next batch
                members = [bootstrap_reward(loop, pairs, batch, member) for member in range(1, ensemble)]
                picker = [reward_model, *members]
            accuracy = evaluate_reward_model(reward_model, heldout_pairs)["metrics"]["eval/accuracy"]
            labels = len(loop.store.labels())
            rows.append({"strategy": strategy, "batch": batch, "labels": labels,
                         "reward/gold_agreement_sft_samples": accuracy,
                         "decided_share": len(pairs) / labels})  # the rest: ties and 'both bad'
    return pd.DataFrame(rows)


def bootstrap_reward(loop: RLHFLoop, rows: list[dict], batch: int, member: int):
    """A reward model on a resample (with replacement) of the training pairs `rows`: one ensemble member."""
    draw = random.Random(f"bootstrap:{loop.config.seed}:{batch}:{member}")
    resample = [rows[draw.randrange(len(rows))] for _ in rows]
    out = loop.out_dir / f"round_{batch}" / f"reward_member_{member}"
    return reward_stage(resample, replace(loop.config, seed=loop.config.seed + member), loop.baseline, out)
