"""ILQL: each loss against a slow, obvious reference; the data layout; decoding that scores what it samples;
and ILQL from gold-labelled pairs beating SFT on gold."""

import math
import statistics

import pytest
import torch

from rlhflab.lab.stages import evaluate, load, sft_baseline
from rlhflab.labeling.records import Item
from rlhflab.labeling.store import LabelStore
from rlhflab.tiny.task import WorldTask
from rlhflab.trainers.ilql import (
    ILQLConfig,
    ILQLHeads,
    awac_loss,
    collate,
    cql_loss,
    decoding_logits,
    expectile_loss,
    ilql_rows,
    load_ilql,
    polyak_update,
    q_loss,
    standardised,
    tokenized,
    train_ilql,
)
from rlhflab.trainers.models import load_policy

N, V = 7, 5


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return dict(q=[torch.randn(N, V, generator=g) for _ in range(2)], lm=torch.randn(N, V, generator=g),
                actions=torch.randint(0, V, (N,), generator=g), rewards=torch.randn(N, generator=g),
                next_v=torch.randn(N, generator=g), v=torch.randn(N, generator=g), target_q=torch.randn(N, generator=g))


def log_softmax_at(logits, index):
    values = logits.tolist()
    return values[int(index)] - math.log(sum(math.exp(x) for x in values))


def test_q_loss_is_the_td_error_of_both_heads(tensors):
    t, gamma = tensors, 0.9
    taken = [q.gather(1, t["actions"][:, None]).squeeze(1) for q in t["q"]]
    slow = sum(sum((q[n] - (t["rewards"][n] + gamma * t["next_v"][n])) ** 2 for n in range(N)) / N for q in taken)
    assert q_loss(taken, t["rewards"], t["next_v"], gamma).item() == pytest.approx(slow.item(), rel=1e-6)


def test_q_loss_does_not_move_the_value_it_bootstraps_from(tensors):
    next_v = tensors["next_v"].clone().requires_grad_()
    taken = [q[:, 0].clone().requires_grad_() for q in tensors["q"]]
    q_loss(taken, tensors["rewards"], next_v, 0.99).backward()
    assert next_v.grad is None and all(q.grad is not None for q in taken)


def test_expectile_loss_weights_under_and_over_estimates_by_tau(tensors):
    t, tau = tensors, 0.7
    slow = 0.0
    for n in range(N):
        u = (t["target_q"][n] - t["v"][n]).item()
        slow += (tau if u >= 0 else 1 - tau) * u ** 2
    assert expectile_loss(t["target_q"], t["v"], tau).item() == pytest.approx(slow / N, rel=1e-6)
    # tau > 0.5 pulls V above the mean of its targets: the minimiser over a constant V
    targets = torch.tensor([0.0, 1.0])
    values = torch.linspace(0, 1, 1001)
    best = values[torch.stack([expectile_loss(targets, v.expand(2), tau) for v in values]).argmin()]
    assert best.item() == pytest.approx(tau, abs=1e-3)


def test_cql_loss_is_the_cross_entropy_of_each_q_head_against_the_taken_tokens(tensors):
    t = tensors
    slow = sum(-sum(log_softmax_at(q[n], t["actions"][n]) for n in range(N)) / N for q in t["q"])
    assert cql_loss(t["q"], t["actions"]).item() == pytest.approx(slow, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_awac_loss_weights_the_lm_cross_entropy_by_the_exponentiated_advantage(tensors, beta):
    t = tensors
    advantages = t["target_q"] - t["v"]
    slow = -sum(log_softmax_at(t["lm"][n], t["actions"][n]) * math.exp(beta * advantages[n].item())
                for n in range(N)) / N
    lm = t["lm"].clone().requires_grad_()
    advantages = advantages.clone().requires_grad_()
    loss = awac_loss(lm, t["actions"], advantages, beta)
    assert loss.item() == pytest.approx(slow, rel=1e-6)
    loss.backward()
    assert advantages.grad is None and lm.grad is not None  # the weight is a constant of the LM's loss


def test_decoding_adds_beta_times_the_advantage_and_keeps_the_top_k(tensors):
    t, beta, k = tensors, 2.0, 3
    v = t["v"][:, None]
    got = decoding_logits(t["lm"], t["q"][0], v, beta, k)
    for n in range(N):
        scores = [log_softmax_at(t["lm"][n], a) + beta * (t["q"][0][n, a] - v[n, 0]).item() for a in range(V)]
        kept = sorted(range(V), key=lambda a: -scores[a])[:k]
        for a in range(V):
            expected = scores[a] if a in kept else float("-inf")
            assert got[n, a].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(decoding_logits(t["lm"], t["q"][0], v, 0.0, 0), torch.log_softmax(t["lm"], -1))
    # a scored token keeps a finite log-prob whatever its rank (scoring appends EOS to cut-off replies)
    worst = got.argmin(-1)
    scored = decoding_logits(t["lm"], t["q"][0], v, beta, k, scored=worst)
    assert torch.isfinite(scored.gather(-1, worst[:, None])).all() and (torch.isfinite(scored).sum(-1) == k + 1).all()


def test_polyak_moves_the_targets_a_share_of_the_way():
    heads = ILQLHeads(4, 6)
    with torch.no_grad():
        for p in heads.q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in heads.target_q.parameters()]
    polyak_update(heads.target_q, heads.q, 0.1)
    for old, new, online in zip(before, heads.target_q.parameters(), heads.q.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * online)
    assert not any(p.requires_grad for p in heads.target_q.parameters())


def test_actions_are_the_response_tokens_and_the_reward_sits_on_the_last():
    policy = load_policy("tiny")
    rows = [{"prompt": "What color is the fox?", "response": "The fox is red.", "reward": 1.0},
            {"prompt": "Where does the owl live?", "response": "Go away.", "reward": -1.0}]
    examples = tokenized(policy.tokenizer, rows, max_length=256)
    batch = collate(examples, policy.tokenizer.pad_token_id)
    for row, (_, data) in enumerate(zip(examples, rows)):
        taken = batch["input_ids"][row, 1:][batch["actions"][row]].tolist()
        response = policy.tokenizer(data["response"], add_special_tokens=False)["input_ids"]
        assert taken == response + [policy.tokenizer.eos_token_id]  # the response, then EOS: nothing of the prompt
        assert batch["terminal"][row].sum() == 1 and batch["rewards"][row].sum() == data["reward"]
        last = batch["actions"][row].nonzero().max()
        assert batch["terminal"][row, last] == 1 and batch["rewards"][row, last] == data["reward"]


def test_rows_from_pairs_ratings_columns_and_callables_and_errors_that_name_the_reward(tmp_path):
    pairs = ilql_rows([{"prompt": "p", "chosen": "good", "rejected": "bad"},
                       {"prompt": "q", "chosen": "ok", "rejected": ""}])  # HH-RLHF holds a few empty replies
    assert [(r["response"], r["reward"]) for r in pairs] == [("good", 1.0), ("bad", -1.0), ("ok", 1.0), ("", -1.0)]
    rated = ilql_rows([{"prompt": "p", "answer": "a", "score": 0.5}], columns={"response": "answer", "reward": "score"})
    assert rated == [{"prompt": "p", "response": "a", "reward": 0.5}]
    called = ilql_rows([{"prompt": "p", "response": "abc"}], reward=lambda ps, rs: [len(r) for r in rs])
    assert called[0]["reward"] == 3.0

    def broken_length(prompts, responses):
        return [float("nan")] * len(responses)

    with pytest.raises(ValueError, match="broken_length"):
        ilql_rows([{"prompt": "p", "response": "abc"}], reward=broken_length)
    with pytest.raises(ValueError, match="reward"):
        ilql_rows([{"prompt": "p", "response": "abc"}])
    store = LabelStore(tmp_path / "labels.db")
    [pair, single] = store.add_items([Item("q", ("good", "bad")), Item("q2", ("fine",))])
    store.record(pair.item_id, "ada", choice="a", strength="much")
    store.record(single.item_id, "ada", choice="down")
    assert sorted((r["response"], r["reward"]) for r in ilql_rows(store)) == [("bad", -1.0), ("fine", -1.0),
                                                                               ("good", 1.0)]
    assert standardised([1.0, -1.0]) == pytest.approx([0.7071, -0.7071], abs=1e-4)


def test_ilql_from_gold_pairs_beats_sft_on_gold_and_scores_what_it_samples(recipe, world, gold, tmp_path):
    """ILQL on 300 gold-labelled pairs of SFT samples (80 steps), then decoding with its heads: the gold mean on
    held-out prompts rises over SFT's, and every sampled response has a finite log-prob under the
    distribution it was drawn from (the top-k mask of sampling and scoring agree)."""
    from rlhflab.tiny.annotate import gold_comparisons

    config, sft_dir, _, _ = recipe
    baseline = sft_baseline(WorldTask(world, gold), config, sft_dir)
    rows = gold_comparisons(world, gold, baseline.policy, "train", 0, 300, seed=5)
    result = train_ilql(load(config, sft_dir, trainable=True), rows,
                        ILQLConfig(output_dir=str(tmp_path / "ilql"), steps=80, logging_steps=20))
    assert result.history[-1]["loss/cql"] < result.history[0]["loss/cql"]
    policy = load(config, result.output_dir)  # stages.load sees the heads and decodes with them
    assert policy.name.startswith("ILQL")
    metrics, _ = evaluate(policy, baseline, WorldTask(world, gold), config)
    assert metrics["gold/mean"] > statistics.fmean(baseline.gold_scores) + 0.2, metrics
    assert math.isfinite(metrics["kl/to_sft"]) and metrics["kl/to_sft"] > 0
    without_heads = load_ilql(config.base, result.output_dir, beta=0.0, top_k=0)
    responses = baseline.responses[:8]
    assert torch.allclose(without_heads.response_logprobs(baseline.prompts[:8], responses),
                          load(config, result.output_dir, trainable=True).response_logprobs(baseline.prompts[:8],
                                                                                            responses), atol=1e-4)


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_ilql_on_lora_or_qlora_saves_adapter_and_heads_that_reload_and_decode(tmp_path, quantization):
    rows = [{"prompt": "What color is the fox?", "response": "The fox is red.", "reward": 1.0},
            {"prompt": "What color is the fox?", "response": "Go away.", "reward": -1.0}] * 4
    policy = load_policy("tiny", lora=True, quantization=quantization)
    result = train_ilql(policy, rows, ILQLConfig(output_dir=str(tmp_path), steps=3, batch_size=4, logging_steps=1))
    assert [h["step"] for h in result.history] == [1, 2, 3]
    assert all(math.isfinite(h["loss/total"]) for h in result.history)
    assert {"adapter_model.safetensors", "ilql_heads.safetensors", "ilql.json"} <= {p.name for p in tmp_path.iterdir()}
    reloaded = load_ilql("tiny", tmp_path, quantization=quantization)
    [reply] = reloaded.generate(["What color is the fox?"], max_new_tokens=8, seed=0)
    assert isinstance(reply, str)
    with pytest.raises(ValueError, match="lora=True"):
        train_ilql(load_policy("tiny"), rows, ILQLConfig(output_dir=str(tmp_path / "full")))


def test_heads_and_their_polyak_targets_train_in_fp32_on_a_bf16_device(tmp_path, monkeypatch,
                                                                       bf16_autocast_on_the_cpu):
    """Issue 29, defect 8: on a bf16 GPU the heads and their targets were bf16 weights, and a Polyak step
    (0.05 of a small difference) below half a bf16 ulp was lost. The CPU under bf16 autocast shows the
    rule: the heads keep fp32 weights wherever the forward pass computes, and the targets move every step."""
    import rlhflab.trainers.ilql as ilql
    from safetensors.torch import load_file

    moved = []
    polyak = ilql.polyak_update

    def watched(targets, online, rate):
        before = [t.detach().clone() for t in targets.parameters()]
        polyak(targets, online, rate)
        moved.append(sum((t - b).abs().sum().item() for t, b in zip(targets.parameters(), before)))
        assert all(t.dtype == torch.float32 for t in targets.parameters())

    monkeypatch.setattr(ilql, "polyak_update", watched)
    rows = [{"prompt": "What color is the fox?", "response": "The fox is red.", "reward": 1.0},
            {"prompt": "What color is the fox?", "response": "Go away.", "reward": -1.0}] * 4
    train_ilql(load_policy("tiny", lora=True), rows, ILQLConfig(output_dir=str(tmp_path), steps=2, batch_size=4,
                                                                 polyak=1e-4))
    assert len(moved) == 2 and all(m > 0 for m in moved)
    assert {w.dtype for w in load_file(tmp_path / "ilql_heads.safetensors").values()} == {torch.float32}
