"""Flow Q-learning (FQL; Park, Li and Levine, ICML 2025, arXiv 2502.02538, Sec. 4, Alg. 1), as
seohongpark/fql@719d044 ``agents/fql.py`` computes it.

Three networks: a flow-matching behaviour policy ``v(s, x, t)`` (trained only to clone the
data), a one-step policy ``mu(s, z)``, ``z ~ N(0, I)``, that acts, and ``num_critics`` critics.
One update minimises, on one batch and in one optimiser step::

    critic:  mean_i,b (Q_i(s, a) - r - gamma (1 - d) agg_i Q'_i(s', clip(mu(s', z'))))^2
    flow:    E ||v(s, x_t, t) - (a - x_0)||^2                          (flow matching)
    actor:   alpha E ||mu(s, z) - flow(s, z)||^2 - lam mean_i Q_i(s, clip(mu(s, z)))

where ``flow(s, z)`` integrates ``v`` with ``flow_steps`` Euler steps, ``agg`` is the mean (or
min, ``q_agg``) over the target critics and ``lam`` is 1, or ``1 / E|Q|`` with
``normalize_q_loss``. Neither the distillation target nor the Q term sends gradients into the
flow or the critics. Both losses are taken before any parameter moves (the reference sums them
into one step), and the target critics move towards the critics' values *before* that step
(``target_update`` reads the pre-update parameters). The same update runs offline and online.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlft.agents.base import AgentConfig, Metrics, OffPolicyAgent
from rlft.agents.optim import adam
from rlft.agents.replay_buffer import Batch
from rlft.policies.flow import CriticPair, VectorField, flow_actions, flow_matching_loss


@dataclass
class FQLConfig(AgentConfig):
    """FQL's hyperparameters (fql ``get_config``; one Adam at lr 3e-4 over every network equals
    this class's three, Adam being per parameter)."""

    hidden: tuple[int, ...] = (512, 512, 512, 512)  # actor_hidden_dims and value_hidden_dims
    alpha: float = 10.0  # distillation weight: the one to tune per domain (fql README)
    flow_steps: int = 10  # Euler steps of the behaviour flow
    normalize_q_loss: bool = False
    q_agg: str = "mean"  # how the target critics combine: "mean" or "min"
    critic_layer_norm: bool = True  # fql layer_norm
    actor_layer_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.q_agg not in ("mean", "min"):
            raise ValueError(f"q_agg={self.q_agg!r}; choose 'mean' or 'min'")
        if self.flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {self.flow_steps}")


class FQL(OffPolicyAgent):
    """Flow Q-learning; ``actor`` is the one-step policy, ``flow`` the behaviour flow."""

    cfg: FQLConfig

    def __init__(self, obs_dim: int, action_dim: int, cfg: FQLConfig, device: str | torch.device = "cpu"):
        super().__init__(obs_dim, action_dim, cfg, device)
        self.flow = VectorField(obs_dim, action_dim, cfg.hidden, timed=True, layer_norm=cfg.actor_layer_norm)
        self.actor = VectorField(obs_dim, action_dim, cfg.hidden, timed=False, layer_norm=cfg.actor_layer_norm)
        self.critic = CriticPair(obs_dim, action_dim, cfg.hidden, cfg.num_critics, cfg.critic_layer_norm)
        for module in ("flow", "actor", "critic"):
            setattr(self, module, getattr(self, module).to(self.device))
        self.critic_target = CriticPair(obs_dim, action_dim, cfg.hidden, cfg.num_critics, cfg.critic_layer_norm)
        self.critic_target = self.critic_target.to(self.device).requires_grad_(False)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.flow_optimizer = adam(self.flow.parameters(), lr=cfg.actor_lr)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_lr)

    # ------------------------------------------------------------------ acting
    def _one_step(self, obs: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(obs.shape[:-1] + (self.action_dim,), device=obs.device)
        return self.actor(obs, noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """``clip(mu(s, z))`` with fresh noise ``z``, for evaluation too (fql ``sample_actions``
        ignores its temperature, so the reference evaluates the noisy policy)."""
        return self._one_step(obs)

    # ---------------------------------------------------------------- learning
    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        with torch.no_grad():
            next_q = self.critic_target(batch.next_observations, self._one_step(batch.next_observations))
            next_q = next_q.mean(0) if self.cfg.q_agg == "mean" else next_q.min(0).values
            target = batch.rewards.squeeze(-1) + self.cfg.discount * (1.0 - batch.dones.squeeze(-1)) * next_q
        q = self.critic(batch.observations, batch.actions)
        loss = (q - target).pow(2).mean()
        return loss, {"q_data": q.mean().detach(), "q_max": q.max().detach(), "q_min": q.min().detach()}

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """Flow matching, distillation and the Q term (the critics frozen by the caller)."""
        obs = batch.observations
        bc_flow = flow_matching_loss(self.flow, obs, batch.actions)
        noise = torch.randn_like(batch.actions)
        target_actions = flow_actions(self.flow, obs, noise, self.cfg.flow_steps)
        actions = self.actor(obs, noise)
        distill = (actions - target_actions).pow(2).mean()
        q = self.critic(obs, actions.clamp(-1.0, 1.0)).mean(0)
        q_loss = -q.mean()
        if self.cfg.normalize_q_loss:
            q_loss = q_loss / q.abs().mean().detach()
        loss = bc_flow + self.cfg.alpha * distill + q_loss
        return loss, {"bc_flow_loss": bc_flow.detach(), "distill_loss": distill.detach(), "q_loss": q_loss.detach(),
                      "q_pi": q.mean().detach()}

    def update(self, batch: Batch) -> Metrics:
        """Both losses at the current parameters, one step of every network, then the targets
        towards the critics' pre-step values."""
        self.num_updates += 1
        before = [p.detach().clone() for p in self.critic.parameters()]
        critic_loss, info = self.critic_loss(batch)
        self.critic.requires_grad_(False)
        try:
            actor_loss, actor_info = self.actor_loss(batch)
        finally:
            self.critic.requires_grad_(True)
        optimizers = (self.critic_optimizer, self.flow_optimizer, self.actor_optimizer)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        (critic_loss + actor_loss).backward()
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), before, self.cfg.tau)
        return {**info, "critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(), **actor_info}

    # ------------------------------------------------------------- checkpoints
    def _modules(self) -> dict[str, Any]:
        return {**super()._modules(), "flow": self.flow, "flow_optimizer": self.flow_optimizer}
