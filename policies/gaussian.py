"""Gaussian actors: the tanh-squashed policy of SAC / CQL / Cal-QL, IQL's Gaussian policy and PPO's."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.distributions import Normal

from rlft.policies.base import Exploration
from rlft.policies.mlp import mlp

_LOG_2 = math.log(2.0)


class GaussianActor(nn.Module):
    """``pi(a|s)`` with a Gaussian over actions in ``[-1, 1]^act_dim``.

    ``squash=True`` (SAC, Haarnoja et al. 2018, App. C): ``a = tanh(u)``, ``u ~ N(mu(s),
    sigma(s))``, with the change-of-variables correction in :meth:`log_prob`.
    ``squash=False`` (IQL, Kostrikov et al. 2021, App. B): ``a ~ N(tanh(mu(s)), sigma)``
    with a state-independent ``sigma``; samples are clipped to the action box.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        squash: bool = True,
        state_dependent_std: bool = True,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        dropout: float = 0.0,
        layer_norm: bool = False,
    ):
        super().__init__()
        self.action_dim, self.squash, self.state_dependent_std = action_dim, squash, state_dependent_std
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        out = 2 * action_dim if state_dependent_std else action_dim
        self.net = mlp(obs_dim, out, hidden, dropout=dropout, layer_norm=layer_norm)
        self.log_std = None if state_dependent_std else nn.Parameter(torch.zeros(action_dim))

    def distribution(self, obs: torch.Tensor) -> Normal:
        """The Gaussian before squashing (SAC) or over actions directly (IQL)."""
        out = self.net(obs)
        if self.state_dependent_std:
            mean, log_std = out.chunk(2, dim=-1)
        else:
            mean, log_std = out, self.log_std.expand_as(out)
        if not self.squash:
            mean = torch.tanh(mean)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        return Normal(mean, log_std.exp(), validate_args=False)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action and its log-density ``log pi(a|s)`` (summed over dims)."""
        return self._sample(self.distribution(obs))

    def sample_n(self, obs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` actions per state: ``obs [B, o]`` -> actions ``[B, n, A]``, log-densities ``[B, n]``.

        The network runs once per state, not once per sample; the noise is drawn in the order of
        ``sample(obs.repeat_interleave(n, 0))``, so with the same generator state both give the
        same actions (up to the matmul's rounding on a batch of another size).
        """
        dist = self.distribution(obs)
        shape = (obs.shape[0], n, dist.loc.shape[-1])
        return self._sample(Normal(dist.loc.unsqueeze(1).expand(shape), dist.scale.unsqueeze(1).expand(shape),
                                   validate_args=False))

    def _sample(self, dist: Normal) -> tuple[torch.Tensor, torch.Tensor]:
        u = dist.rsample()
        log_prob = dist.log_prob(u).sum(-1)
        if self.squash:  # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable.
            log_prob = log_prob - (2.0 * (_LOG_2 - u - nn.functional.softplus(-2.0 * u))).sum(-1)
        return self._to_box(u), log_prob

    def _to_box(self, u: torch.Tensor) -> torch.Tensor:
        """A draw (or the mean) of the Gaussian as an action: squashed by tanh (SAC) or clipped (IQL)."""
        return torch.tanh(u) if self.squash else u.clamp(-1.0, 1.0)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """``log pi(a|s)`` of given actions (dataset actions at the box edge are pulled in by ``eps``)."""
        dist = self.distribution(obs)
        if not self.squash:
            return dist.log_prob(actions).sum(-1)
        actions = actions.clamp(-1.0 + eps, 1.0 - eps)
        u = torch.atanh(actions)
        return (dist.log_prob(u) - torch.log1p(-actions.pow(2) + eps)).sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The mode (squashed mean) or a sample, in ``[-1, 1]``: the draw :meth:`sample` makes, without
        its log-density (acting runs once per environment step)."""
        dist = self.distribution(obs)
        return self._to_box(dist.mean if deterministic else dist.rsample())


class GaussianPPOPolicy(nn.Module):
    """PPO's Gaussian MLP policy (Schulman et al. 2017, Sec. 6.1): ``a ~ N(mu(s), diag(sigma))``
    with a state-independent ``log sigma``, learned unless ``learn_std=False`` (ResiP's released
    residual keeps it fixed at its initial value).

    ``tanh_mean`` keeps the mean inside the action box (behaviour-cloned starts); samples
    are clipped to ``[-1, 1]`` for the env (``clip_actions``) while the log-probability is
    that of the unclipped sample, which is what PPO stores. ``head_gain`` scales an orthogonal
    init of the mean head (0.01 gives a near-zero mean, as ResiP's residual head). The output
    may be a flat action chunk (an env wrapped with ``ActionChunking``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 256),
        init_log_std: float = -1.0,
        log_std_min: float = -5.0,
        log_std_max: float = 0.5,
        tanh_mean: bool = True,
        clip_actions: bool = True,
        head_gain: float | None = None,
        clip_coef: float = 0.2,
        activation: type[nn.Module] = nn.Mish,
        encoder: nn.Module | None = None,
        learn_std: bool = True,
    ):
        super().__init__()
        self.tanh_mean, self.clip_actions, self.clip_coef = tanh_mean, clip_actions, clip_coef
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.encoder = encoder  # e.g. an ImageStateEncoder; in_dim is then its input size
        self.net = mlp(encoder.out_dim if encoder is not None else in_dim, out_dim, hidden, activation=activation)
        if head_gain is not None:
            nn.init.orthogonal_(self.net[-1].weight, gain=head_gain)
            nn.init.zeros_(self.net[-1].bias)
        self.log_std = nn.Parameter(torch.full((out_dim,), float(init_log_std)), requires_grad=learn_std)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(obs if self.encoder is None else self.encoder(obs))
        return torch.tanh(out) if self.tanh_mean else out

    def distribution(self, obs: torch.Tensor) -> Normal:
        mean = self.mean(obs)
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp().expand_as(mean)
        return Normal(mean, std, validate_args=False)

    def _to_env(self, action: torch.Tensor) -> torch.Tensor:
        return action.clamp(-1.0, 1.0) if self.clip_actions else action

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self._to_env(self.mean(obs) if deterministic else self.distribution(obs).sample())

    def bc_loss(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Behaviour cloning of the mean (mean squared error)."""
        return (self.mean(obs) - actions).pow(2).mean()

    # ---- PPOActor
    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> Exploration:
        dist = self.distribution(obs)
        action = dist.sample()
        return Exploration(self._to_env(action), {"action": action}, dist.log_prob(action).sum(-1, keepdim=True))

    def evaluate(self, obs: torch.Tensor, stored: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.distribution(obs)
        return dist.log_prob(stored["action"]).sum(-1, keepdim=True), dist.entropy().sum(-1)

    def clip_coefficients(self) -> torch.Tensor:
        return torch.tensor([self.clip_coef], device=self.log_std.device)

    def advantage_weights(self) -> torch.Tensor:
        return torch.ones(1, device=self.log_std.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
