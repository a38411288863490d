"""TD3 (Fujimoto et al. 2018, arXiv 1802.09477, Alg. 1), the base of SPOT and TD3-style learners.

Clipped double-Q targets with target-policy smoothing, delayed actor and target updates.
Subclasses change one thing, the actor objective (:meth:`TD3.actor_loss`), and may add
pretraining phases (:attr:`TD3.pretrain_phases`) and an online switch (:meth:`TD3.start_online`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rlft.agents.replay_buffer import Batch
from rlft.policies.ensemble import CriticEnsemble
from rlft.policies.mlp import DeterministicActor

UpdateFn = Callable[[Batch], dict[str, float]]


@dataclass
class TD3Config:
    """TD3 hyperparameters (defaults: the TD3 paper, Table 3; actions live in [-1, 1])."""

    discount: float = 0.99  # gamma
    tau: float = 0.005  # Polyak rate of the target networks
    policy_noise: float = 0.2  # std of target-policy smoothing noise
    noise_clip: float = 0.5  # smoothing noise is clipped to +-noise_clip
    policy_freq: int = 2  # actor and target updates every policy_freq critic updates
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    hidden: tuple[int, ...] = (256, 256)  # actor and critic hidden widths
    num_critics: int = 2  # clipped double-Q
    actor_dropout: float = 0.0
    expl_noise: float = 0.1  # std of Gaussian exploration noise online


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source``, parameter by parameter."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)


class TD3:
    """Twin-critic deterministic actor-critic."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: TD3Config, device: str | torch.device = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.actor = DeterministicActor(obs_dim, action_dim, cfg.hidden, dropout=cfg.actor_dropout).to(self.device)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic = CriticEnsemble(obs_dim, action_dim, cfg.num_critics, cfg.hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic)
        for net in (self.actor_target, self.critic_target):
            net.requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.num_updates = 0
        self.online = False

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Evaluation action, or with ``deterministic=False`` the exploration action."""
        action = self.actor.act(obs)
        if deterministic:
            return action
        return (action + self.cfg.expl_noise * torch.randn_like(action)).clamp(-1.0, 1.0)

    # ---------------------------------------------------------------- learning
    @property
    def pretrain_phases(self) -> list[tuple[str, UpdateFn]]:
        """Phases run on the dataset before :meth:`update`: (name, update function). Their
        budgets come from the run config (``trainer.pretrain_steps.<name>``)."""
        return []

    def start_online(self) -> None:
        """Called once when online fine-tuning begins."""
        self.online = True

    def critic_target_values(self, batch: Batch) -> torch.Tensor:
        """``r + gamma * (1 - d) * min_i Q'_i(s', clip(pi'(s') + eps))``."""
        with torch.no_grad():
            noise = (torch.randn_like(batch.actions) * self.cfg.policy_noise).clamp(
                -self.cfg.noise_clip, self.cfg.noise_clip
            )
            next_actions = (self.actor_target(batch.next_observations) + noise).clamp(-1.0, 1.0)
            next_q = self.critic_target(batch.next_observations, next_actions).min(0).values
            return batch.rewards.squeeze(-1) + self.cfg.discount * (1.0 - batch.dones.squeeze(-1)) * next_q

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """TD3's deterministic policy gradient objective ``-Q_1(s, pi(s))``."""
        q = self.critic(obs, self.actor(obs))[0]
        return -q.mean(), {"q_pi": q.mean().item()}

    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step; every ``policy_freq`` steps also an actor step and target updates."""
        self.num_updates += 1
        target = self.critic_target_values(batch)
        q = self.critic(batch.observations, batch.actions)
        critic_loss = F.mse_loss(q, target.unsqueeze(0).expand_as(q), reduction="none").mean(1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        info = {"critic_loss": critic_loss.item(), "q_data": q.mean().item()}

        if self.num_updates % self.cfg.policy_freq == 0:
            for p in self.critic.parameters():
                p.requires_grad_(False)
            actor_loss, actor_info = self.actor_loss(batch.observations)
            for p in self.critic.parameters():
                p.requires_grad_(True)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, self.cfg.tau)
            soft_update(self.actor_target, self.actor, self.cfg.tau)
            info.update(actor_loss=actor_loss.item(), **actor_info)
        return info

    # ------------------------------------------------------------- checkpoints
    def _modules(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "actor_target": self.actor_target,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "actor_optimizer": self.actor_optimizer,
            "critic_optimizer": self.critic_optimizer,
        }

    def state_dict(self) -> dict[str, Any]:
        state = {name: m.state_dict() for name, m in self._modules().items()}
        state.update(num_updates=self.num_updates, online=self.online)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, m in self._modules().items():
            m.load_state_dict(state[name])
        self.num_updates, self.online = int(state["num_updates"]), bool(state["online"])
