"""The tiny world and its gold annotator: deterministic, varied, and scoring as documented."""

import random

import pytest

from rlhflab.tiny import AXES, GoldAnnotator, TinyWorld
from rlhflab.tiny.gold import EMPTY_SCORE


def test_world_is_a_pure_function_of_its_seed(world):
    again = TinyWorld(seed=0)
    assert again.facts == world.facts
    assert again.questions("train", 20, seed=5) == world.questions("train", 20, seed=5)
    assert TinyWorld(seed=1).facts != world.facts


def test_world_has_hundreds_of_templates_and_held_out_topics(world):
    assert world.template_count() >= 500
    assert len(world.topics) >= 200
    heldout = {q.key for q in world.questions("heldout", 300)}
    train = {q.key for q in world.questions("train", 3000)}
    assert len(heldout) >= 20
    assert not heldout & train
    assert len({q.text for q in world.questions("train", 1000)}) > 900  # phrasings vary, not just topics


def test_demonstrations_are_top_scored(world, gold):
    for record in world.demonstrations("heldout", 50):
        assert gold.score(record["prompt"], record["response"]) == 4.0


@pytest.mark.parametrize("axis", AXES)
def test_better_variant_of_each_axis_wins(world, gold, axis):
    """Flip one axis, keep the others at a random draw: the better variant must win every time.

    Topic and fact interact by design (a fact counts only on topic), so each holds the other right.
    """
    rng = random.Random(axis)
    partner = {"on_topic": "correct", "correct": "on_topic"}.get(axis)
    for q in world.questions("all", 200, seed=7):
        others = {a: a == partner or rng.random() < 0.5 for a in AXES if a != axis}
        seed = rng.random()
        better = world.respond(q, random.Random(seed), **others, **{axis: True})
        worse = world.respond(q, random.Random(seed), **others, **{axis: False})
        assert gold.score(q.text, better.text) > gold.score(q.text, worse.text), (axis, better.text, worse.text)
        verdict = gold.compare(q.text, better.text, worse.text)
        assert verdict.choice in ("a", "both_bad"), (axis, verdict)


def test_noise_flips_the_given_share(world):
    noisy = GoldAnnotator(world, noise=0.25, seed=3)
    flips = decided = 0
    for q in world.questions("train", 2000, seed=2):
        good = world.respond(q, random.Random(1))
        bad = world.respond(q, random.Random(1), correct=False)
        verdict = noisy.compare(q.text, good.text, bad.text)
        decided += verdict.choice in ("a", "b")
        flips += verdict.choice == "b"
    assert decided == 2000
    assert 0.22 < flips / decided < 0.28


def test_ties_strength_and_both_bad(world, gold):
    q = world.questions("train", 1)[0]
    good = world.respond(q, random.Random(0)).text
    assert gold.compare(q.text, good, good).choice == "tie"
    awful = world.respond(q, random.Random(0), **{a: False for a in AXES}).text
    assert gold.compare(q.text, awful, awful).choice == "both_bad"
    verdict = gold.compare(q.text, good, awful)
    assert (verdict.choice, verdict.strength) == ("a", "much")


def test_gibberish_and_empty_score_low(world, gold):
    q = world.questions("train", 1)[0]
    good = world.demonstration(q)
    assert gold.score(q.text, "zorp " * 5 + good) < gold.score(q.text, good)
    assert gold.score(q.text, "   ") == EMPTY_SCORE


def test_unknown_prompt_names_the_fix(gold):
    with pytest.raises(ValueError, match="TinyWorld.questions"):
        gold.score("What is the capital of France?", "Paris.")


def test_bad_settings_are_refused(world):
    with pytest.raises(ValueError, match="noise"):
        GoldAnnotator(world, noise=0.9)
    with pytest.raises(ValueError, match="unknown axes"):
        world.respond(world.questions("train", 1)[0], random.Random(0), funny=True)
