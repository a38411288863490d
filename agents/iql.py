"""IQL: implicit Q-learning (Kostrikov et al. 2021, arXiv 2110.06169).

Never queries Q on actions outside the dataset. Per update (Alg. 1):

- value, expectile regression (Eq. 5): ``L_V = E |tau - 1(u < 0)| u^2`` with
  ``u = min_i Q'_i(s, a) - V(s)``;
- critic, one-step TD to the value (Eq. 6): ``L_Q = E (r + gamma (1 - d) V(s') - Q_i(s, a))^2``;
- actor, advantage-weighted regression (Eq. 7):
  ``L_pi = -E exp(beta (Q'(s, a) - V(s))) log pi(a|s)`` with weights clipped at 100.

Defaults are the paper's Gym-MuJoCo settings (App. B: tau 0.7, beta 3, lr 3e-4, Polyak
0.005, Gaussian policy with a state-independent std); AntMaze-style sparse tasks use
tau 0.9, beta 10 and rewards shifted by -1 (``configs/experiment/o2o/iql/*``). Locomotion
rewards are scaled by ``1000 / (max - min episode return)`` of the dataset, as the authors'
``train_offline.py`` ``normalize`` does (``trainer.reward_return_range: 1000``); their
``train_finetune.py`` then stores online locomotion rewards unscaled, which would mix two
reward scales in one buffer, so rlft scales online rewards the same way. Online fine-tuning
(Sec. 5.3) keeps the same losses on the growing buffer and samples the stochastic policy.
The reference's cosine decay of the actor learning rate over the offline steps is left out:
it would reach 0 as fine-tuning starts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from rlft.agents.optim import adam
from rlft.agents.base import AgentConfig, Metrics, OffPolicyAgent, ensemble_td_loss, soft_update
from rlft.agents.replay_buffer import Batch
from rlft.policies.ensemble import CriticEnsemble
from rlft.policies.gaussian import GaussianActor
from rlft.policies.mlp import mlp


@dataclass
class IQLConfig(AgentConfig):
    """IQL hyperparameters (paper, App. B, Gym-MuJoCo)."""

    expectile: float = 0.7  # tau of the expectile regression
    beta: float = 3.0  # inverse temperature of advantage weighting
    max_weight: float = 100.0  # exp(beta * A) is clipped here
    value_lr: float = 3e-4


def expectile_weight(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``|tau - 1(u < 0)|``: the asymmetric weight of IQL Eq. 5 on an error ``u = target - prediction``."""
    return torch.where(diff < 0, 1.0 - expectile, expectile)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``|tau - 1(u < 0)| u^2`` averaged, the asymmetric L2 of IQL Eq. 5."""
    return (expectile_weight(diff, expectile) * diff.pow(2)).mean()


class IQL(OffPolicyAgent):
    """Expectile value, TD critic ensemble, AWR actor."""

    cfg: IQLConfig

    def __init__(self, obs_dim: int, action_dim: int, cfg: IQLConfig, device: str | torch.device = "cpu"):
        super().__init__(obs_dim, action_dim, cfg, device)
        self.actor = GaussianActor(obs_dim, action_dim, cfg.hidden, squash=False, state_dependent_std=False)
        self.actor = self.actor.to(self.device)
        self.critic = CriticEnsemble(obs_dim, action_dim, cfg.num_critics, cfg.hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(obs_dim, 1, cfg.hidden).to(self.device)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(
            [{"params": self.critic.parameters()}, {"params": self.value.parameters(), "lr": cfg.value_lr}],
            lr=cfg.critic_lr,
        )
        self._target_q_of: tuple[Batch, torch.Tensor] | None = None

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.actor.act(obs, deterministic)

    @torch.compiler.disable  # compiled losses (compile=true) call it eagerly: its cache is Python state
    def target_q(self, batch: Batch) -> torch.Tensor:
        """``min_i Q'_i(s, a)`` of ``batch``, which the value and the actor losses of one update both
        read: the target critic moves only after both steps (:meth:`update_targets`), so it runs
        once per update, not twice (the reference's ``update_v`` and ``awr_update_actor`` each
        evaluate it)."""
        if self._target_q_of is None or self._target_q_of[0] is not batch:
            with torch.no_grad():
                self._target_q_of = (batch, self.critic_target(batch.observations, batch.actions).min(0).values)
        return self._target_q_of[1]

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """Value and critic losses together: their gradients touch disjoint parameters
        (the value's target is the frozen target critic, the critic's target a detached V)."""
        q_target = self.target_q(batch)
        with torch.no_grad():
            next_v = self.value(batch.next_observations).squeeze(-1)
            td_target = batch.rewards.squeeze(-1) + self.cfg.discount * (1.0 - batch.dones.squeeze(-1)) * next_v
        v = self.value(batch.observations).squeeze(-1)
        value_loss = expectile_loss(q_target - v, self.cfg.expectile)
        q = self.critic(batch.observations, batch.actions)
        q_loss = ensemble_td_loss(q, td_target)
        return value_loss + q_loss, {"value_loss": value_loss.detach(), "td_loss": q_loss.detach(),
                                     "q_data": q.mean().detach(), "v": v.mean().detach()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        with torch.no_grad():
            advantage = self.target_q(batch) - self.value(batch.observations).squeeze(-1)
            weight = torch.exp(self.cfg.beta * advantage).clamp(max=self.cfg.max_weight)
        log_prob = self.actor.log_prob(batch.observations, batch.actions)
        metrics = {"adv_weight": weight.mean().detach(), "bc_log_prob": log_prob.mean().detach()}
        return -(weight * log_prob).mean(), metrics

    def update_targets(self, actor_updated: bool) -> None:
        soft_update(self.critic_target, self.critic, self.cfg.tau)
        self._target_q_of = None

    def _modules(self) -> dict[str, Any]:
        return {**super()._modules(), "value": self.value}
