"""PPO's pure pieces against slow, obvious references."""

import math
import random

import pytest
import torch

from rlhflab.trainers.ppo import PPOConfig
from rlhflab.trainers.ppo_math import (AdaptiveKLController, compute_gae, kl_per_token, masked_mean, masked_whiten,
                                       truncate_after_eos)


def slow_gae(rewards, values, lengths, gamma, lam):
    """Per response, plain Python: delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum (gamma lam)^k delta_{t+k}."""
    advantages = [[0.0] * len(r) for r in rewards]
    for b, n in enumerate(lengths):
        for t in range(n):
            total = 0.0
            for k in range(t, n):
                next_value = values[b][k + 1] if k + 1 < n else 0.0
                delta = rewards[b][k] + gamma * next_value - values[b][k]
                total += (gamma * lam) ** (k - t) * delta
            advantages[b][t] = total
    return advantages


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.5)])
def test_gae_matches_slow_reference(gamma, lam):
    rng = random.Random(0)
    B, T = 5, 9
    lengths = [rng.randint(1, T) for _ in range(B)]
    rewards = [[rng.gauss(0, 1) for _ in range(T)] for _ in range(B)]
    values = [[rng.gauss(0, 1) for _ in range(T)] for _ in range(B)]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])
    advantages, returns = compute_gae(torch.tensor(rewards), torch.tensor(values), mask, gamma, lam)
    expected = torch.tensor(slow_gae(rewards, values, lengths, gamma, lam))
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert torch.allclose(returns, (expected + torch.tensor(values)) * mask, atol=1e-5)


def test_masked_whiten_matches_slow_reference():
    rng = random.Random(1)
    values = torch.tensor([[rng.gauss(3, 2) for _ in range(6)] for _ in range(4)])
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in (6, 3, 1, 4)])
    kept = [v for v, m in zip(values.flatten().tolist(), mask.flatten().tolist()) if m]
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))
    expected = torch.tensor([[(v - mean) / std if m else 0.0 for v, m in zip(rv, rm)]
                             for rv, rm in zip(values.tolist(), mask.tolist())])
    assert torch.allclose(masked_whiten(values, mask), expected, atol=1e-4)
    unshifted = masked_whiten(values, mask, shift_mean=False)
    assert torch.allclose(masked_mean(unshifted, mask), torch.tensor(mean), atol=1e-4)


def test_adaptive_controller_moves_toward_target():
    above = AdaptiveKLController(0.1, target=2.0, horizon=100)
    above.update(kl=6.0, n_responses=10)
    assert above.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    below = AdaptiveKLController(0.1, target=2.0, horizon=100)
    below.update(kl=1.8, n_responses=10)
    assert below.value == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    steady = AdaptiveKLController(0.1, target=2.0, horizon=100)
    for _ in range(200):  # a KL stuck above target keeps raising beta
        steady.update(kl=4.0, n_responses=16)
    assert steady.value > 1.0


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -1.5])
    assert torch.equal(kl_per_token(logp, ref, "k1"), logp - ref)
    k3 = kl_per_token(logp, ref, "k3")
    r = torch.exp(ref - logp)
    assert torch.allclose(k3, (r - 1) - torch.log(r))
    assert (k3 >= 0).all() and k3[0] == 0


def test_truncate_after_eos():
    eos, pad = 9, 0
    responses = torch.tensor([[5, 6, 9, 7, 8], [5, 6, 7, 8, 4], [9, 1, 9, 1, 1]])
    truncated, mask, has_eos = truncate_after_eos(responses, eos, pad)
    assert truncated.tolist() == [[5, 6, 9, 0, 0], [5, 6, 7, 8, 4], [9, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        PPOConfig(batch_size=10, mini_batch_size=4)
    with pytest.raises(ValueError, match="'k1' or 'k3'"):
        PPOConfig(kl_estimator="k2")
    assert PPOConfig(batch_size=16, mini_batch_size=4).minibatches == 4


def test_ppo_and_the_loop_share_one_set_of_defaults():
    """Issue 29: `train_ppo(...)` as a user calls it ran at 5e-4 and beta 0.05, five times the rate and a
    quarter of the penalty of every notebook's RLHFConfig, and had never been measured. One set now."""
    from rlhflab.lab.stages import RLHFConfig

    ppo, loop = PPOConfig(), RLHFConfig()
    assert (loop.ppo_learning_rate, loop.kl_coef, loop.target_kl) == (ppo.learning_rate, ppo.kl_coef, ppo.target_kl)
    assert (ppo.learning_rate, ppo.kl_coef) == (1e-4, 0.2)  # benchmarks/ppo_details.py --study defaults
