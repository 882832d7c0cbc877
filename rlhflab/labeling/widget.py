"""The labeling widgets, Python side: `PairwiseLabeler` (two responses side by side) and `RankingLabeler`
(K responses, ties allowed). `PairwiseLabeler(..., playground=[policy])` lets a person type a prompt
and either compare two fresh replies or rate one reply thumbs up or down, with an optional reason.
What to label comes from the store, filled by `rlhflab.labeling.candidates`; an item with a single response
is always rated rather than compared. A rating is a label event like any other (choice 'up' or
'down'): durable, undoable, and exported for KTO by `rlhflab.labeling.exports.kto_rows`.

The widget only collects: it sends "label / skip / flag / undo / edit / cancel" messages. Python decides
which item to show, in which left/right order (random per item, recorded with the label), commits each
label to the store, and only then shows the next item. Every showing of an item carries a fresh
`event_id`, and the answer to it is stored under that id, so a message the browser sends again (its
Retry after a slow kernel) is stored at most once. Model text reaches the browser as plain
strings that the front end renders with `textContent`; only the project's own guidelines are
rendered as markdown, with raw HTML and unsafe links disabled.

The guidelines come with good and bad examples side by side and with rules (`LabelerConfig.rationale_for`,
`min_seconds`) that the Python side checks before it stores an answer: one that breaks a rule is refused
with a message naming the rule, and the item stays on screen. Every answer is stored with the guidelines'
version and the moment its item went on screen. After a gold item the widget can show the expected answer
(`gold_feedback`); an annotator who fails the store's qualification round is told so instead of a next item.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import json
import random
import time
import uuid
from dataclasses import asdict, dataclass

import anywidget
import traitlets
from markdown_it import MarkdownIt

from .candidates import GenerationQueue
from .records import Item, as_messages, letter, prompt_text
from .store import RATINGS, STRENGTHS, LabelStore, QualificationFailed, annotator_name, matches_gold

__all__ = ["render_guidelines", "GuidelineExample", "LabelerConfig", "PairwiseLabeler", "RankingLabeler"]

# InstructGPT's labelers flagged each response for, among others, harm and made-up facts (Ouyang et al.
# 2022, appendix B.2); these four are the ones every project needs.
DEFAULT_FLAGS = ("harmful", "false fact", "unhelpful", "off-topic")
DEFAULT_GUIDELINES = """\
### How to judge
Prefer the response that is **helpful**, **truthful** and **harmless**, in that order of checks:

1. Does it answer what was asked? Off-topic replies lose.
2. Is every fact right? A confident wrong fact is worse than a short true answer.
3. Is it polite and to the point? Rambling and repetition lose.

Choose *tie* when neither is better, and *both bad* when neither is acceptable.
A reply shown on its own gets 👍 *good* when it passes all three checks, else 👎 *bad*.
Flag a response for anything harmful or false, and flag the prompt if it cannot be answered.

Keys: `A` / `←` left better, `B` / `→` right better, `1` `2` `3` strength, `T` tie, `X` both bad,
`+` / `↑` good, `-` / `↓` bad (one reply), `S` skip, `P` flag the prompt, `U` undo, `Esc` cancel an edit.
Every key has a button too. Strength is stored only when you give one.
"""


def render_guidelines(markdown: str) -> str:
    """HTML of the project's guidelines: CommonMark with raw HTML off and unsafe links (javascript:) dropped."""
    return MarkdownIt("commonmark", {"html": False}).render(markdown)


def _asset(name: str):
    return importlib.resources.files("rlhflab.widgets").joinpath(name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The widgets (Python side); the front end is widgets/labeler.js
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuidelineExample:
    """A good and a bad response to one prompt, shown side by side under the guidelines."""
    prompt: str
    good: str
    bad: str
    why: str = ""  # what makes the good one better, in a sentence


# What a rule can ask a reason for: a choice, a strength, a response flagged, or a skip or prompt flag.
RATIONALE_FOR = ("tie", "both_bad", "up", "down", *STRENGTHS, "flagged", "skip", "flag_prompt")


@dataclass
class LabelerConfig:
    flags: tuple[str, ...] = DEFAULT_FLAGS  # per-response flags offered as checkboxes
    # Guidelines, and the rules the Python side enforces: an answer that breaks one is refused, saying which
    guidelines: str = DEFAULT_GUIDELINES  # markdown the project writes; shown in a collapsible panel
    examples: tuple[GuidelineExample, ...] = ()  # good and bad responses shown side by side with the guidelines
    guidelines_version: str | None = None  # stored with every answer; None: a hash of guidelines, examples, rules
    rationale_for: tuple[str, ...] = ()  # answers that need a reason, from RATIONALE_FOR, e.g. ("both_bad", "much")
    min_seconds: float = 0.0  # s an item is on screen before it takes a label: time to read every response
    gold_feedback: bool = False  # after each gold item, show the expected answer (calibration, not a test)
    history: int = 10  # recent labels listed for editing
    seed: int | None = None  # seeds the left/right order; None draws a fresh order every session
    # A held key or a double click repeats within ~50 ms, faster than Python shows the next item; an
    # item that takes input only after this long on screen cannot be labeled unseen.
    min_view_ms: int = 300  # ms a newly drawn item is on screen before it accepts a label, skip or flag
    reply_timeout_ms: int = 10_000  # ms the widget waits for the kernel before it offers Retry

    def __post_init__(self):
        unknown = sorted(set(self.rationale_for) - set(RATIONALE_FOR))
        if unknown:
            raise ValueError(f"rationale_for names {unknown}; pick from {RATIONALE_FOR}")
        if self.guidelines_version is None:  # a new text, example or rule is a new version
            told = json.dumps([self.guidelines, [asdict(e) for e in self.examples], sorted(self.rationale_for),
                               self.min_seconds])
            self.guidelines_version = hashlib.sha256(told.encode()).hexdigest()[:12]


def broken_rule(config: LabelerConfig, answer: dict, seconds_on_item: float) -> str | None:
    """What is wrong with `answer` (the fields of the event to store) under the guidelines' rules, or None."""
    if answer["action"] == "label" and seconds_on_item < config.min_seconds:
        return (f"answered {seconds_on_item:.1f} s after the item appeared; the guidelines ask for at least "
                f"{config.min_seconds:g} s on each item, to read every response: look again, then answer")
    if not (answer.get("rationale") or "").strip():
        asked = {answer["action"], answer.get("choice"), answer.get("strength")}
        if any(answer.get("flags") or {}):
            asked.add("flagged")
        needing = [name for name in config.rationale_for if name in asked]
        if needing:
            return (f"the guidelines ask for a reason when the answer is {_rule_name(needing[0])}: type it in "
                    "'Why?' and answer again")
    return None


class _Labeler(anywidget.AnyWidget):
    _esm = _asset("labeler.js")
    _css = _asset("labeler.css")

    # configuration (Python -> browser)
    kind = traitlets.Unicode("pairwise").tag(sync=True)
    annotator = traitlets.Unicode("").tag(sync=True)
    flag_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    guidelines_html = traitlets.Unicode("").tag(sync=True)
    guidelines_version = traitlets.Unicode("").tag(sync=True)
    examples = traitlets.List(traitlets.Dict()).tag(sync=True)  # good and bad responses, drawn as plain text
    rationale_for = traitlets.List(traitlets.Unicode()).tag(sync=True)
    playground = traitlets.Bool(False).tag(sync=True)
    min_view_ms = traitlets.Int(300).tag(sync=True)
    reply_timeout_ms = traitlets.Int(10_000).tag(sync=True)
    lease_renew_ms = traitlets.Int(0).tag(sync=True)  # how often a visible item asks to keep its lease
    # state (Python -> browser): what to show
    item = traitlets.Dict().tag(sync=True)  # {} when the queue is empty
    progress = traitlets.Dict().tag(sync=True)
    history = traitlets.List().tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    feedback = traitlets.Dict().tag(sync=True)  # the expected answer to the gold item just answered; {} when none

    def __init__(self, store: LabelStore, annotator: str, config: LabelerConfig | None = None,
                 queue: GenerationQueue | None = None, **kwargs):
        self.config = config or LabelerConfig()
        super().__init__(annotator=annotator_name(annotator), flag_names=list(self.config.flags),
                         guidelines_html=render_guidelines(self.config.guidelines),
                         guidelines_version=self.config.guidelines_version,
                         examples=[asdict(e) for e in self.config.examples],
                         rationale_for=[_rule_name(name) for name in self.config.rationale_for],
                         min_view_ms=self.config.min_view_ms, reply_timeout_ms=self.config.reply_timeout_ms,
                         lease_renew_ms=int(store.config.lease_seconds * 1000 / 3), **kwargs)
        self.store, self.queue = store, queue
        self.session = uuid.uuid4().hex  # recorded with every event from this widget
        self._rng = random.Random(self.config.seed)
        self._committed: set[str] = set()  # event_ids of the shown items answered so far: a resent answer is a no-op
        self._commits = 0  # events this widget stored: tells "not saved" from "saved, then failed"
        self.on_msg(self._on_message)
        if queue is not None:
            queue.listeners.append(self._on_new_items)
        self.show_next()

    # -- what to show ------------------------------------------------------------------------------

    def show(self, item: Item, previous: dict | None = None, editing: bool = False):
        """Put `item` on screen in a fresh random order, or as `previous` showed it, pre-filled from it.

        Args:
            previous: the event to start from: the stored label when editing, the undone one after an undo.
            editing: the annotator has an answer in force for this item, which the new answer replaces.
        """
        order = list(range(len(item.responses)))
        if previous and previous.get("shown_order"):
            order = list(previous["shown_order"])
        else:
            self._rng.shuffle(order)
        self._draw({"item_id": item.item_id, "event_id": uuid.uuid4().hex, "prompt": prompt_text(item.prompt),
                    "turns": as_messages(item.prompt),
                    "shown_order": order, "responses": [item.responses[i] for i in order], "editing": editing,
                    "previous": _shown_label(previous, order) if previous else None})

    def _draw(self, item: dict):
        """Put `item` ({} for none) on screen with the history; the progress line follows."""
        with self.hold_sync():  # item and history reach the browser together: Undo sees the new history
            self._shown_at = time.time()  # recorded with the answer: the time spent on it
            self.item = item
            self.history = self._history()
        self._refresh_progress_after_this_message()

    def show_next(self):
        try:
            item = self.store.next_item(self.annotator)  # a skip is an answer in force: never served again
        except QualificationFailed as failed:  # no real item for this annotator, and the widget says why
            self._draw({})
            self.say(str(failed))
            return
        if item is not None:
            self.show(item)
            return
        self._draw({})
        if self.queue is not None and self.queue.error is not None:
            self.say(f"generation failed, so no more items will come: {self.queue.error!r}; "
                     "fix the cause and start a new GenerationQueue")
        elif self.queue is not None and self.queue.running:
            self.say("generating more responses...")
        else:
            self.say("all done - nothing left to label")

    def _refresh_progress_after_this_message(self):
        """`refresh_progress` once the kernel has answered the browser's message, on its event loop's next turn, so
        that what was sent so far reaches the browser first; at once where no loop runs (tests and scripts calling
        `handle`). An error shows in the status line, as one inside the message would."""
        def guarded():
            try:
                self.refresh_progress()
            except Exception as error:
                self.say(f"could not update the progress line: {error}")
        try:
            asyncio.get_running_loop().call_soon(guarded)
        except RuntimeError:
            guarded()

    def refresh_progress(self):
        """Count the annotator's answers and the queue (`store.progress`): the slowest part of a click, so it
        runs after the next item is on screen."""
        progress = self.store.progress(self.annotator)
        progress = {key: progress[key] for key in ("labelled", "skipped", "flagged", "remaining", "by_annotator")}
        if self.store.config.qualification:
            round_ = self.store.qualification(self.annotator)
            if round_["passed"] is None:
                progress["qualifying"] = f"{round_['answered']} of {round_['required']}"
        self.progress = progress

    def _lease_kept(self) -> bool:
        """Whether the item on screen is still this annotator's: its lease is renewed, or taken again while the
        item has room for them (`LabelStore.renew_lease`)."""
        return self.store.renew_lease(self.item["item_id"], self.annotator)

    def _history(self) -> list[dict]:
        return [{"event_id": e["event_id"], "action": e["action"], "prompt": e["prompt"][:120],
                 "summary": _summary(e)} for e in self.store.recent(self.annotator, self.config.history)]

    def _on_new_items(self):
        if not self.item:
            self.show_next()

    # -- what the browser sends --------------------------------------------------------------------

    def _on_message(self, _widget, message: dict, _buffers):
        commits = self._commits
        try:
            self.handle(message)
        except Exception as error:  # shown in the widget, saying whether the answer was stored
            self.say(f"not saved: {error}" if self._commits == commits else f"saved, but then: {error}")

    def say(self, text: str):
        """Set the status line; always reaches the browser, which unlocks its buttons on every status."""
        if self.status == text:
            self.status = ""
        self.status = text

    def handle(self, message: dict):
        """Apply one browser message; also how tests and scripts drive the widget without a browser. Each action
        has its handler; a skip, a prompt flag and a label are answers to the item on screen (`_answer`)."""
        handlers = {"still_here": self._still_here, "undo": self._undo, "edit": self._edit, "cancel": self._cancel,
                    "prompt": self._prompt, "skip": self._answer, "flag_prompt": self._answer, "label": self._answer}
        action = message.get("action")
        if action not in handlers:
            raise ValueError(f"unknown action {action!r}")
        handlers[action](message)

    def _still_here(self, message: dict):
        """The item is still on screen: keep its lease, quietly; move on if it went to someone else meanwhile."""
        if self.item and message.get("item_id") == self.item["item_id"] and not self._lease_kept():
            self.say("this item went to someone else while it was off screen (its lease ran out); here is "
                     "the next one")
            self.show_next()

    def _undo(self, message: dict):
        # `target`, the newest event the browser listed, makes a resent undo cancel nothing more
        undone = self.store.undo(self.annotator, event_id=message.get("target"), session=self.session)
        if undone is None:
            self.say("nothing to undo" if message.get("target") is None else "already undone")
            return
        self._commits += 1
        # an earlier label the undo brought back, if any
        stored = self.store.in_force(undone["item_id"], self.annotator)
        self.say(f"undid your {undone['action'].replace('_', ' ')}")
        self.show(self.store.item(undone["item_id"]), previous=stored or undone, editing=stored is not None)

    def _edit(self, message: dict):
        clicked = self.store.event(message.get("event_id"))
        if clicked is None or clicked["annotator"] != self.annotator:
            raise ValueError("that entry is not one of your events; pick one from 'Your recent labels'")
        # the answer in force, even if the entry is an older one
        stored = self.store.in_force(clicked["item_id"], self.annotator)
        if stored is None:
            raise ValueError("that answer was undone, so there is nothing to edit; the item is back in your queue")
        self.say("editing an earlier answer: a new one replaces it, Cancel keeps it")
        self.show(self.store.item(stored["item_id"]), previous=stored, editing=True)

    def _cancel(self, _message: dict):
        self.say("edit cancelled: your earlier answer stays")
        self.show_next()

    def _prompt(self, message: dict):
        self.play(message.get("text", ""), message.get("mode", "compare"))

    def _answer(self, message: dict):
        """A skip, a prompt flag or a label of the item on screen: checked, stored once, then the next item."""
        action = message["action"]
        event_id = message.get("event_id") or (self.item or {}).get("event_id")
        if event_id in self._committed:
            if self.item and self.item["event_id"] == event_id:  # stored, but fetching the next item failed then
                self.say("saved earlier; here is the next item")
                self.show_next()
                return
            self.say("already saved (this answer was sent twice and is stored once)")
            return
        if not self.item or message.get("item_id") != self.item["item_id"] or event_id != self.item["event_id"]:
            self.say("that item is no longer on screen; nothing was saved")
            return
        if action in ("skip", "flag_prompt") and self.item["editing"]:
            raise ValueError(f"you already answered this item, and a {action.replace('_', ' ')} would replace "
                             "that answer: give a new answer, or Cancel to keep it")
        item_id, order = self.item["item_id"], self.item["shown_order"]
        if action == "skip":
            answer = {"action": "skip"}
        elif action == "flag_prompt":
            answer = {"action": "flag_prompt", "rationale": message.get("rationale")}
        else:
            answer = {"action": "label", "rationale": message.get("rationale"),
                      "flags": _stored_flags(message.get("flags") or {}, order), **self.labeled(message, order)}
        problem = broken_rule(self.config, answer, time.time() - self._shown_at)
        if problem:
            raise ValueError(problem)
        if not self.item["editing"] and not self._lease_kept():  # an answer now would exceed the overlap
            self.say("not saved: this item went to someone else while it was off screen (its lease ran out); "
                     "here is the next one")
            self.show_next()
            return
        self.store.record(item_id, self.annotator, session=self.session, shown_order=order, event_id=event_id,
                          shown_at=self._shown_at, guidelines=self.config.guidelines_version, **answer)
        self._committed.add(event_id)
        self._commits += 1
        # One message to the browser: every message is one more for the Jupyter server to pass on before the next item
        with self.hold_sync():
            self.feedback = (self._gold_feedback(answer, order) if action == "label" and self.config.gold_feedback
                             else {})
            self.say("saved")
            self.show_next()  # only after the commit above returned

    def _gold_feedback(self, answer: dict, order: list[int]) -> dict:
        """The expected answer to a gold item, as it was shown; {} for other items."""
        item = self.store.item(self.item["item_id"])
        if item.gold is None:
            return {}
        gold = {"choice": None, "ranking": None, "strength": None,
                **({"ranking": item.gold} if isinstance(item.gold, list) else {"choice": item.gold})}
        better = item.responses["ab".index(item.gold)] if item.gold in ("a", "b") else ""
        return {"correct": matches_gold(answer, item.gold), "expected": _shown_answer(gold, order),
                "given": _shown_answer(answer, order), "prompt": prompt_text(item.prompt), "better": better}

    def labeled(self, message: dict, order: list[int]) -> dict:
        raise NotImplementedError

    def play(self, prompt: str, mode: str = "compare"):
        raise ValueError("this labeler has no playground; create it with playground=[policy]")


class PairwiseLabeler(_Labeler):
    """Two responses side by side: A / B better (slightly, clearly, much), tie, or both bad; an item
    with one response is rated on its own, thumbs up or down.

    Args:
        store: the LabelStore to read items from and write labels to.
        annotator: who is labeling.
        config: flags, guidelines, history length, order seed, how long an item is on screen before it
            takes input, and how long the browser waits for an answer before it offers Retry.
        queue: a running GenerationQueue to wait for when the store runs dry.
        playground: one or two policies; shows a prompt box with two modes. "compare two": each
            typed prompt gets two fresh replies (one per policy, or two samples of one) to judge like
            any other item. "rate one": it gets one reply (from the first policy) to rate thumbs up
            or down, with an optional reason; the rating is stored as choice 'up' or 'down'.

    Examples:
        >>> PairwiseLabeler(LabelStore("labels.db"), annotator="ada")  # doctest: +SKIP
    """

    def __init__(self, store: LabelStore, annotator: str, config: LabelerConfig | None = None,
                 queue: GenerationQueue | None = None, playground: list | None = None):
        self._playground = GenerationQueue(store, [], playground) if playground else None
        super().__init__(store, annotator, config, queue, kind="pairwise", playground=bool(playground))

    def labeled(self, message: dict, order: list[int]) -> dict:
        choice, strength = message.get("choice"), message.get("strength")
        if len(order) == 1:  # one reply, rated on its own
            if choice not in RATINGS:
                raise ValueError(f"this reply is rated on its own: choice must be 'up' or 'down', not {choice!r}")
            return {"choice": choice}
        if choice in RATINGS:
            raise ValueError(f"{choice!r} rates a single reply; for a pair choose left, right, tie or both_bad")
        if choice in ("left", "right"):  # strength stays None unless the person gave one
            stored = order[0 if choice == "left" else 1]
            return {"choice": "ab"[stored], "strength": strength}
        if choice in ("tie", "both_bad"):
            return {"choice": choice}
        raise ValueError(f"choice must be left, right, tie or both_bad, not {choice!r}")

    def play(self, prompt: str, mode: str = "compare"):
        """Answer a typed prompt and show it: two replies to compare, or (mode "rate") one to rate."""
        if self._playground is None:
            super().play(prompt, mode)
        if mode not in ("compare", "rate"):
            raise ValueError(f"playground mode must be 'compare' (two replies) or 'rate' (one), not {mode!r}")
        self.status = "generating..."
        item = self._playground.answer(prompt, seed=self._rng.randrange(2**31), k=1 if mode == "rate" else None)
        self.status = ""
        self.show(self.store.item(item.item_id))


class RankingLabeler(_Labeler):
    """K responses to put in order, best first; equal ranks are ties. Exported as K(K-1)/2 pairs.

    Args: as `PairwiseLabeler`, without the playground.
    """

    def __init__(self, store: LabelStore, annotator: str, config: LabelerConfig | None = None,
                 queue: GenerationQueue | None = None):
        super().__init__(store, annotator, config, queue, kind="ranking")

    def labeled(self, message: dict, order: list[int]) -> dict:
        shown_ranks = message.get("ranks") or []
        if len(shown_ranks) != len(order) or not all(isinstance(r, int) and r >= 1 for r in shown_ranks):
            raise ValueError(f"give every one of the {len(order)} responses a rank (1 = best)")
        ranking = [0] * len(order)
        for position, rank in enumerate(shown_ranks):
            ranking[order[position]] = rank
        return {"ranking": ranking}


def _stored_flags(shown: dict, order: list[int]) -> dict:
    """{'0': [...]} keyed by shown position -> {'a': [...]} keyed by stored response."""
    return {letter(order[int(p)]): sorted(set(f)) for p, f in shown.items() if f}


def _shown_label(event: dict, order: list[int]) -> dict:
    """An earlier label as the browser shows it (by position), to pre-fill an edit."""
    flags = event.get("flags") or {}
    out = {"action": event["action"], "rationale": event.get("rationale") or "",
           "flags": {str(p): flags[letter(i)] for p, i in enumerate(order) if letter(i) in flags}}
    if event.get("choice") in ("a", "b"):
        out["choice"] = "left" if letter(order[0]) == event["choice"] else "right"
        out["strength"] = event["strength"]
    elif event.get("choice"):
        out["choice"] = event["choice"]
    if event.get("ranking"):
        out["ranks"] = [event["ranking"][i] for i in order]
    return out


def _shown_answer(answer: dict, order: list[int]) -> str:
    """An answer in the words of the screen it was given on: left / right, ranks left to right."""
    if answer.get("ranking") is not None:
        return "ranks " + " ".join(str(answer["ranking"][i]) for i in order) + " (left to right)"
    if answer.get("choice") in ("a", "b"):
        side = "left" if letter(order[0]) == answer["choice"] else "right"
        return " ".join(x for x in (side, "better", answer.get("strength")) if x)
    rated = {"up": "good (thumbs up)", "down": "bad (thumbs down)"}
    return rated.get(answer["choice"], answer["choice"].replace("_", " "))


def _rule_name(name: str) -> str:
    """A RATIONALE_FOR name as a person reads it."""
    return {"much": "much better", "slightly": "slightly better", "clearly": "clearly better",
            "flagged": "a flagged response", "flag_prompt": "a flagged prompt"}.get(name, name.replace("_", " "))


def _summary(event: dict) -> str:
    if event["action"] != "label":
        return event["action"].replace("_", " ")
    if event["ranking"]:
        return "ranked " + " ".join(map(str, event["ranking"]))
    if event["choice"] in RATINGS:
        return f"rated {event['choice']}"
    return " ".join(x for x in (event["choice"].replace("_", " "), event["strength"]) if x)


