"""CQL and Cal-QL: conservative Q-learning on top of :class:`rlft.agents.sac.SAC`.

CQL(H) (Kumar et al. 2020, arXiv 2006.04779, Eq. 4 with the importance-sampled
log-sum-exp of App. F) adds to every critic's TD loss::

    alpha * ( T log sum_j exp(Q(s, a_j) / T)  -  Q(s, a_data) )

over ``n`` uniform actions (weighted by ``1 / 0.5^|A|``), ``n`` policy actions at ``s``
and ``n`` policy actions at ``s'`` (each weighted by ``1 / pi(a|.)``).

Cal-QL (Nakamoto et al. 2023, arXiv 2303.05479, Alg. 1 / Eq. 5.1) changes one line: the
Q-values of the *policy* actions entering the log-sum-exp are lower-bounded by the
reference value ``V^mu(s)``, estimated by the Monte-Carlo return-to-go of the dataset
trajectory (``batch.mc_returns``, :mod:`rlft.offline.returns`). The penalty then never
pushes the learned Q below the behaviour policy's return, which avoids the
unlearning dip at the start of fine-tuning.

Defaults follow Cal-QL's Table 4 (policy lr 1e-4, critic lr 3e-4, alpha 5, 10 actions,
no entropy backup). Online, ``online_overrides`` turns the same class into the E2O and
WSRL learners (``cql_alpha: 0`` -> plain SAC over the pretrained ensemble).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlft.agents.base import Metrics
from rlft.agents.replay_buffer import Batch
from rlft.agents.sac import SAC, SACConfig


@dataclass
class CQLConfig(SACConfig):
    """SAC hyperparameters plus the conservative penalty."""

    actor_lr: float = 1e-4
    backup_entropy: bool = False
    cql_alpha: float = 5.0  # weight of the conservative penalty (0 turns it off)
    cql_n_actions: int = 10  # actions per source (uniform, pi(s), pi(s')) in the log-sum-exp
    cql_temperature: float = 1.0
    calibrated: bool = False  # Cal-QL: lower-bound policy-action Q by the MC return-to-go
    cql_max_target_backup: bool = False  # back up the best of cql_n_actions next actions (JaxCQL's option)


def conservative_gap(
    q_data: torch.Tensor,
    q_random: torch.Tensor,
    q_pi: torch.Tensor,
    q_next: torch.Tensor,
    pi_log_prob: torch.Tensor,
    next_log_prob: torch.Tensor,
    action_dim: int,
    temperature: float = 1.0,
    mc_returns: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T logsumexp(Q / T) - Q(s, a_data)`` per member and state, shape ``[N, B]``.

    ``q_data`` is ``[N, B]``; ``q_random``/``q_pi``/``q_next`` are ``[N, B, n]`` (uniform actions,
    policy actions at ``s``, policy actions at ``s'``, all evaluated at ``s``) and the log-probs
    ``[B, n]``. With ``mc_returns`` (``[B]``, Cal-QL) the policy-action values are replaced by
    ``max(Q, V^mu(s))``, so wherever ``Q < V^mu`` the penalty has no gradient pushing Q down.
    """
    if mc_returns is not None:
        bound = mc_returns.view(1, -1, 1)
        q_pi, q_next = torch.maximum(q_pi, bound), torch.maximum(q_next, bound)
    uniform_log_density = -action_dim * math.log(2.0)  # U[-1, 1]^|A|
    cat_q = torch.cat(
        [q_random - uniform_log_density, q_next - next_log_prob.unsqueeze(0), q_pi - pi_log_prob.unsqueeze(0)], dim=-1
    )
    return temperature * torch.logsumexp(cat_q / temperature, dim=-1) - q_data


class CQL(SAC):
    """CQL(H); ``calibrated=True`` is Cal-QL."""

    cfg: CQLConfig

    def conservative_penalty(self, batch: Batch, q_data: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """Per-member penalty ``T logsumexp(Q/T) - Q(s, a_data)`` summed over members, averaged over the batch."""
        cfg, obs = self.cfg, batch.observations
        b, n = obs.shape[0], cfg.cql_n_actions
        with torch.no_grad():
            random_actions = torch.rand(b, n, self.action_dim, device=obs.device) * 2.0 - 1.0
            # pi(.|s) and pi(.|s') in one actor pass over the 2B states, n samples each
            policy_actions, policy_log_prob = self.actor.sample_n(torch.cat([obs, batch.next_observations]), n)
        actions = torch.cat([random_actions, *policy_actions.view(2, b, n, -1)], dim=1)  # [B, 3n, A]: s-major rows
        q = self.critic(obs.unsqueeze(1).expand(-1, 3 * n, -1), actions)  # one pass over the 3n actions, [N, B, 3n]
        q_random, q_pi, q_next = q.split(n, dim=-1)
        pi_log_prob, next_log_prob = policy_log_prob.view(2, b, n)
        if cfg.calibrated and batch.mc_returns is None:
            raise ValueError("Cal-QL needs Monte-Carlo returns in the batch (batch.mc_returns)")
        gap = conservative_gap(
            q_data, q_random, q_pi, q_next, pi_log_prob, next_log_prob,
            self.action_dim, cfg.cql_temperature, batch.mc_returns.view(b) if cfg.calibrated else None,
        )
        info = {"cql_gap": gap.mean().detach(), "q_random": q_random.mean().detach()}
        if cfg.calibrated:
            info["calql_bound_rate"] = (q_pi < batch.mc_returns.view(1, b, 1)).float().mean().detach()
        return gap.mean(1).sum(), info

    def next_value(self, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With ``cql_max_target_backup`` (JaxCQL ``ConservativeSAC``, the Cal-QL code's default):
        ``cql_n_actions`` actions ``a'_j ~ pi(.|s')``, each valued by the reduced target ensemble,
        and the best one backed up together with its log-prob."""
        if not self.cfg.cql_max_target_backup:
            return super().next_value(next_obs)
        n = self.cfg.cql_n_actions
        actions, log_prob = self.actor.sample_n(next_obs, n)  # [B, n, A], [B, n]
        values = self.critic_target.reduced(next_obs.unsqueeze(1).expand(-1, n, -1), actions,
                                            self.cfg.target_reduction, self.cfg.target_subset)  # [B, n]
        best = values.argmax(1, keepdim=True)
        return values.gather(1, best).squeeze(1), log_prob.gather(1, best).squeeze(1)

    @property
    def needs_finished_episodes(self) -> bool:
        """Calibration reads Monte-Carlo returns, known only for rows of finished episodes."""
        return self.cfg.calibrated and self.cfg.cql_alpha > 0.0

    def critic_penalty(self, batch: Batch, q_data: torch.Tensor) -> tuple[torch.Tensor, Metrics] | None:
        if self.cfg.cql_alpha == 0.0:
            return None
        penalty, info = self.conservative_penalty(batch, q_data)
        return self.cfg.cql_alpha * penalty, info
