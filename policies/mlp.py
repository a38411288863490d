"""Multi-layer perceptrons and the deterministic actor used by TD3-family learners."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# hidden activations a config may name (``activation: relu``)
ACTIVATIONS: dict[str, type[nn.Module]] = {"mish": nn.Mish, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int],
    dropout: float = 0.0,
    layer_norm: bool = False,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``Linear -> [Dropout] -> [LayerNorm] -> activation`` per hidden layer, then a linear head."""
    layers: list[nn.Module] = []
    dim = in_dim
    for width in hidden:
        layers.append(nn.Linear(dim, width))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        dim = width
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def uniform_init_(layer: nn.Linear, bound: float) -> None:
    """Initialise a head uniformly in ``[-bound, bound]`` (small outputs at the start)."""
    nn.init.uniform_(layer.weight, -bound, bound)
    nn.init.uniform_(layer.bias, -bound, bound)


class DeterministicActor(nn.Module):
    """``a = tanh(MLP(s))`` in ``[-1, 1]^act_dim`` (Fujimoto et al. 2018, TD3).

    Environments are wrapped to accept actions in ``[-1, 1]`` (see ``rlft.envs``), so the
    actor needs no action scale. ``dropout`` follows SPOT's actor (0.1 in its code).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        head_init: float | None = None,
    ):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden, dropout=dropout)
        if head_init is not None:
            uniform_init_(self.net[-1], head_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Noise-free action (dropout off). Exploration noise is the learner's business."""
        was_training = self.training
        self.eval()
        action = self(obs)
        self.train(was_training)
        return action
