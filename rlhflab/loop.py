"""The iterated RLHF loop: label, train a reward model, update the policy, label its new answers.

InstructGPT's steps 2 and 3 "can be iterated continuously" (Ouyang et al. 2022, sec. 3.1), and
Llama 2 ran five such rounds (Touvron et al. 2023, sec. 3.2.2). One round here is:

    1. pool     two samples per prompt: the current policy against the previous one
                (round 1: two samples of SFT)
    2. choose   active learning picks `labels_per_round` pairs of the pool (`rlhflab.active`)
    3. label    people label the store's queue in the widgets; the gold annotator labels what is left
    4. reward   a fresh LoRA reward model on every label so far, normalised on SFT samples
    5. policy   PPO from the current policy against that reward, KL to SFT (a fresh value head and KL
                controller each round); or DPO on all labels (iterated DPO: each round's
                reference is the policy it starts from)
    6. evaluate held-out prompts: gold win-rate against SFT, gold and proxy means, KL to SFT

Pairs of round r's policy against round r-1's are labelled in the next round, so the store's
Elo / Bradley-Terry leaderboard (`rlhflab.metrics.leaderboard`) ranks the rounds' policies.
Everything a round writes lives under `out_dir/round_<r>/`; the labels live in `out_dir/labels.db`.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from .active import ActiveConfig, choose_items
from .best_of_n import best_of_n_curve, sample_best_of_n
from .dpo import DPOConfig, train_dpo
from .labeling import label_with_gold
from .live import LivePlot
from .models import Policy, load_policy
from .ppo import PPOConfig, PPOTrainer
from .records import Item, trl_rows
from .reward import RewardConfig, SharedReward, evaluate_reward_model, load_reward_model, train_reward_model
from .sft import SFTConfig, train_sft
from .store import LabelStore

SFT_SOURCE = "sft"


@dataclass
class LoopConfig:
    """Sizes of the iterated loop; `quick()` is what the tests use."""

    out_dir: str = "runs/loop"  # labels.db, sft/, round_<r>/ (reward, policy), rounds.jsonl
    base: str = "tiny"  # the base model of every role: 'tiny', a local directory or a hub id
    rounds: int = 3  # label -> reward -> policy rounds
    method: str = "ppo"  # 'ppo' or 'dpo' (no reward model, so active learning falls back to random picks)
    n_demonstrations: int = 128  # SFT budget, small on purpose so RLHF has something to teach
    labels_per_round: int = 300  # pairs sent to annotators per round
    pool_per_label: int = 2  # candidate pairs generated per label spent; active learning picks among them
    random_share: float = 0.25  # share of each round's pairs drawn at random (see rlhflab.active)
    reward_epochs: float = 2.0  # passes over all labels so far, per round
    ppo_steps: int = 16  # PPO steps per round, of ppo_batch_size responses
    ppo_batch_size: int = 16  # responses per PPO step
    ppo_learning_rate: float = 1e-4  # LoRA learning rate of PPO
    kl_coef: float = 0.2  # initial KL penalty (adaptive toward target_kl)
    target_kl: float = 3.0  # nats per response
    dpo_epochs: float = 2.0  # DPO passes over all labels so far, per round
    dpo_beta: float = 0.1  # DPO's implicit KL strength
    response_length: int = 32  # most tokens per sampled response, everywhere in the loop
    n_heldout: int = 48  # held-out prompts of every evaluation
    quantization: str | None = None  # '4bit': every model on one nf4 base
    seed: int = 0  # seeds prompts, sampling and training

    def __post_init__(self):
        if self.method not in ("ppo", "dpo"):
            raise ValueError(f"method must be 'ppo' or 'dpo', not {self.method!r}")
        if self.rounds < 1 or self.labels_per_round < 1:
            raise ValueError("the loop needs at least 1 round and 1 label per round")

    @classmethod
    def quick(cls, out_dir: str, **overrides) -> "LoopConfig":
        settings = dict(out_dir=out_dir, rounds=2, n_demonstrations=64, labels_per_round=96, ppo_steps=4,
                        reward_epochs=2.0, n_heldout=24)
        return cls(**{**settings, **overrides})


@dataclass
class RoundResult:
    round: int
    policy_dir: Path  # the round's policy adapter (peft format)
    reward_dir: Path | None  # the round's reward model (None with DPO)
    metrics: dict  # 'round/...' numbers, also in rounds.jsonl
    samples: pd.DataFrame  # held-out prompt / SFT / this round's policy, with gold scores


class RLHFLoop:
    """Runs the iterated loop round by round on the tiny world (or any world with a gold annotator).

    Args:
        world: a `TinyWorld` (prompts and demonstrations).
        gold: its `GoldAnnotator`; it labels what people leave and scores every round.
        config: LoopConfig.
        annotator: the name the gold annotator labels under in the store.

    Examples:
        >>> loop = RLHFLoop(TinyWorld(), gold, LoopConfig.quick("runs/loop"))  # doctest: +SKIP
        >>> PairwiseLabeler(loop.store, annotator="you")  # label some yourself first  # doctest: +SKIP
        >>> loop.run()  # doctest: +SKIP
    """

    def __init__(self, world, gold, config: LoopConfig | None = None, *, annotator: str = "gold",
                 live: LivePlot | None = None):
        self.world, self.gold, self.config, self.annotator = world, gold, config or LoopConfig(), annotator
        self.out_dir = Path(self.config.out_dir)
        if (self.out_dir / "rounds.jsonl").exists():
            raise ValueError(f"{self.out_dir} already holds a loop's rounds and labels; give a new out_dir "
                             "(or delete that one) so nothing of the earlier run is mixed in or lost")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.store = LabelStore(self.out_dir / "labels.db")
        self.live = live or LivePlot(self.out_dir / "ppo", title="PPO over the rounds")
        self.rounds_live = LivePlot(self.out_dir / "rounds", title="per round")
        self.heldout = [q.text for q in world.questions("heldout", self.config.n_heldout, seed=self.config.seed + 11)]
        self.sft_dir: Path | None = None  # set by sft()
        self.sft_policy: Policy | None = None
        self.sft_responses: list[str] = []  # SFT's held-out answers: the baseline of every win-rate
        self.results: list[RoundResult] = []
        self.queued_round = 0  # the round whose pairs are in the queue
        self.ppo_steps_done = 0

    # -- the pieces of a round -------------------------------------------------------------------

    def load(self, adapter: Path, trainable: bool = False) -> Policy:
        return load_policy(self.config.base, lora=True if trainable else None, adapter=str(adapter),
                           quantization=self.config.quantization)

    def sample(self, policy: Policy, prompts: list[str], seed: int) -> list[str]:
        return policy.generate(prompts, max_new_tokens=self.config.response_length, seed=seed)

    def sft(self) -> Path:
        """LoRA SFT of the tiny base on a small demonstration budget (round 0)."""
        c = self.config
        self.sft_dir = self.out_dir / "sft"
        if not (self.sft_dir / "adapter_model.safetensors").exists():
            policy = load_policy(c.base, lora=True, quantization=c.quantization)
            train_sft(policy, self.world.demonstrations("train", c.n_demonstrations, seed=c.seed),
                      SFTConfig(output_dir=str(self.sft_dir), seed=c.seed, logging_steps=2),
                      live=LivePlot(self.sft_dir, title="SFT", widgets=False))
        self.sft_policy = self.load(self.sft_dir)
        self.sft_responses = self.sample(self.sft_policy, self.heldout, seed=c.seed + 21)
        return self.sft_dir

    def pool(self, round_number: int) -> list[Item]:
        """Candidate pairs: the newest policy against the one before (two SFT samples in round 1)."""
        c = self.config
        prompts = [q.text for q in self.world.questions("train", c.labels_per_round * c.pool_per_label,
                                                        seed=c.seed + 1000 * round_number)]
        if round_number == 1:
            newer = older = self.sft_policy
            names = (SFT_SOURCE, SFT_SOURCE)
        else:
            newer, older = self.load(self.results[-1].policy_dir), self.policy_of(round_number - 2)
            names = (f"round {round_number - 1}", self.source_of(round_number - 2))
        first = self.sample(newer, prompts, seed=c.seed + 31 * round_number)
        second = self.sample(older, prompts, seed=c.seed + 31 * round_number + 1)
        return [Item(p, (a, b), names, meta={"round": round_number}) for p, a, b in zip(prompts, first, second)]

    def policy_of(self, round_number: int) -> Policy:
        return self.sft_policy if round_number == 0 else self.load(self.results[round_number - 1].policy_dir)

    def source_of(self, round_number: int) -> str:
        return SFT_SOURCE if round_number == 0 else f"round {round_number}"

    def label(self) -> int:
        """The gold annotator labels every item nobody has labeled yet; returns how many it labeled."""
        seed = self.config.seed + len(self.results)
        return len(label_with_gold(self.store, self.gold, annotator=self.annotator, seed=seed))

    def fit_reward(self, round_number: int) -> tuple[Path, object]:
        c = self.config
        reward_dir = self.out_dir / f"round_{round_number}" / "reward"
        reward_model = load_reward_model(c.base, lora=True, quantization=c.quantization)
        train_reward_model(reward_model, trl_rows(self.store),
                           RewardConfig(output_dir=str(reward_dir), epochs=c.reward_epochs, seed=c.seed,
                                        logging_steps=10),
                           live=LivePlot(reward_dir, title=f"reward model, round {round_number}", widgets=False))
        reward_model.normalize_on(self.heldout, self.sft_responses)
        reward_model.save(reward_dir)
        return reward_dir, reward_model

    def update_policy(self, round_number: int, start: Path, reward_dir: Path | None, method: str | None = None) -> Path:
        """PPO or DPO (`config.method` unless given) from the `start` adapter; returns the new adapter's directory."""
        c = self.config
        round_dir = self.out_dir / f"round_{round_number}"
        policy = self.load(start, trainable=True)
        if (method or c.method) == "dpo":
            out = round_dir / "dpo"
            train_dpo(policy, self.store, DPOConfig(output_dir=str(out), epochs=c.dpo_epochs, beta=c.dpo_beta,
                                                    seed=c.seed + round_number, logging_steps=2),
                      live=LivePlot(out, title=f"DPO, round {round_number}"))
            return out
        prompts = [q.text for q in self.world.questions("train", 2000, seed=c.seed + 13)]
        steps = self.ppo_steps_done + c.ppo_steps  # one step count over all rounds, so the curves join up
        config = PPOConfig(output_dir=str(round_dir / "ppo"), steps=steps, batch_size=c.ppo_batch_size,
                           mini_batch_size=c.ppo_batch_size // 2, learning_rate=c.ppo_learning_rate,
                           kl_coef=c.kl_coef, target_kl=c.target_kl, kl_horizon=50 * c.ppo_batch_size,
                           response_length=c.response_length, seed=c.seed + round_number)
        trainer = PPOTrainer(policy, prompts, SharedReward(policy, reward_dir), config, gold=self.gold,
                             live=self.live, reference_adapter=self.sft_dir)
        trainer.step = self.ppo_steps_done
        result = trainer.train()
        self.ppo_steps_done = result.step
        return result.output_dir / "checkpoint"

    def evaluate(self, round_number: int, policy_dir: Path, reward_model=None) -> tuple[dict, pd.DataFrame]:
        """Held-out gold win-rate against SFT, gold and proxy means, KL to SFT, reward-model agreement."""
        c = self.config
        policy = self.load(policy_dir)
        responses = self.sample(policy, self.heldout, seed=c.seed + 41)
        # KL(policy || SFT) per response, k1 on the policy's own samples
        kl = (policy.response_logprobs(self.heldout, responses)
              - self.sft_policy.response_logprobs(self.heldout, responses)).mean().item()
        gold_policy = [self.gold.score(p, r) for p, r in zip(self.heldout, responses)]
        gold_sft = [self.gold.score(p, r) for p, r in zip(self.heldout, self.sft_responses)]
        metrics = {"round": round_number, "labels": len(self.store.labels()),
                   "round/gold_win_rate_vs_sft": self.gold.win_rate(self.heldout, responses, self.sft_responses),
                   "round/gold_mean": statistics.fmean(gold_policy), "sft/gold_mean": statistics.fmean(gold_sft),
                   "round/kl_to_sft": kl}
        if reward_model is not None:
            metrics["round/reward_mean"] = reward_model.score(self.heldout, responses).mean().item()
            pairs = self.gold.preferences(self.heldout, responses, self.sft_responses)
            if pairs:
                agreement = evaluate_reward_model(reward_model, pairs)["metrics"]["eval/accuracy"]
                metrics["round/reward_gold_agreement"] = agreement
        samples = pd.DataFrame({"prompt": self.heldout, "SFT": self.sft_responses, "SFT gold": gold_sft,
                                f"round {round_number}": responses, f"round {round_number} gold": gold_policy})
        return metrics, samples

    # -- the loop --------------------------------------------------------------------------------

    def queue_round(self) -> list[Item]:
        """Steps 1-2 of the next round: sample the pool and queue the chosen pairs for labeling.

        Label them in a widget now (`PairwiseLabeler(loop.store, annotator=...)`) if you like;
        `finish_round` lets the gold annotator label whatever is left.
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
        reward_dir, reward_model = self.fit_reward(round_number) if c.method == "ppo" else (None, None)
        policy_dir = self.update_policy(round_number, previous.policy_dir if previous else self.sft_dir, reward_dir)
        metrics, samples = self.evaluate(round_number, policy_dir, reward_model)
        self.rounds_live.log(round_number, {k: v for k, v in metrics.items() if k != "round"})
        self.rounds_live.close()
        result = RoundResult(round_number, policy_dir, reward_dir, metrics, samples)
        self.results.append(result)
        with (self.out_dir / "rounds.jsonl").open("a") as f:
            f.write(json.dumps({**metrics, "config": asdict(c)}) + "\n")
        return result

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
        prompts = [q.text for q in self.world.questions("train", n, seed=self.config.seed + 7777)]
        newer, older = self.policy_of(last), self.policy_of(last - 1)
        items = [Item(p, (a, b), (self.source_of(last), self.source_of(last - 1)), meta={"round": "final"})
                 for p, a, b in zip(prompts, self.sample(newer, prompts, seed=1), self.sample(older, prompts, seed=2))]
        self.store.add_items(items)
        return self.label()

    def table(self) -> pd.DataFrame:
        """One row of metrics per round."""
        return pd.DataFrame([r.metrics for r in self.results])


# ---------------------------------------------------------------------------------------------
# Measurements on the tiny world (notebook 05 and benchmarks/rlhf_methods.py)
# ---------------------------------------------------------------------------------------------

def compare_methods(world, gold, config: LoopConfig, best_of: tuple[int, ...] = (4, 16)) -> pd.DataFrame:
    """SFT, best-of-n, DPO and PPO from the same labels (`config.labels_per_round`), on held-out prompts.

    Every method sees the same gold-labelled pairs of SFT samples: DPO learns from them directly,
    best-of-n and PPO through one reward model trained on them. Columns: gold win-rate against SFT
    (ties count half), KL to SFT in nats per response (measured; best-of-n's is its closed form),
    gold and proxy means.
    """
    loop = RLHFLoop(world, gold, config)
    loop.sft()
    loop.queue_round()
    loop.label()
    reward_dir, reward_model = loop.fit_reward(1)
    rows = []

    def add(method: str, metrics: dict):
        rows.append({"method": method, "gold_win_rate_vs_sft": metrics["round/gold_win_rate_vs_sft"],
                     "kl_to_sft": metrics["round/kl_to_sft"], "gold_mean": metrics["round/gold_mean"],
                     "reward_mean": metrics["round/reward_mean"]})

    add("SFT", loop.evaluate(0, loop.sft_dir, reward_model)[0])
    draw = sample_best_of_n(loop.sft_policy, reward_model, loop.heldout, max(best_of),
                            max_new_tokens=config.response_length, seed=config.seed + 51)
    for row in best_of_n_curve(draw, gold, loop.sft_responses, list(best_of)).to_dict("records"):
        rows.append({"method": f"best-of-{row['n']}", "gold_win_rate_vs_sft": row["gold_win_rate"],
                     "kl_to_sft": row["kl"], "gold_mean": row["gold_mean"], "reward_mean": row["reward_mean"]})
    for method in ("dpo", "ppo"):
        policy_dir = loop.update_policy(1, loop.sft_dir, reward_dir, method=method)
        add(method.upper(), loop.evaluate(1, policy_dir, reward_model)[0])
    table = pd.DataFrame(rows)
    table.attrs["labels"] = len(loop.store.labels())
    return table


def active_vs_random(world, gold, config: LoopConfig, batches: int = 4) -> pd.DataFrame:
    """Reward-model agreement with gold on held-out pairs per label spent: active learning vs random picks.

    Both strategies draw from one pool of SFT sample pairs (`batches * labels_per_round *
    pool_per_label` of them) and spend `labels_per_round` gold labels per batch; after each batch a
    fresh reward model trains on every label so far. 'active' picks by reward-model uncertainty
    (with `random_share` random), 'random' picks uniformly.
    """
    rows = []
    pool, sft_dir = None, None
    for strategy in ("random", "active"):
        loop = RLHFLoop(world, gold, replace(config, out_dir=str(Path(config.out_dir) / strategy),
                                             labels_per_round=config.labels_per_round * batches))
        if sft_dir is not None:  # both strategies start from the same SFT policy
            shutil.copytree(sft_dir, loop.out_dir / "sft")
        sft_dir = loop.sft()
        pool = pool or loop.pool(1)
        second = loop.sample(loop.sft_policy, loop.heldout, seed=config.seed + 61)
        heldout_pairs = gold.preferences(loop.heldout, loop.sft_responses, second)
        reward_model = None
        for batch in range(1, batches + 1):
            shares = ActiveConfig(random_share=1.0 if strategy == "random" else config.random_share,
                                  seed=config.seed + batch)
            loop.store.add_items(choose_items(pool, config.labels_per_round, reward=reward_model, store=loop.store,
                                              config=shares))
            loop.label()
            _, reward_model = loop.fit_reward(batch)
            accuracy = evaluate_reward_model(reward_model, heldout_pairs)["metrics"]["eval/accuracy"]
            labels = len(loop.store.labels())
            rows.append({"strategy": strategy, "batch": batch, "labels": labels, "gold_agreement": accuracy,
                         "decided_share": len(trl_rows(loop.store)) / labels})  # the rest: ties and 'both bad'
    return pd.DataFrame(rows)
