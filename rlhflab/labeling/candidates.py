"""Candidates to label: items from existing data, and responses generated ahead of the people labeling.

    items_from        a DataFrame, Dataset, JSONL file or list of dicts with K response columns
    sample_pairs      two independent samples of a policy for each prompt, to compare
    GenerationQueue   K responses per prompt from one or two policies, made in background batches
                      ahead of labeling; `answer` is the playground's: replies to a typed prompt
                      (two to compare, or one to rate up or down)

The tiny world's own candidates come from `rlhflab.tiny.annotate.world_items`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .records import Item, as_rows, dedup, read_records
from .store import LabelStore

__all__ = ["items_from", "sample_pairs", "GenerationConfig", "GenerationQueue"]


def items_from(data, responses: tuple[str, ...] = ("response_a", "response_b"), prompt: str = "prompt",
               sources: tuple[str, ...] | None = None, gold: str | None = None) -> list[Item]:
    """Items from existing candidates: a DataFrame, datasets.Dataset, list of dicts, or a .csv / .jsonl path.

    Args:
        responses: the columns holding the responses to compare (2 for pairs, K for rankings).
        prompt: the column holding the prompt: text, or chat messages (`rlhflab.labeling.records.as_prompt`).
        sources: columns naming the policy behind each response, aligned with `responses`.
        gold: a column with the calibration answer ('a', 'b', 'tie', 'both_bad'), where known.
    """
    data, what = read_records(data)
    optional = [*(sources or ()), *([gold] if gold else [])]  # may be '' where unknown
    rows = as_rows(data, ["prompt", *responses, *optional], {"prompt": prompt}, what=what, allow_empty=optional)
    return [Item(row["prompt"], tuple(row[r] for r in responses), tuple(row[s] for s in sources or ()),
                 gold=row[gold] or None if gold else None) for row in rows]



def sample_pairs(policy, prompts: list[str], seed: int) -> tuple[list[str], list[str], list[str]]:
    """Two independent samples of `policy` (anything with `generate(prompts, seed=...)`) for each prompt:
    (prompts, first, second)."""
    return prompts, policy.generate(prompts, seed=seed), policy.generate(prompts, seed=seed + 1)


@dataclass
class GenerationConfig:
    k: int = 2  # responses per prompt; with two policies they alternate, so a pair is policy vs policy
    batch_size: int = 8  # prompts generated per batch
    ahead: int = 16  # items kept ready beyond what has been labeled; the thread sleeps when that many wait
    max_new_tokens: int = 48  # reply length limit, tokens
    temperature: float = 1.0  # sampling temperature for every policy
    seed: int = 0  # seeds the sampling, batch by batch


class GenerationQueue:
    """Generates items from prompts with one or two policies in a background thread, ahead of labeling.

    Args:
        store: where the items go; labelers pick them up from there with `store.next_item`.
        prompts: the prompts to answer; repeats (exact, or after case and whitespace folding) are
            dropped, and `dedup_report` says which.
        policies: one or two `Policy` objects (e.g. SFT vs PPO, or one policy twice at two temperatures
            via `temperatures`).
        config: batch size, how far ahead, sampling.
        temperatures: one temperature per policy; defaults to config.temperature for each.

    Examples:
        >>> queue = GenerationQueue(store, prompts, [sft_policy, ppo_policy]).start()  # doctest: +SKIP
        >>> PairwiseLabeler(store, annotator="ada", queue=queue)  # doctest: +SKIP
    """

    def __init__(self, store: LabelStore, prompts: list[str], policies: list, config: GenerationConfig | None = None,
                 temperatures: list[float] | None = None):
        if not 1 <= len(policies) <= 2:
            raise ValueError(f"give one or two policies to compare, not {len(policies)}")
        self.store, self.policies, self.config = store, list(policies), config or GenerationConfig()
        self.temperatures = temperatures or [self.config.temperature] * len(self.policies)
        kept, self.dedup_report = dedup([{"prompt": p} for p in prompts], keys=("prompt",))  # exact and case/space
        self.prompts = [row["prompt"] for row in kept]
        self.generated = 0  # items stored so far
        self.error: BaseException | None = None  # what stopped the thread, if anything did
        self.listeners: list = []  # called with no arguments after every stored batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rlhflab-generation", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> GenerationQueue:
        """Generate the first batch here, so labeling can begin at once, and the rest in the background."""
        self._store_batch(0)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None):
        self._stop.set()
        self._thread.join(timeout)

    def join(self, timeout: float | None = None):
        self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"generation stopped: {self.error!r}") from self.error

    def _run(self):
        try:
            for start in range(self.config.batch_size, len(self.prompts), self.config.batch_size):
                while self.store.progress()["untouched"] >= self.config.ahead:  # enough is waiting
                    if self._stop.wait(0.2):
                        return
                if self._stop.is_set():
                    return
                self._store_batch(start)
        except BaseException as error:  # kept for join() and the widget's status line
            self.error = error
            for listener in self.listeners:  # a waiting widget shows the error now, not on its next request
                listener()

    def _store_batch(self, start: int):
        batch = self.prompts[start:start + self.config.batch_size]
        if batch:
            self.store.add_items(self.generate(batch, seed=self.config.seed + start))
            self.generated += len(batch)
            for listener in self.listeners:
                listener()

    def generate(self, prompts: list[str], seed: int = 0, k: int | None = None) -> list[Item]:
        """K responses for each prompt (`k`, else config.k), response i from policy i % len(policies)."""
        columns, sources = [], []
        for i in range(self.config.k if k is None else k):
            index = i % len(self.policies)
            policy = self.policies[index]
            columns.append(policy.generate(prompts, max_new_tokens=self.config.max_new_tokens,
                                           temperature=self.temperatures[index], seed=seed + i,
                                           batch_size=len(prompts)))
            sources.append(f"{policy.name}@T{self.temperatures[index]}" if len(set(self.temperatures)) > 1
                           else policy.name)
        return [Item(p, tuple(col[j] for col in columns), tuple(sources)) for j, p in enumerate(prompts)]

    def answer(self, prompt: str, seed: int, k: int | None = None) -> Item:
        """The playground: K fresh replies to a prompt a person typed, stored like any other item.

        Args:
            k: how many replies; 1 gives a reply to rate up or down, None the config's K to compare.
        """
        if not prompt.strip():
            raise ValueError("type a prompt first")
        if k is not None and k < 1:
            raise ValueError(f"ask for at least one reply (k=1 to rate, k=2 to compare), not k={k}")
        [item] = self.generate([prompt.strip()], seed=seed, k=k)
        item = Item(item.prompt, item.responses, item.sources, meta={"playground": True})
        self.store.add_items([item])
        return item
