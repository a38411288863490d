"""TD3 (Fujimoto et al. 2018, arXiv 1802.09477, Alg. 1), the base of SPOT and TD3-style learners.

Clipped double-Q targets with target-policy smoothing, delayed actor and target updates.
Subclasses change the actor objective (:meth:`TD3.actor_loss`) and may add pretraining
phases (:attr:`TD3.pretrain_phases`) and an online switch (:meth:`TD3.start_online`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from rlft.agents.optim import adam
from rlft.agents.base import AgentConfig, Metrics, OffPolicyAgent, UpdateFn, ensemble_td_loss, soft_update
from rlft.agents.replay_buffer import Batch
from rlft.policies.ensemble import CriticEnsemble
from rlft.policies.mlp import DeterministicActor

Q1 = torch.tensor([0])  # the actor loss reads Q_1 alone (Fujimoto et al. 2018, Alg. 1): the other member is not run

__all__ = ["TD3", "TD3Config", "UpdateFn"]


@dataclass
class TD3Config(AgentConfig):
    """TD3 hyperparameters (defaults: the TD3 paper, Table 3; actions live in [-1, 1])."""

    policy_noise: float = 0.2  # std of target-policy smoothing noise
    noise_clip: float = 0.5  # smoothing noise is clipped to +-noise_clip
    policy_freq: int = 2  # actor and target updates every policy_freq critic updates
    actor_dropout: float = 0.0
    expl_noise: float = 0.1  # std of Gaussian exploration noise online


class TD3(OffPolicyAgent):
    """Twin-critic deterministic actor-critic."""

    cfg: TD3Config

    def __init__(self, obs_dim: int, action_dim: int, cfg: TD3Config, device: str | torch.device = "cpu"):
        super().__init__(obs_dim, action_dim, cfg, device)
        self.actor = DeterministicActor(obs_dim, action_dim, cfg.hidden, dropout=cfg.actor_dropout).to(self.device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic = CriticEnsemble(obs_dim, action_dim, cfg.num_critics, cfg.hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic)
        for net in (self.actor_target, self.critic_target):
            net.requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_lr)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        action = self.actor.act(obs)
        if deterministic:
            return action
        return (action + self.cfg.expl_noise * torch.randn_like(action)).clamp(-1.0, 1.0)

    def critic_target_values(self, batch: Batch) -> torch.Tensor:
        """``r + gamma * (1 - d) * min_i Q'_i(s', clip(pi'(s') + eps))``."""
        with torch.no_grad():
            noise = (torch.randn_like(batch.actions) * self.cfg.policy_noise).clamp(
                -self.cfg.noise_clip, self.cfg.noise_clip
            )
            next_actions = (self.actor_target(batch.next_observations) + noise).clamp(-1.0, 1.0)
            next_q = self.critic_target(batch.next_observations, next_actions).min(0).values
            return batch.rewards.squeeze(-1) + self.cfg.discount * (1.0 - batch.dones.squeeze(-1)) * next_q

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        q = self.critic(batch.observations, batch.actions)
        return ensemble_td_loss(q, self.critic_target_values(batch)), {"q_data": q.mean().detach()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """TD3's deterministic policy gradient objective ``-Q_1(s, pi(s))``."""
        q = self.critic(batch.observations, self.actor(batch.observations), Q1)[0]
        return -q.mean(), {"q_pi": q.mean().detach()}

    def update_targets(self, actor_updated: bool) -> None:
        """Delayed: targets move only together with the actor."""
        if actor_updated:
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            soft_update(self.actor_target, self.actor, self.cfg.tau)

    def _modules(self) -> dict[str, Any]:
        return {**super()._modules(), "actor_target": self.actor_target}
