"""MPPI planning in a learned latent space, guided by a policy prior and optionally penalised by
the epistemic uncertainty of the value ensemble.

TD-MPC2 (Hansen et al. 2024, arXiv 2310.16828, Sec. 3.4, after MPPI, Williams et al. 2015):
each decision optimises a ``horizon``-step action sequence for ``iterations`` rounds. A round
evaluates ``num_samples`` sequences -- ``num_pi_trajs`` rolled out by the policy prior, the rest
drawn from a Gaussian ``N(mean, std)`` clipped to ``[-1, 1]`` -- by their latent return
``sum_t gamma^t R(z_t, a_t) + gamma^H Q(z_H, p(z_H))`` (``Q`` the average of two random members;
FOWM takes their minimum, ``terminal_reduce="min"``), keeps the ``num_elites`` best and refits
``mean``/``std`` to them with weights ``exp(temperature * (value - max))``. The executed action is
an elite's first action drawn by those weights, plus ``std_0`` noise when exploring. The mean is
warm-started from the previous decision's, shifted by one step.

FOWM (Feng et al. 2023, arXiv 2310.16029, Sec. 4.2, Eq. 4) regularises the planner with the
epistemic uncertainty of the model: every step's value is lowered by ``uncertainty_cost`` times
the standard deviation of the Q-ensemble at that step's latent state and action, so plans avoid
states where the members disagree -- those the offline data did not cover.

Every state in a batch is planned for independently, in one batched computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from rlft.policies.world_model import random_pair, reduce_pair


@dataclass
class MPPIConfig:
    """Planner settings (TD-MPC2's defaults; ``uncertainty_cost=0`` is TD-MPC2, FOWM used 1-20)."""

    horizon: int = 3
    iterations: int = 6
    num_samples: int = 512  # sequences per iteration, policy-prior rollouts included
    num_elites: int = 64
    num_pi_trajs: int = 24  # sequences proposed by the policy prior
    temperature: float = 0.5
    min_std: float = 0.05
    max_std: float = 2.0
    uncertainty_cost: float = 0.0  # FOWM's lambda: value penalty per unit of Q-ensemble std
    terminal_reduce: str = "avg"  # the terminal value of two random Q members: "avg" (TD-MPC2) or "min" (FOWM)

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.iterations < 1:
            raise ValueError(f"horizon and iterations must be >= 1, got {self.horizon}, {self.iterations}")
        if not 0 <= self.num_pi_trajs < self.num_samples:
            raise ValueError(f"num_pi_trajs ({self.num_pi_trajs}) must be in [0, num_samples={self.num_samples})")
        if not 1 <= self.num_elites <= self.num_samples:
            raise ValueError(f"num_elites ({self.num_elites}) must be in [1, num_samples={self.num_samples}]")
        if self.uncertainty_cost < 0:
            raise ValueError(f"uncertainty_cost must be >= 0, got {self.uncertainty_cost}")
        if self.terminal_reduce not in ("avg", "min"):
            raise ValueError(f"terminal_reduce must be 'avg' or 'min', got {self.terminal_reduce!r}")


class PlanningModel(Protocol):
    """What the planner needs of a latent model (:class:`rlft.policies.world_model.WorldModel` has it)."""

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor: ...

    def reward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor: ...

    def terminated(self, z: torch.Tensor) -> torch.Tensor | None: ...

    def q(self, z: torch.Tensor, action: torch.Tensor, reduce: str = "min", target: bool = False) -> torch.Tensor: ...

    def q_values(self, z: torch.Tensor, action: torch.Tensor, target: bool = False) -> torch.Tensor: ...

    def pi(self, z: torch.Tensor): ...  # -> an object with ``.action``


class MPPIPlanner:
    """Plans for a batch of latent states ``z [B, latent]``; returns actions ``[B, A]``."""

    def __init__(self, model: PlanningModel, action_dim: int, cfg: MPPIConfig, discount: float):
        self.model, self.action_dim, self.cfg, self.discount = model, action_dim, cfg, discount

    def uncertainty(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Epistemic uncertainty ``[..., 1]``: the Q-ensemble's standard deviation (FOWM)."""
        return self.model.q_values(z, action).std(0)

    @torch.no_grad()
    def trajectory_values(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Value ``[M, 1]`` of action sequences ``[H, M, A]`` from latent states ``z [M, latent]``."""
        lam = self.cfg.uncertainty_cost
        value = torch.zeros(z.shape[0], 1, device=z.device)
        alive = torch.ones_like(value)  # 0 once the model predicts the episode has ended
        discount = 1.0
        for action in actions:
            if lam > 0:
                value = value - discount * alive * lam * self.uncertainty(z, action)
            reward = self.model.reward(z, action)
            z = self.model.next(z, action)
            value = value + discount * alive * reward
            ended = self.model.terminated(z)
            if ended is not None:
                alive = alive * (1 - ended)
            discount *= self.discount
        action = self.model.pi(z).action
        if lam > 0:  # one pass of every member gives both the value and its spread
            members = self.model.q_values(z, action)
            terminal = reduce_pair(members[random_pair(members.shape[0])], self.cfg.terminal_reduce)
            terminal = terminal - lam * members.std(0)
        else:
            terminal = self.model.q(z, action, reduce=self.cfg.terminal_reduce)
        return value + discount * alive * terminal

    def _prior_sequences(self, z: torch.Tensor) -> torch.Tensor:
        """``[H, B, num_pi_trajs, A]`` action sequences rolled out by the policy prior."""
        b, p = z.shape[0], self.cfg.num_pi_trajs
        z = z.repeat_interleave(p, 0)
        actions = []
        for t in range(self.cfg.horizon):
            actions.append(self.model.pi(z).action)
            if t < self.cfg.horizon - 1:
                z = self.model.next(z, actions[-1])
        return torch.stack(actions).view(self.cfg.horizon, b, p, self.action_dim)

    @torch.no_grad()
    def plan(
        self, z: torch.Tensor, warm_mean: torch.Tensor | None = None, explore: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(actions [B, A], mean [B, H, A])``; pass ``mean`` back as ``warm_mean`` at the next step
        of the same episodes (``None`` at an episode's first step)."""
        cfg, (b, h, a) = self.cfg, (z.shape[0], self.cfg.horizon, self.action_dim)
        s, p = cfg.num_samples, cfg.num_pi_trajs
        mean = torch.zeros(h, b, a, device=z.device)
        if warm_mean is not None:
            mean[:-1] = warm_mean.transpose(0, 1)[1:]
        std = torch.full((h, b, a), cfg.max_std, device=z.device)
        z_all = z.repeat_interleave(s, 0)
        prior = self._prior_sequences(z) if p > 0 else torch.empty(h, b, 0, a, device=z.device)
        for _ in range(cfg.iterations):
            noise = torch.randn(h, b, s - p, a, device=z.device)
            sampled = (mean.unsqueeze(2) + std.unsqueeze(2) * noise).clamp(-1, 1)
            actions = torch.cat([prior, sampled], dim=2)  # [H, B, S, A]
            value = self.trajectory_values(z_all, actions.reshape(h, b * s, a)).view(b, s).nan_to_num(0.0)
            elite_value, elite_idx = value.topk(cfg.num_elites, dim=1)  # [B, K]
            elites = actions.gather(2, elite_idx.view(1, b, -1, 1).expand(h, b, -1, a))  # [H, B, K, A]
            score = torch.softmax(cfg.temperature * elite_value, dim=1)  # exp(T (v - max)), normalised
            weights = score.view(1, b, -1, 1)
            mean = (weights * elites).sum(2)
            std = (weights * (elites - mean.unsqueeze(2)).pow(2)).sum(2).sqrt().clamp(cfg.min_std, cfg.max_std)
        chosen = torch.multinomial(score, 1).view(1, b, 1, 1).expand(h, b, 1, a)
        action = elites.gather(2, chosen)[0, :, 0]
        if explore:
            action = action + std[0] * torch.randn_like(action)
        return action.clamp(-1, 1), mean.transpose(0, 1).contiguous()
