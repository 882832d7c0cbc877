"""PPO's tensor maths, pure functions of tensors (tests/test_ppo_math.py checks each against a slow reference).

    masked_mean, masked_var, masked_whiten   statistics over the real tokens of padded responses
    compute_gae          advantages and returns by generalised advantage estimation, nothing after a response
    kl_per_token         the k1 or k3 estimate of KL(policy || reference) on the sampled tokens
    AdaptiveKLController Ziegler et al. 2019's proportional controller of the KL coefficient
    truncate_after_eos   responses cut after their first EOS, with their mask
    entropy_of           the policy's entropy per position, a few rows at a time
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["masked_mean", "masked_var", "masked_whiten", "compute_gae", "kl_per_token", "AdaptiveKLController",
           "truncate_after_eos", "entropy_of"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    return ((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over masked entries; with shift_mean=False the mean is added back."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over (B, T) masked responses.

    Masked (post-EOS) positions have no value and no reward, so each response ends at its EOS.
    Returns (advantages, returns), both (B, T).
    """
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, advantages + values


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Estimates of KL(policy || reference) per sampled token (Schulman 2020, "Approximating KL")."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio  # k3 = (r - 1) - log r with r = p_ref / p


@dataclass
class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)  (Ziegler et al. 2019)."""

    value: float
    target: float
    horizon: int

    def update(self, kl: float, n_responses: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_responses / self.horizon


def truncate_after_eos(responses: torch.Tensor, eos_id: int,
                       pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad everything after the first EOS. Returns (responses, mask incl. the EOS, has_eos)."""
    is_eos = responses == eos_id
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1),
                        torch.full_like(has_eos, responses.shape[1], dtype=torch.long))
    positions = torch.arange(responses.shape[1], device=responses.device)
    mask = positions[None, :] <= first[:, None]  # (B, T)
    return torch.where(mask, responses, pad_id), mask.float(), has_eos


@torch.no_grad()
def entropy_of(logits: torch.Tensor, temperature: float, chunk: int = 4) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position, a few rows at a time: (B, R). Tokens masked to
    -inf (NLPO) have probability 0 and add nothing."""
    rows = []
    for row_logits in logits.split(chunk):
        logp = F.log_softmax(row_logits.float() / temperature, dim=-1)
        rows.append(-torch.where(torch.isinf(logp), 0.0, logp.exp() * logp).sum(-1))
    return torch.cat(rows)
