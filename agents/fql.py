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

``action_chunk = H > 1`` is QC-FQL (Q-chunking; Li, Zhou and Levine 2025, arXiv 2507.07969, Sec. 4;
ColinQiyangLi/qc@48283b4 ``agents/acfql.py``): every network acts on chunks of ``H`` actions
flattened into one vector, the critic backs up ``sum_i gamma^i r_i + gamma^H Q'(s_H, mu(s_H))``
over the chunk (:class:`~rlft.agents.replay_buffer.ChunkBatch`), and acting executes a whole
chunk open loop before choosing the next. rlft's choice where the reference differs: a chunk
stops at a terminal row (the env ends the episode there) where the reference adds the rewards of
later play-data rows and cuts only the bootstrap; chunks cut by a time limit are weighted out of
the critic loss as the reference weights out those crossing a trajectory's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlft.agents.base import AgentConfig, Metrics, OffPolicyAgent
from rlft.agents.optim import adam
from rlft.agents.replay_buffer import Batch, ChunkBatch
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
    action_chunk: int = 1  # > 1: QC-FQL over chunks of this many actions (qc horizon_length 5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action_chunk < 1:
            raise ValueError(f"action_chunk must be >= 1, got {self.action_chunk}")
        if self.q_agg not in ("mean", "min"):
            raise ValueError(f"q_agg={self.q_agg!r}; choose 'mean' or 'min'")
        if self.flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {self.flow_steps}")


class FQL(OffPolicyAgent):
    """Flow Q-learning; ``actor`` is the one-step policy, ``flow`` the behaviour flow."""

    cfg: FQLConfig

    def __init__(self, obs_dim: int, action_dim: int, cfg: FQLConfig, device: str | torch.device = "cpu"):
        super().__init__(obs_dim, action_dim, cfg, device)
        width = action_dim * cfg.action_chunk  # a chunk is one flat action vector to every network
        self.flow = VectorField(obs_dim, width, cfg.hidden, timed=True, layer_norm=cfg.actor_layer_norm)
        self.actor = VectorField(obs_dim, width, cfg.hidden, timed=False, layer_norm=cfg.actor_layer_norm)
        self.critic = CriticPair(obs_dim, width, cfg.hidden, cfg.num_critics, cfg.critic_layer_norm)
        for module in ("flow", "actor", "critic"):
            setattr(self, module, getattr(self, module).to(self.device))
        self.critic_target = CriticPair(obs_dim, width, cfg.hidden, cfg.num_critics, cfg.critic_layer_norm)
        self.critic_target = self.critic_target.to(self.device).requires_grad_(False)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self._chunks: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}  # acting stream -> (chunks, actions played)
        self.flow_optimizer = adam(self.flow.parameters(), lr=cfg.actor_lr)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_lr)

    @property
    def chunk_length(self) -> int:
        return self.cfg.action_chunk

    @property
    def acts_with_state(self) -> bool:
        return self.cfg.action_chunk > 1

    # ------------------------------------------------------------------ acting
    def _one_step(self, obs: torch.Tensor) -> torch.Tensor:
        """``clip(mu(s, z))``, ``z ~ N(0, I)``: one action, or one flat chunk."""
        noise = torch.randn(obs.shape[:-1] + (self.action_dim * self.cfg.action_chunk,), device=obs.device)
        return self.actor(obs, noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """``clip(mu(s, z))`` with fresh noise ``z``, for evaluation too (fql ``sample_actions``
        ignores its temperature, so the reference evaluates the noisy policy). With chunks, each
        env plays its chunk's actions in turn and draws the next chunk when it has played all
        (evaluation and exploration keep separate chunks, keyed by ``deterministic``)."""
        if self.cfg.action_chunk == 1:
            return self._one_step(obs)
        chunks, played = self._chunks.get(deterministic, (None, None))
        if chunks is None or chunks.shape[0] != obs.shape[0]:
            chunks = torch.zeros(obs.shape[0], self.cfg.action_chunk, self.action_dim, device=obs.device)
            played = torch.full((obs.shape[0],), self.cfg.action_chunk, device=obs.device)
        due = played >= self.cfg.action_chunk
        if due.any():
            chunks[due] = self._one_step(obs[due]).view(-1, self.cfg.action_chunk, self.action_dim)
            played[due] = 0
        action = chunks[torch.arange(obs.shape[0], device=obs.device), played]
        self._chunks[deterministic] = (chunks, played + 1)
        return action

    def reset(self, num_envs: int, deterministic: bool) -> None:
        """New episodes in the ``deterministic`` acting stream: no chunk is under way."""
        self._chunks.pop(deterministic, None)

    def episodes_ended(self, ended: torch.Tensor | list[bool], deterministic: bool) -> None:
        """Sub-envs ``ended`` restarted: their next action starts a new chunk."""
        if deterministic in self._chunks:
            chunks, played = self._chunks[deterministic]
            played[torch.as_tensor(ended, dtype=torch.bool, device=played.device)] = self.cfg.action_chunk

    # ---------------------------------------------------------------- learning
    def critic_loss(self, batch: Batch | ChunkBatch) -> tuple[torch.Tensor, Metrics]:
        chunked = isinstance(batch, ChunkBatch)
        with torch.no_grad():
            next_q = self.critic_target(batch.next_observations, self._one_step(batch.next_observations))
            next_q = next_q.mean(0) if self.cfg.q_agg == "mean" else next_q.min(0).values
            discount = batch.discounts.squeeze(-1) if chunked else self.cfg.discount
            target = batch.rewards.squeeze(-1) + discount * (1.0 - batch.dones.squeeze(-1)) * next_q
        q = self.critic(batch.observations, batch.actions.flatten(1))
        errors = (q - target).pow(2)
        loss = (errors * batch.critic_valid.squeeze(-1) if chunked else errors).mean()
        return loss, {"q_data": q.mean().detach(), "q_max": q.max().detach(), "q_min": q.min().detach()}

    def actor_loss(self, batch: Batch | ChunkBatch) -> tuple[torch.Tensor, Metrics]:
        """Flow matching, distillation and the Q term (the critics frozen by the caller)."""
        obs, actions = batch.observations, batch.actions.flatten(1)
        weights = batch.action_valid.repeat_interleave(self.action_dim, 1) if isinstance(batch, ChunkBatch) else None
        bc_flow = flow_matching_loss(self.flow, obs, actions, weights)
        noise = torch.randn_like(actions)
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

    def update(self, batch: Batch | ChunkBatch) -> Metrics:
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
