"""DPPO: the denoising chain of a diffusion policy as a second MDP layer for PPO
(Ren et al. 2024, "Diffusion Policy Policy Optimization", arXiv 2409.00588, Sec. 4).

Each fine-tuned denoising step ``x_k -> x_{k-1}`` is a Gaussian decision
``N(mu_theta(x_k, k, s), sigma_k^2)``, so a sampled chain has the exact log-likelihood
``sum_k log N(x_{k-1}; mu, sigma_k^2)``. PPO then treats every fine-tuned step as its own
action with its own probability ratio and the environment step's advantage (Eq. 4.3),
discounted by ``gamma_denoise^(k)`` towards the noisier steps (Sec. 4.2).

Only the last ``K'`` (``ft_steps``) of the ``K`` denoising steps are fine-tuned, by a
trainable copy of the noise predictor; the earlier steps keep the frozen pretrained one
(Sec. 5.2). The copy includes the observation encoder of pixel policies, as the reference's
``actor_ft`` is a deep copy of the whole actor, vision backbone included
(``model/diffusion/diffusion_vpg.py``); the frozen steps read the frozen encoder.
Defaults follow the paper's Gym and Robomimic configs (App. D): ``K' = 10`` of ``K = 20``;
while exploring, every denoising step's std (the frozen steps' too) is floored at
``min_sampling_std`` 0.1 (0.04 in the Furniture-Bench configs), evaluation keeps the DDPM
posterior std and drops the last step's noise; a minimum std 0.1 in the log-probabilities for
stability, sampled noise clipped to 3 std,
``gamma_denoise = 0.99``, and a clip range growing exponentially over the denoising steps
from ``clip_coef_base`` (noisiest fine-tuned step) to ``clip_coef`` (the final step) with rate 3.
As in the reference implementation, the per-step ratio uses the log-probability averaged over
the chunk's action dimensions (the clip ranges are tuned for that scale), clamped to ``[-5, 2]``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.distributions import Normal

from rlft.policies.base import Exploration
from rlft.policies.diffusion import DiffusionPolicy, draw


class DPPOPolicy(nn.Module):
    """A pretrained :class:`DiffusionPolicy` whose last ``ft_steps`` denoising steps PPO fine-tunes."""

    def __init__(
        self,
        base: DiffusionPolicy,
        ft_steps: int = 10,
        min_sampling_std: float = 0.1,
        min_logprob_std: float = 0.1,
        noise_clip: float = 3.0,
        gamma_denoise: float = 0.99,
        clip_coef: float = 0.01,
        clip_coef_base: float = 0.001,
        clip_coef_rate: float = 3.0,
        log_prob_bounds: tuple[float, float] = (-5.0, 2.0),
    ):
        super().__init__()
        if not 1 <= ft_steps <= base.denoising_steps:
            raise ValueError(f"ft_steps must be in [1, {base.denoising_steps}], got {ft_steps}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.ft_network = copy.deepcopy(base.network)
        self.ft_encoder = copy.deepcopy(base.encoder)  # None for state observations
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        self.ft_steps = ft_steps
        self.min_sampling_std, self.min_logprob_std, self.noise_clip = min_sampling_std, min_logprob_std, noise_clip
        self.gamma_denoise = gamma_denoise
        self.clip_coef, self.clip_coef_base, self.clip_coef_rate = clip_coef, clip_coef_base, clip_coef_rate
        self.log_prob_bounds = log_prob_bounds

    @property
    def spec(self):
        return self.base.spec

    def _ft_condition(self, obs: torch.Tensor) -> torch.Tensor:
        """The fine-tuned steps' condition: observations through the fine-tuned encoder copy."""
        return obs if self.ft_encoder is None else self.ft_encoder(obs)

    @torch.no_grad()
    def sample_chain(
        self, obs: torch.Tensor, deterministic: bool = False, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(chunk [B, chunk_dim], chain [B, ft_steps + 1, chunk_dim], log_probs [B, ft_steps, chunk_dim])``.

        The chain holds ``x_{K'}`` (input of the first fine-tuned step) and every fine-tuned step's
        output, ending with the chunk; ``log_probs`` are those of :meth:`step_log_probs`, taken from
        the means computed while sampling. Exploring (``deterministic=False``) floors every step's
        std at ``min_sampling_std``; ``deterministic`` follows :meth:`DiffusionPolicy.sample`, and so
        does ``noise`` (an explicit ``[B, K + 1, chunk_dim]`` in place of torch's RNG).
        """
        B, dim = obs.shape[0], self.spec.chunk_dim  # shape, not len(): a symbolic batch stays one when exported
        frozen_cond, ft_cond = self.base.encode(obs), self._ft_condition(obs)
        x = draw(noise, 0, (B, dim), obs.device)
        chain, means, stds = [], [], []
        for i, k in enumerate(reversed(range(self.base.denoising_steps))):
            if k == self.ft_steps - 1:
                chain.append(x)
            kk = torch.full((B,), k, device=obs.device, dtype=torch.long)
            fine_tuned = k < self.ft_steps
            mean, logvar = self.base.reverse_step(x, kk, ft_cond if fine_tuned else frozen_cond,
                                                  self.ft_network if fine_tuned else self.base.network)
            std = (0.5 * logvar).exp()
            if fine_tuned:
                means.append(mean)
                stds.append(std.clamp(min=self.min_logprob_std))
            if deterministic:
                std = torch.zeros_like(std) if k == 0 else std
            else:
                std = std.clamp(min=self.min_sampling_std)
            x = mean + std * draw(noise, i + 1, x.shape, obs.device).clamp(-self.noise_clip, self.noise_clip)
            if fine_tuned:
                chain.append(x)
        chunk = x.clamp(-1.0, 1.0)
        chain[-1] = chunk
        chain_t = torch.stack(chain, dim=1)
        steps = Normal(torch.stack(means, dim=1), torch.stack(stds, dim=1), validate_args=False)
        log_probs = steps.log_prob(chain_t[:, 1:])
        return chunk, chain_t, log_probs

    def step_log_probs(self, obs: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Element-wise ``log N(x_{k-1}; mu_theta(x_k, k, s), sigma_k^2)`` of every fine-tuned step:
        ``[B, ft_steps, chunk_dim]``, steps in sampling order (noisiest first)."""
        B, K1, dim = chain.shape
        if K1 != self.ft_steps + 1:
            raise ValueError(f"chain has {K1} states, expected ft_steps + 1 = {self.ft_steps + 1}")
        ks = torch.arange(self.ft_steps - 1, -1, -1, device=chain.device).repeat(B)
        x_prev = chain[:, :-1].reshape(-1, dim)
        cond = self._ft_condition(obs).repeat_interleave(self.ft_steps, dim=0)
        mean, logvar = self.base.reverse_step(x_prev, ks, cond, self.ft_network)
        std = (0.5 * logvar).exp().clamp(min=self.min_logprob_std)
        step = Normal(mean, std, validate_args=False)
        return step.log_prob(chain[:, 1:].reshape(-1, dim)).reshape(B, self.ft_steps, dim)

    def chain_log_prob(self, obs: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Exact log-likelihood of the fine-tuned part of a chain, ``[B]``."""
        return self.step_log_probs(obs, chain).sum(dim=(1, 2))

    def _ratio_log_probs(self, step_log_probs: torch.Tensor) -> torch.Tensor:
        """Per-step log-probability for PPO's ratio: clamped, averaged over the executed actions."""
        executed = self.spec.act_steps * self.spec.action_dim  # only executed actions carry the reward
        return step_log_probs[..., :executed].clamp(*self.log_prob_bounds).mean(-1)

    # ---- Policy / PPOActor
    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.base.executed(self.sample_chain(obs, deterministic)[0])

    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> Exploration:
        chunk, chain, log_probs = self.sample_chain(obs, deterministic=False)
        return Exploration(self.base.executed(chunk), {"chain": chain}, self._ratio_log_probs(log_probs))

    def evaluate(self, obs: torch.Tensor, stored: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        """Log-probabilities of stored chains, recomputed in one batched pass (the DDPM noise is fixed:
        no entropy term)."""
        return self._ratio_log_probs(self.step_log_probs(obs, stored["chain"])), None

    def clip_coefficients(self) -> torch.Tensor:
        """Per fine-tuned step (noisiest first): ``base + (clip - base) (e^{r t} - 1) / (e^r - 1)``,
        ``t`` from 0 to 1. With one fine-tuned step there is nothing to interpolate: ``clip_coef``."""
        if self.ft_steps == 1:
            return torch.tensor([self.clip_coef])
        t = torch.linspace(0.0, 1.0, self.ft_steps)
        growth = (torch.exp(self.clip_coef_rate * t) - 1) / (math.exp(self.clip_coef_rate) - 1)
        return self.clip_coef_base + (self.clip_coef - self.clip_coef_base) * growth

    def advantage_weights(self) -> torch.Tensor:
        """``gamma_denoise^(K'-1-i)`` for fine-tuned step ``i`` (noisiest first): the final step gets 1."""
        return self.gamma_denoise ** torch.arange(self.ft_steps - 1, -1, -1, dtype=torch.float32)

    def trainable_parameters(self) -> list[nn.Parameter]:
        encoder = list(self.ft_encoder.parameters()) if self.ft_encoder is not None else []
        return list(self.ft_network.parameters()) + encoder
