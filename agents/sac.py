"""SAC with a batched critic ensemble: SAC, SAC-N, REDQ-style targets, and E2O exploration.

Soft actor-critic (Haarnoja et al. 2018, arXiv 1812.05905, Alg. 1 with automatic
temperature, Sec. 5): defaults are its Table 1 (lr 3e-4, tau 0.005, gamma 0.99, target
entropy ``-|A|``). The critic is one :class:`~rlft.policies.ensemble.CriticEnsemble` of
``num_critics`` members, and the Bellman target collapses the ensemble with
``target_reduction`` (:func:`~rlft.policies.ensemble.reduce_ensemble`):

- ``min`` over 2 critics: SAC; over N: SAC-N (An et al. 2021).
- ``redq`` with ``target_subset=2`` over 10 LayerNorm critics: the WSRL online learner
  (Zhou et al. 2024, arXiv 2412.07762, Sec. 5 / App. B, after REDQ and RLPD).
- ``weighted_min_pair``: E2O's online target (Zhao et al. 2023, arXiv 2306.06871, Sec. 4.2).
- ``redq`` over 10 LayerNorm critics, the actor on their mean: RLPD (Ball et al. 2023,
  arXiv 2302.02948, Sec. 4; configs/agent/rlpd.yaml).

``exploration="ucb"`` is E2O's ensemble-based exploration (Sec. 4.3): draw
``ucb_candidates`` actions from the policy and take the one with the largest
``mean_i Q_i + ucb_lambda * std_i Q_i``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from rlft.agents.optim import adam
from rlft.agents.base import AgentConfig, Metrics, OffPolicyAgent, ensemble_td_loss, soft_update
from rlft.agents.replay_buffer import Batch
from rlft.policies.ensemble import TARGET_REDUCTIONS, CriticEnsemble
from rlft.policies.gaussian import GaussianActor


@dataclass
class SACConfig(AgentConfig):
    """SAC hyperparameters plus the ensemble's and exploration's knobs."""

    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    learn_alpha: bool = True  # automatic temperature tuning
    target_entropy: float | None = None  # None -> -target_entropy_scale * action_dim
    target_entropy_scale: float = 1.0  # RLPD: 0.5 (rlpd sac_learner.py: -action_dim / 2)
    backup_entropy: bool = True  # subtract alpha * log pi(a'|s') in the Bellman target
    critic_layer_norm: bool = False
    actor_layer_norm: bool = False  # LayerNorm in the policy network's hidden layers (WSRL)
    target_reduction: str = "min"  # see rlft.policies.ensemble.reduce_ensemble
    target_subset: int = 2  # members per REDQ subset
    actor_reduction: str = "min"  # how the actor objective combines the ensemble ("min" or "mean")
    exploration: str = "sample"  # "sample": a ~ pi(.|s); "ucb": E2O's optimistic candidate choice
    ucb_lambda: float = 1.0
    ucb_candidates: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("target_reduction", "actor_reduction"):
            if getattr(self, name) not in TARGET_REDUCTIONS:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose from {TARGET_REDUCTIONS}")
        if self.exploration not in ("sample", "ucb"):
            raise ValueError(f"exploration={self.exploration!r}; choose 'sample' or 'ucb'")


class SAC(OffPolicyAgent):
    """Maximum-entropy actor-critic over a batched critic ensemble."""

    cfg: SACConfig

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig, device: str | torch.device = "cpu"):
        super().__init__(obs_dim, action_dim, cfg, device)
        self.actor = GaussianActor(obs_dim, action_dim, cfg.hidden, layer_norm=cfg.actor_layer_norm).to(self.device)
        self.critic = CriticEnsemble(obs_dim, action_dim, cfg.num_critics, cfg.hidden, cfg.critic_layer_norm)
        self.critic = self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(cfg.init_alpha), device=self.device).log().requires_grad_(True)
        self.actor_optimizer = adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_optimizer = adam([self.log_alpha], lr=cfg.alpha_lr)
        self._actor_log_prob: torch.Tensor | None = None

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    @property
    def target_entropy(self) -> float:
        if self.cfg.target_entropy is None:
            return -self.cfg.target_entropy_scale * float(self.action_dim)
        return self.cfg.target_entropy

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic or self.cfg.exploration == "sample":
            return self.actor.act(obs, deterministic)
        k = self.cfg.ucb_candidates
        candidates = self.actor.sample_n(obs, k)[0]  # [B, k, A]
        q = self.critic(obs.unsqueeze(1).expand(-1, k, -1), candidates)  # [N, B, k]
        best = (q.mean(0) + self.cfg.ucb_lambda * q.std(0)).argmax(1)
        return candidates[torch.arange(obs.shape[0], device=obs.device), best]

    # ---------------------------------------------------------------- learning
    def next_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``reduce_i Q'_i(s', a')`` and ``log pi(a'|s')`` for one ``a' ~ pi(.|s')`` per state."""
        next_actions, next_log_prob = self.actor.sample(next_obs)
        next_v = self.critic_target.reduced(next_obs, next_actions, self.cfg.target_reduction, self.cfg.target_subset)
        return next_v, next_log_prob

    def critic_target_values(self, batch: Batch) -> torch.Tensor:
        """``r + gamma (1 - d) [V'(s') - alpha log pi(a'|s')]`` with ``V'``, ``a'`` from :meth:`next_value`."""
        with torch.no_grad():
            next_v, next_log_prob = self.next_value(batch.next_observations)
            if self.cfg.backup_entropy:
                next_v = next_v - self.alpha * next_log_prob
            return batch.rewards.squeeze(-1) + self.cfg.discount * (1.0 - batch.dones.squeeze(-1)) * next_v

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """Ensemble TD loss plus :meth:`critic_penalty` (offline regularisers)."""
        q = self.critic(batch.observations, batch.actions)
        loss = ensemble_td_loss(q, self.critic_target_values(batch))
        info = {"q_data": q.mean().detach(), "q_std": q.std(0).mean().detach(), "td_loss": loss.detach()}
        penalty = self.critic_penalty(batch, q)
        if penalty is not None:
            loss = loss + penalty[0]
            info.update(penalty[1])
        return loss, info

    def critic_penalty(self, batch: Batch, q_data: torch.Tensor) -> tuple[torch.Tensor, Metrics] | None:
        """A term added to the critic loss (``None``: plain SAC). ``q_data`` is ``Q_i(s, a)``, ``[N, B]``."""
        return None

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """``E[alpha log pi(a|s) - reduce_i Q_i(s, a)]``, ``a ~ pi(.|s)`` reparameterised."""
        actions, log_prob = self.actor.sample(batch.observations)
        q = self.critic.reduced(batch.observations, actions, self.cfg.actor_reduction, self.cfg.target_subset)
        self._actor_log_prob = log_prob.detach()
        loss = (self.alpha * log_prob - q).mean()
        return loss, {"q_pi": q.mean().detach(), "entropy": -log_prob.mean().detach()}

    def after_actor_step(self) -> Metrics:
        """Temperature step: ``min_alpha E[-alpha (log pi + target_entropy)]``."""
        if self.cfg.learn_alpha and self._actor_log_prob is not None:
            loss = -(self.log_alpha.exp() * (self._actor_log_prob + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.alpha_optimizer.step()
        return {"alpha": self.alpha.detach()}

    def update_targets(self, actor_updated: bool) -> None:
        """Critic targets track every critic step (SAC has no target actor)."""
        soft_update(self.critic_target, self.critic, self.cfg.tau)

    def update_split(self, batch: Batch, parts: int, actor_rows: str = "all") -> Metrics:
        """One high-UTD step: a critic step (and target update) on each of ``parts`` slices of
        ``batch`` (:meth:`Batch.split`), then one actor and temperature step, on all its rows
        (``actor_rows="all"``, zhouzypaul/wsrl agents/sac.py ``update_high_utd``) or on the last
        slice (``"last"``, ikostrikov/rlpd agents/sac/sac_learner.py ``update``). ``policy_freq``
        plays no part. Critic metrics are the slices' means."""
        if actor_rows not in ("all", "last"):
            raise ValueError(f"actor_rows={actor_rows!r}; choose 'all' or 'last'")
        slices = batch.split(parts)
        critic_infos = []
        for piece in slices:
            self.num_updates += 1
            critic_infos.append(self._critic_step(piece))
            self.update_targets(actor_updated=False)
        info = {key: torch.stack([i[key] for i in critic_infos]).mean() for key in critic_infos[0]}
        info.update(self._actor_step(batch if actor_rows == "all" else slices[-1]))
        return info

    # ------------------------------------------------------------- checkpoints
    def _modules(self):
        return {**super()._modules(), "alpha_optimizer": self.alpha_optimizer}

    def state_dict(self):
        return {**super().state_dict(), "log_alpha": self.log_alpha.detach().clone()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
