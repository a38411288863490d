"""TD-MPC2 and FOWM: a latent world model learned from sequences, acting by MPPI planning.

**TD-MPC2** (Hansen, Su and Wang 2024, arXiv 2310.16828, Sec. 3, Eq. 3-5, App. B defaults).
Each update draws ``horizon``-step sub-trajectories, encodes the first observation and rolls
the dynamics forward through the recorded actions. The model minimises, with weights
``rho^t`` (``rho = 0.5``) and averaged over the horizon,

- *consistency*: ``||d(z_t, a_t) - sg(h(s_{t+1}))||^2`` (coefficient 20),
- *reward*: cross-entropy of ``R(z_t, a_t)`` to the two-hot reward (0.1),
- *value*: cross-entropy of every ``Q_i(z_t, a_t)`` to the TD target
  ``r_t + gamma * Q_target(z'_{t+1}, p(z'_{t+1}))`` (min of two random target members; 0.1),
- *termination* (episodic tasks): binary cross-entropy of the termination head (1).

The policy prior maximises ``Q(z, p(z)) / S + 1e-4 * entropy`` over all latents of the rollout,
where ``S`` is a running 5-95% percentile range of Q (Sec. 3.3). Adam, lr 3e-4 (encoder 0.3x),
gradient norms clipped at 20, target Q-functions Polyak-averaged with ``tau = 0.01``.

**FOWM** (Feng, Hansen, Xiong, Rajagopalan and Wang 2023, "Finetuning Offline World Models in the
Real World", arXiv 2310.16029, Sec. 4) adapts this to offline-to-online learning:

- ``value_target="expectile"``: in-sample TD targets ``r_t + gamma V(z_{t+1})``, with ``V`` fitted
  by expectile regression (0.7 for Hopper in its configs) to the target Q of dataset actions (IQL,
  Kostrikov et al. 2022), so offline Q-values never query actions the data lacks. FOWM's heads
  all have MSE losses; here ``V``, like ``Q``, is a two-hot regressor and its loss is the
  cross-entropy to the two-hot target weighted by ``|tau - 1(Q < V)|`` (the expectile weight),
  so it stays on the scale of the other losses instead of dominating the shared encoder;
- ``prior_objective="awr"``: the prior is fitted by advantage-weighted regression to dataset actions,
  weights ``exp(3 (Q - V))`` clipped at 100; it has no std to train, so it is sampled with FOWM's
  fixed noise (``model.prior_noise_std`` 0.05, its ``min_std``);
- ``planner.uncertainty_cost``: test-time regularisation of the planner by the Q-ensemble's
  disagreement (20 for Hopper; :mod:`rlft.policies.planner`), with FOWM's terminal value, the
  minimum of two members (``planner.terminal_reduce="min"``).

The same update runs offline (on the dataset) and online (on balanced dataset/online batches,
``trainer.offline_data_ratio``), so pretraining and fine-tuning are one learner.
Deviations: the training and planning horizon are one setting (TD-MPC2's, 3; FOWM used 5), and
FOWM's TD-MPC-style planner details (momentum, one iteration) are replaced by TD-MPC2's MPPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlft.agents.optim import adam
from rlft.agents.base import Learner, Metrics, OnlineOverridable, soft_update
from rlft.agents.replay_buffer import Batch
from rlft.agents.iql import expectile_weight
from rlft.policies.planner import MPPIConfig, MPPIPlanner
from rlft.policies.world_model import WorldModel, WorldModelConfig

VALUE_TARGETS = ("td", "expectile")
PRIOR_OBJECTIVES = ("max_q", "awr")


@dataclass
class TDMPC2Config(OnlineOverridable):
    """TD-MPC2's training defaults; FOWM is ``value_target=expectile, prior_objective=awr`` plus
    a planner ``uncertainty_cost`` (``configs/agent/fowm.yaml``)."""

    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    planner: MPPIConfig = field(default_factory=MPPIConfig)  # planner.horizon is also the training horizon
    discount: float = 0.99  # TD-MPC2 derives it from the episode length (0.995 for 1000 steps); FOWM: 0.99
    episodic: bool = False  # the task terminates: learn a termination head and stop rollouts at predicted ends
    lr: float = 3e-4
    enc_lr_scale: float = 0.3  # encoder learning rate = lr * enc_lr_scale
    grad_clip_norm: float = 20.0
    tau: float = 0.01  # target Q-functions and the Q scale
    rho: float = 0.5  # temporal weight rho^t of the losses along the horizon
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    termination_coef: float = 1.0
    entropy_coef: float = 1e-4  # max_q prior objective
    value_target: str = "td"  # "td" (TD-MPC2) or "expectile" (FOWM's in-sample V)
    expectile: float = 0.7
    prior_objective: str = "max_q"  # "max_q" (TD-MPC2) or "awr" (FOWM)
    awr_beta: float = 3.0  # AWR inverse temperature (FOWM's A_scaling)
    awr_max_weight: float = 100.0
    mpc: bool = True  # act by planning; False acts with the policy prior

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_target not in VALUE_TARGETS:
            raise ValueError(f"value_target={self.value_target!r}; choose from {VALUE_TARGETS}")
        if self.prior_objective not in PRIOR_OBJECTIVES:
            raise ValueError(f"prior_objective={self.prior_objective!r}; choose from {PRIOR_OBJECTIVES}")
        if self.prior_objective == "awr" and self.value_target != "expectile":
            raise ValueError("prior_objective='awr' needs the state value V: set value_target='expectile'")
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {self.expectile}")
        if self.model.prior_noise_std is not None and self.prior_objective != "awr":
            raise ValueError("model.prior_noise_std fixes the prior's std; the max_q objective's entropy term "
                             "needs a learned one (set prior_objective='awr' or prior_noise_std=null)")


class RunningScale(nn.Module):
    """TD-MPC2's running scale of Q: the 5-95% percentile range of a batch (at least 1),
    Polyak-averaged with rate ``tau``."""

    def __init__(self, tau: float):
        super().__init__()
        self.tau = tau
        self.register_buffer("value", torch.ones(1))

    def update(self, x: torch.Tensor) -> None:
        low, high = torch.quantile(x.detach().flatten(), torch.tensor([0.05, 0.95], device=x.device))
        self.value.lerp_((high - low).clamp(min=1.0).view(1), self.tau)


class TDMPC2(Learner):
    """World model + planner with the runner contract (``act``, ``update``, checkpoints)."""

    acts_with_state = True  # MPPI warm-starts from the last plan

    cfg: TDMPC2Config

    def __init__(self, obs_dim: int, action_dim: int, cfg: TDMPC2Config, device: str | torch.device = "cpu"):
        super().__init__(cfg)
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.model = WorldModel(obs_dim, action_dim, cfg.model, termination=cfg.episodic,
                                value_head=cfg.value_target == "expectile").to(self.device)
        self.model.eval()
        m = self.model
        rest = [p for name, p in m.named_parameters() if p.requires_grad and not name.startswith(("encoder.", "prior."))]
        self._model_parameters = [*m.encoder.parameters(), *rest]  # everything but the prior
        self.optimizer = adam(
            [{"params": m.encoder.parameters(), "lr": cfg.lr * cfg.enc_lr_scale}, {"params": rest}], lr=cfg.lr
        )
        self.prior_optimizer = adam(m.prior.parameters(), lr=cfg.lr, eps=1e-5)
        self.q_scale = RunningScale(cfg.tau).to(self.device)
        self.planner = MPPIPlanner(m, action_dim, cfg.planner, cfg.discount)
        self._warm_means: dict[bool, torch.Tensor | None] = {True: None, False: None}

    @property
    def sequence_length(self) -> int:  # type: ignore[override]
        return self.cfg.planner.horizon

    # ----------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Plan (or, with ``mpc=False``, query the prior) for a batch of observations.

        Evaluation (``deterministic=True``) and exploration keep separate warm starts, so an
        evaluation in the middle of a training episode leaves the episode's plan alone.
        """
        z = self.model.encode(obs)
        if not self.cfg.mpc:
            prior = self.model.pi(z)
            return prior.mean if deterministic else prior.action
        warm = self._warm_means[deterministic]
        if warm is not None and warm.shape[0] != z.shape[0]:
            warm = None
        action, self._warm_means[deterministic] = self.planner.plan(z, warm, explore=not deterministic)
        return action

    def reset(self, num_envs: int, deterministic: bool) -> None:
        """New episodes begin in every env of the acting stream: forget its warm start."""
        self._warm_means[deterministic] = None

    def episodes_ended(self, ended: np.ndarray, deterministic: bool) -> None:
        """Sub-envs ``ended`` (a mask) reset themselves: their next plan starts cold (a zero
        warm mean is what :meth:`MPPIPlanner.plan` starts from without one)."""
        warm = self._warm_means[deterministic]
        if warm is not None and len(ended) == warm.shape[0]:
            warm[torch.as_tensor(ended, device=warm.device)] = 0.0

    def start_online(self) -> None:
        super().start_online()
        self.planner = MPPIPlanner(self.model, self.action_dim, self.cfg.planner, self.cfg.discount)

    # --------------------------------------------------------------- learning
    def _td_targets(self, batch: Batch, next_z: torch.Tensor) -> torch.Tensor:
        if self.cfg.value_target == "expectile":
            next_value = self.model.value(next_z)
        else:
            next_value = self.model.q(next_z, self.model.pi(next_z).action, "min", target=True)
        return batch.rewards + self.cfg.discount * (1.0 - batch.dones) * next_value

    def _model_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Metrics]:
        """Total model loss, the latent rollout ``[H+1, B, latent]``, the target Q of the dataset
        actions along it (expectile mode; AWR reuses it) and metrics."""
        cfg, m = self.cfg, self.model
        horizon = batch.actions.shape[0]
        rho = cfg.rho ** torch.arange(horizon, device=self.device, dtype=torch.float32)
        with torch.no_grad():
            next_z = m.encode(batch.next_observations)
            td_target = self._td_targets(batch, next_z)
        z = m.encode(batch.observations[0])
        zs, consistency = [z], torch.zeros((), device=self.device)
        for t in range(horizon):
            z = m.next(z, batch.actions[t])
            consistency = consistency + rho[t] * F.mse_loss(z, next_z[t])
            zs.append(z)
        latents = torch.stack(zs)
        rollout = latents[:-1]
        reward_ce = m.bins.cross_entropy(m.reward_logits(rollout, batch.actions), batch.rewards)  # [H, B]
        q_logits = m.q_logits(rollout, batch.actions)  # [N, H, B, bins]
        value_ce = m.bins.cross_entropy(q_logits, td_target.expand(q_logits.shape[0], *td_target.shape))
        consistency = consistency / horizon
        reward_loss = (rho * reward_ce.mean(-1)).sum() / horizon
        value_loss = (rho * value_ce.mean(-1)).sum() / (horizon * q_logits.shape[0])
        total = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
        info = {"consistency_loss": consistency.detach(), "reward_loss": reward_loss.detach(),
                "value_loss": value_loss.detach(), "td_target": td_target.mean().detach()}
        if cfg.episodic:
            termination_loss = F.binary_cross_entropy_with_logits(m.termination_logit(latents[1:]), batch.dones)
            total = total + cfg.termination_coef * termination_loss
            info["termination_loss"] = termination_loss.detach()
        q_data = None
        if cfg.value_target == "expectile":
            with torch.no_grad():
                q_data = m.q(rollout.detach(), batch.actions, "min", target=True)
            v_logits = m.value_logits(rollout)
            v = m.bins.decode(v_logits)
            weight = expectile_weight(q_data - v, cfg.expectile).detach().squeeze(-1)  # [H, B]
            v_ce = weight * m.bins.cross_entropy(v_logits, q_data)
            v_loss = (rho * v_ce.mean(-1)).sum() / horizon
            total = total + cfg.value_coef * v_loss
            info.update(v_loss=v_loss.detach(), v=v.mean().detach())
        return total, latents, q_data, info

    def _prior_loss(
        self, latents: torch.Tensor, batch: Batch, q_data: torch.Tensor | None
    ) -> tuple[torch.Tensor, Metrics]:
        """TD-MPC2's scaled-Q + entropy objective, or FOWM's AWR on dataset actions (weights from
        ``q_data``, the target Q of those actions, and the freshly updated V)."""
        cfg, m = self.cfg, self.model
        if cfg.prior_objective == "awr":
            states = latents[:-1]
            rho = cfg.rho ** torch.arange(states.shape[0], device=self.device, dtype=torch.float32)
            with torch.no_grad():
                advantage = q_data - m.value(states)
                weight = torch.exp(cfg.awr_beta * advantage).clamp(max=cfg.awr_max_weight)
            # log N(a; tanh(mu), I) up to a constant, as in FOWM's code
            log_lik = -0.5 * (m.pi(states).mean - batch.actions).pow(2).sum(-1, keepdim=True)
            loss = -((weight * log_lik).mean(dim=(1, 2)) * rho).mean()
            return loss, {"prior_loss": loss.detach(), "awr_weight": weight.mean().detach()}
        rho = cfg.rho ** torch.arange(latents.shape[0], device=self.device, dtype=torch.float32)
        prior = m.pi(latents)
        q = m.q(latents, prior.action, "avg")
        self.q_scale.update(q[0])
        scaled_entropy = -prior.log_prob * self.action_dim
        loss = (-(cfg.entropy_coef * scaled_entropy + q / self.q_scale.value).mean(dim=(1, 2)) * rho).mean()
        return loss, {"prior_loss": loss.detach(), "prior_entropy": scaled_entropy.mean().detach() / self.action_dim,
                      "q_scale": self.q_scale.value.detach()}

    def update(self, batch: Batch) -> Metrics:
        """One model step and one prior step on a time-major sequence batch ``[H, B, ...]``."""
        self.num_updates += 1
        cfg, m = self.cfg, self.model
        m.train()
        total, latents, q_data, info = self._model_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        info["grad_norm"] = nn.utils.clip_grad_norm_(self._model_parameters, cfg.grad_clip_norm)
        self.optimizer.step()

        m.qs.requires_grad_(False).eval()  # the prior's gradient flows through Q, not into it
        try:
            prior_loss, prior_info = self._prior_loss(latents.detach(), batch, q_data)
        finally:
            m.qs.requires_grad_(True).train()
        self.prior_optimizer.zero_grad(set_to_none=True)
        prior_loss.backward()
        nn.utils.clip_grad_norm_(m.prior.parameters(), cfg.grad_clip_norm)
        self.prior_optimizer.step()
        soft_update(m.target_qs, m.qs, cfg.tau)
        m.eval()
        return {**info, **prior_info, "model_loss": total.detach()}

    # ------------------------------------------------------------ checkpoints
    def _modules(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "prior_optimizer": self.prior_optimizer,
                "q_scale": self.q_scale}

