"""The tiny world: a seeded, procedural, assistant-like domain with known quality axes.

A user asks about one attribute of one thing (its colour, where it lives, what it eats, the sound
it makes, or what it is used for). A good answer names the thing, states the right fact, is polite,
short and says it once. Candidate responses vary along five axes, each with a better variant:

    on_topic     talks about the thing asked        vs  about some other thing
    polite       friendly opener and closer         vs  rude ones
    correct      the fact is right                  vs  another value of the same attribute
    concise      one sentence of substance          vs  rambling filler sentences
    repetitive   says it once                       vs  repeats the answer sentence

Everything is a pure function of a seed, so the world, its facts and its splits are the same on
every machine. The gold annotator in `rlhflab.tiny.gold` scores any text against these facts.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

__all__ = ["COLORS", "ATTRIBUTES", "QUESTIONS", "POLITE_OPENERS", "POLITE_CLOSERS", "RUDE_OPENERS",
           "RUDE_CLOSERS", "AXES", "USER_TAG", "ASSISTANT_TAG", "END_TAG", "Question", "Candidate",
           "TinyWorld", "words"]

# ---------------------------------------------------------------------------------------------
# Vocabulary of the world
# ---------------------------------------------------------------------------------------------

THINGS = [
    # (name, kind); animals have a sound, objects have a use, plants and foods have a taste.
    *[(name, "animal") for name in (
        "cat", "dog", "cow", "owl", "fox", "frog", "bee", "duck", "lion", "bear", "horse", "sheep",
        "whale", "shark", "crow", "mouse", "goat", "wolf", "tiger", "rabbit", "snake", "eagle",
        "otter", "seal", "camel", "zebra", "panda", "moose", "goose", "parrot",
    )],
    *[(name, "object") for name in (
        "hammer", "kettle", "lamp", "pencil", "ladder", "spoon", "broom", "bucket", "candle",
        "clock", "shovel", "needle", "rope", "brush", "drum", "bell", "kite", "wagon", "anchor",
        "mirror", "basket", "saw", "key", "fork", "towel",
    )],
    *[(name, "food") for name in (
        "apple", "banana", "cherry", "lemon", "grape", "plum", "peach", "pear", "mango", "melon",
        "carrot", "onion", "potato", "tomato", "pepper", "bread", "cheese", "honey", "rice", "bean",
    )],
]

COLORS = ["red", "blue", "green", "yellow", "orange", "purple", "brown", "white", "black", "pink",
          "gray", "silver"]
PLACES = ["forest", "desert", "river", "mountain", "meadow", "ocean", "swamp", "cave", "village",
          "island", "valley", "garden", "kitchen", "barn", "market", "castle"]
FOODS = ["grass", "seeds", "fish", "berries", "leaves", "nuts", "insects", "worms", "roots",
         "corn", "clover", "acorns"]
SOUNDS = ["moo", "hoot", "bark", "buzz", "quack", "roar", "hiss", "chirp", "howl", "squeak",
          "croak", "neigh", "bleat", "purr"]
USES = ["cutting", "cleaning", "cooking", "digging", "lifting", "writing", "sewing", "painting",
        "carrying", "fixing", "lighting", "measuring", "tying", "music", "climbing", "signals"]
TASTES = ["sweet", "sour", "bitter", "salty", "spicy", "mild", "tangy", "earthy"]

# attribute -> (values, kinds that have it)
ATTRIBUTES = {
    "color": (COLORS, ("animal", "object", "food")),
    "place": (PLACES, ("animal", "object", "food")),
    "food": (FOODS, ("animal",)),
    "sound": (SOUNDS, ("animal",)),
    "use": (USES, ("object",)),
    "taste": (TASTES, ("food",)),
}

# How a user asks about each attribute ({t} is the thing). Five phrasings per attribute.
QUESTIONS = {
    "color": ["What color is the {t}?", "What is the color of the {t}?", "Tell me the color of the {t}.",
              "Which color does the {t} have?", "Do you know what color the {t} is?"],
    "place": ["Where does the {t} live?", "Where can I find the {t}?", "Tell me where the {t} is found.",
              "In which place is the {t} found?", "Do you know where the {t} lives?"],
    "food": ["What does the {t} eat?", "What food does the {t} like?", "Tell me what the {t} eats.",
             "What is the favorite food of the {t}?", "Do you know what the {t} eats?"],
    "sound": ["What sound does the {t} make?", "What does the {t} say?", "Tell me the sound of the {t}.",
              "Which sound does the {t} make?", "Do you know what sound the {t} makes?"],
    "use": ["What is the {t} used for?", "What do people use the {t} for?", "Tell me what the {t} is for.",
            "Why would I need a {t}?", "Do you know what the {t} is used for?"],
    "taste": ["How does the {t} taste?", "What is the taste of the {t}?", "Tell me how the {t} tastes.",
              "Is the {t} sweet or sour?", "Do you know how the {t} tastes?"],
}
OPENERS = ["", "Hi!", "Hello.", "Hey there.", "Quick question.", "Excuse me.", "Good morning.",
           "I have a question.", "Can you help me?", "I was wondering."]
CLOSERS = ["", "Thanks!", "Thank you.", "Please be brief.", "I am curious.", "It is for school.",
           "My friend asked me."]

# How an answer states a fact ({t} thing, {v} value). Used by demonstrations and candidates.
FACT_SENTENCES = {
    "color": ["The {t} is {v}.", "The color of the {t} is {v}."],
    "place": ["The {t} lives in the {v}.", "You can find the {t} in the {v}."],
    "food": ["The {t} eats {v}.", "The {t} likes to eat {v}."],
    "sound": ["The {t} says {v}.", "The {t} makes the sound {v}."],
    "use": ["The {t} is used for {v}.", "People use the {t} for {v}."],
    "taste": ["The {t} tastes {v}.", "The taste of the {t} is {v}."],
}

POLITE_OPENERS = ["Sure!", "Happy to help.", "Good question!", "Of course.", "Glad you asked."]
POLITE_CLOSERS = ["I hope this helps!", "Have a nice day.", "Thanks for asking.", "Let me know if you need more."]
RUDE_OPENERS = ["Ugh.", "Obviously.", "What a silly question.", "Fine, whatever.", "Seriously?"]
RUDE_CLOSERS = ["Now leave me alone.", "Do not ask again.", "Everyone knows that.", "Stop bothering me."]
RAMBLE_SENTENCES = [
    "I once read a long book about many different things.",
    "Some people say the weather is nice this time of year.",
    "There is so much more that one could say about this.",
    "My cousin also had an opinion about it, but I forget what.",
    "Anyway, that reminds me of a story from a long time ago.",
    "It is funny how the mind wanders when you think about it.",
    "People have talked about this for many years in many places.",
    "By the way, I also like to think about clouds and rivers.",
]

# The five quality axes, each named after its better variant.
AXES = ("on_topic", "polite", "correct", "concise", "unrepeated")

USER_TAG, ASSISTANT_TAG, END_TAG = "<|user|>", "<|assistant|>", "<|end|>"


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Question:
    """One prompt of the world: what is asked, about what, and how it is phrased."""

    thing: str
    attribute: str
    text: str

    @property
    def key(self) -> str:
        """The topic identity used for train / held-out splits (phrasing does not matter)."""
        return f"{self.thing}:{self.attribute}"


@dataclass(frozen=True)
class Candidate:
    """A response to a question, with the quality axes it was built with (True = better variant)."""

    question: Question
    text: str
    axes: dict = field(default_factory=dict, hash=False)


# ---------------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------------

class TinyWorld:
    """The seeded world: facts, prompts, demonstrations, candidates and a pretraining corpus.

    Args:
        seed: fixes the facts and every sample drawn from the world.
        heldout_share: share of (thing, attribute) topics kept out of training splits.

    Examples:
        >>> world = TinyWorld(seed=0)
        >>> q = world.questions("train", 1, seed=1)[0]
        >>> world.true_value(q.thing, q.attribute) in world.demonstration(q, seed=1)
        True
    """

    def __init__(self, seed: int = 0, heldout_share: float = 0.15):
        self.seed = seed
        self.heldout_share = heldout_share
        rng = random.Random(seed)
        self.kinds = dict(THINGS)
        self.facts: dict[tuple[str, str], str] = {}
        for thing, kind in THINGS:
            for attribute, (values, kinds) in ATTRIBUTES.items():
                if kind in kinds:
                    self.facts[(thing, attribute)] = rng.choice(values)
        self.topics = sorted(self.facts)

    # -- facts and splits ---------------------------------------------------------------------

    def true_value(self, thing: str, attribute: str) -> str:
        return self.facts[(thing, attribute)]

    def split_of(self, thing: str, attribute: str) -> str:
        """'heldout' for a fixed share of topics, 'train' for the rest (stable hash, not RNG)."""
        digest = hashlib.sha256(f"{self.seed}:{thing}:{attribute}".encode()).digest()
        return "heldout" if digest[0] / 256 < self.heldout_share else "train"

    def template_count(self) -> int:
        """Distinct prompt templates: phrasing x opener x closer over all attributes."""
        return sum(len(q) for q in QUESTIONS.values()) * len(OPENERS) * len(CLOSERS)

    # -- prompts ------------------------------------------------------------------------------

    def question(self, thing: str, attribute: str, rng: random.Random) -> Question:
        phrasing = rng.choice(QUESTIONS[attribute]).format(t=thing)
        parts = [rng.choice(OPENERS), phrasing, rng.choice(CLOSERS)]
        return Question(thing, attribute, " ".join(p for p in parts if p))

    def questions(self, split: str, n: int, seed: int = 0) -> list[Question]:
        """`n` prompts whose topics lie in `split` ('train', 'heldout' or 'all')."""
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
        topics = [t for t in self.topics if split == "all" or self.split_of(*t) == split]
        rng = random.Random(f"questions:{self.seed}:{split}:{seed}")
        return [self.question(*rng.choice(topics), rng) for _ in range(n)]

    # -- responses ----------------------------------------------------------------------------

    def respond(self, q: Question, rng: random.Random, **axes: bool) -> Candidate:
        """Build a response with the given axes (missing axes take the better variant)."""
        unknown = set(axes) - set(AXES)
        if unknown:
            raise ValueError(f"unknown axes {sorted(unknown)}; the axes are {list(AXES)}")
        ax = {a: axes.get(a, True) for a in AXES}
        if ax["on_topic"]:
            thing, attribute = q.thing, q.attribute
        else:  # another thing, and where possible another attribute, so nothing true leaks in
            thing, attribute = rng.choice([t for t in self.topics if t[0] != q.thing and t[1] != q.attribute])
        value = self.facts[(thing, attribute)]
        if not ax["correct"]:
            value = rng.choice([v for v in ATTRIBUTES[attribute][0] if v != value])
        fact = rng.choice(FACT_SENTENCES[attribute]).format(t=thing, v=value)
        body = [fact] * (1 if ax["unrepeated"] else rng.randint(2, 3))
        if not ax["concise"]:
            body += rng.sample(RAMBLE_SENTENCES, rng.randint(2, 3))
        if ax["polite"]:
            sentences = [rng.choice(POLITE_OPENERS), *body, rng.choice(POLITE_CLOSERS)]
        else:
            sentences = [rng.choice(RUDE_OPENERS), *body, rng.choice(RUDE_CLOSERS)]
        return Candidate(q, " ".join(sentences), ax)

    def demonstration(self, q: Question, seed: int = 0) -> str:
        """A good answer: on topic, polite, correct, concise, said once."""
        return self.respond(q, random.Random(f"demo:{seed}:{q.text}")).text

    def demonstrations(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """`n` prompt / response records of good answers, ready for `rlhflab.trainers.sft.train_sft`."""
        return [{"prompt": q.text, "response": self.demonstration(q, seed)} for q in self.questions(split, n, seed)]

    def random_candidate(self, q: Question, rng: random.Random, p_better: float = 0.5) -> Candidate:
        """A response whose every axis independently takes the better variant with `p_better`."""
        return self.respond(q, rng, **{a: rng.random() < p_better for a in AXES})

    def candidates(self, q: Question, k: int, seed: int = 0, p_better: float = 0.5) -> list[Candidate]:
        rng = random.Random(f"candidates:{seed}:{q.text}")
        return [self.random_candidate(q, rng, p_better) for _ in range(k)]

    def candidate_pairs(self, split: str, n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
        """`n` prompts with two random candidates each: (prompts, responses_a, responses_b)."""
        prompts, first, second = [], [], []
        for q in self.questions(split, n, seed):
            a, b = self.candidates(q, 2, seed)
            prompts.append(q.text)
            first.append(a.text)
            second.append(b.text)
        return prompts, first, second

    # -- pretraining corpus ---------------------------------------------------------------------

    def fact_document(self, rng: random.Random) -> str:
        """A short encyclopedia-style paragraph stating true facts about one thing."""
        thing = rng.choice(list(self.kinds))
        attrs = [a for (t, a) in self.topics if t == thing]
        rng.shuffle(attrs)
        sentences = [rng.choice(FACT_SENTENCES[a]).format(t=thing, v=self.facts[(thing, a)]) for a in attrs]
        return " ".join(sentences)

    def pretraining_corpus(self, n_documents: int, seed: int = 0) -> list[str]:
        """Text for the base model: true fact paragraphs, and chat transcripts of mixed quality.

        Chat replies are random candidates (every axis a coin flip), so the base model learns the
        world's language and chat format, and that its facts exist, without learning to answer well.
        """
        rng = random.Random(f"corpus:{self.seed}:{seed}")
        documents = []
        for _ in range(n_documents):
            if rng.random() < 0.4:
                documents.append(self.fact_document(rng))
            else:
                q = self.question(*rng.choice(self.topics), rng)
                reply = self.random_candidate(q, rng).text
                documents.append(f"{USER_TAG}\n{q.text}\n{ASSISTANT_TAG}\n{reply}{END_TAG}")
        return documents

    def vocabulary_words(self) -> set[str]:
        """Every word the world uses; the gold annotator treats others as gibberish."""
        texts = [t for t, _ in THINGS] + COLORS + PLACES + FOODS + SOUNDS + USES + TASTES
        for group in (QUESTIONS.values(), FACT_SENTENCES.values()):
            for phrasings in group:
                texts += phrasings
        texts += OPENERS + CLOSERS + POLITE_OPENERS + POLITE_CLOSERS + RUDE_OPENERS + RUDE_CLOSERS
        texts += RAMBLE_SENTENCES
        return {w for text in texts for w in words(text)}


def words(text: str) -> list[str]:
    """Lower-case words without punctuation; the unit the gold annotator reasons in."""
    cleaned = "".join(c.lower() if c.isalnum() or c in "{}" else " " for c in text)
    return [w for w in cleaned.split() if not w.startswith("{")]
