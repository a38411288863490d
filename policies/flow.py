"""Flow-matching policies (flow Q-learning, Park, Li and Levine 2025, arXiv 2502.02538, Sec. 4).

A :class:`VectorField` ``v(s, x, t)`` is trained by flow matching to carry Gaussian noise
``x_0`` to the data's actions ``x_1`` along straight lines (target velocity ``x_1 - x_0``);
:func:`flow_actions` integrates it with ``steps`` Euler steps. FQL's one-step policy
``mu(s, z)`` is the same network without the time input. The networks follow the authors'
``utils/networks.py`` (seohongpark/fql@719d044): ``Linear -> GELU (tanh approximation, flax's
default) -> [LayerNorm]`` per hidden layer, Glorot-uniform weights and zero biases
(``variance_scaling(1, 'fan_avg', 'uniform')``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def gelu_mlp(in_dim: int, out_dim: int, hidden: Sequence[int], layer_norm: bool = False) -> nn.Sequential:
    """``Linear -> GELU -> [LayerNorm]`` per hidden layer, then a linear head (fql ``MLP``)."""
    layers: list[nn.Module] = []
    dim = in_dim
    for width in hidden:
        layers += [nn.Linear(dim, width), nn.GELU(approximate="tanh")]
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        dim = width
    layers.append(nn.Linear(dim, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class VectorField(nn.Module):
    """``v(s, x[, t])``: a velocity (with ``t``) or a one-step action map (without), ``[..., action_dim]``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int], timed: bool, layer_norm: bool = False):
        super().__init__()
        self.timed = timed
        self.net = gelu_mlp(obs_dim + action_dim + int(timed), action_dim, hidden, layer_norm)

    def forward(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        inputs = [obs, x, t] if self.timed else [obs, x]
        return self.net(torch.cat(inputs, dim=-1))


class CriticPair(nn.Module):
    """``num_critics`` independent ``Q_i(s, a)`` (fql ``Value`` ensembled): ``[num_critics, ...]``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int], num_critics: int = 2,
                 layer_norm: bool = True):
        super().__init__()
        self.members = nn.ModuleList(gelu_mlp(obs_dim + action_dim, 1, hidden, layer_norm) for _ in range(num_critics))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([obs, action], dim=-1)
        return torch.stack([member(inputs).squeeze(-1) for member in self.members])


def flow_matching_loss(field: VectorField, obs: torch.Tensor, actions: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """``E ||v(s, x_t, t) - (x_1 - x_0)||^2`` with ``x_0 ~ N(0, I)``, ``t ~ U[0, 1)``,
    ``x_t = (1 - t) x_0 + t x_1`` and ``x_1`` the data's actions (fql ``actor_loss``, BC flow loss);
    ``weights`` (broadcast to the errors) zero the entries of actions that do not exist, the mean
    still over all of them (qc ``acfql.py``: a chunk's steps past its episode)."""
    noise = torch.randn_like(actions)
    t = torch.rand(actions.shape[:-1] + (1,), device=actions.device)
    x_t = (1 - t) * noise + t * actions
    errors = (field(obs, x_t, t) - (actions - noise)).pow(2)
    return (errors if weights is None else errors * weights).mean()


@torch.no_grad()
def flow_actions(field: VectorField, obs: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate ``field`` from ``noise`` at ``t = 0`` to ``t = 1`` with ``steps`` Euler steps and clip
    to ``[-1, 1]`` (fql ``compute_flow_actions``)."""
    x = noise
    for i in range(steps):
        t = torch.full(x.shape[:-1] + (1,), i / steps, device=x.device)
        x = x + field(obs, x, t) / steps
    return x.clamp(-1.0, 1.0)
