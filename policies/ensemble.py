"""Batched critic ensembles: N Q-functions evaluated in one batched matmul per layer."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class VectorizedLinear(nn.Module):
    """``members`` independent linear layers stored as ``[members, in, out]`` weights.

    Input ``[members, batch, in]`` -> output ``[members, batch, out]`` through one
    ``torch.baddbmm``. Each member is initialised like ``nn.Linear`` (Kaiming-uniform).
    """

    def __init__(self, in_features: int, out_features: int, members: int):
        super().__init__()
        self.in_features, self.out_features, self.members = in_features, out_features, members
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        for m in range(self.members):
            # Same distribution as nn.Linear: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(in), 1/sqrt(in)).
            nn.init.uniform_(self.weight[m], -bound, bound)
            nn.init.uniform_(self.bias[m], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, members={self.members}"


class VectorizedLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate affine transform per ensemble member."""

    def __init__(self, width: int, members: int, eps: float = 1e-5):
        super().__init__()
        self.width, self.eps = width, eps
        self.weight = nn.Parameter(torch.ones(members, 1, width))
        self.bias = nn.Parameter(torch.zeros(members, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, (self.width,), eps=self.eps) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """``num_critics`` Q-networks ``Q_i(s, a)`` sharing nothing but the batched compute.

    ``forward`` returns ``[num_critics, batch]``. ``layer_norm`` adds LayerNorm after each
    hidden layer (as in RLPD / WSRL), with per-member affine parameters.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_critics: int = 2,
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
    ):
        super().__init__()
        self.num_critics = num_critics
        layers: list[nn.Module] = []
        dim = obs_dim + action_dim
        for width in hidden:
            layers.append(VectorizedLinear(dim, width, num_critics))
            if layer_norm:
                layers.append(VectorizedLayerNorm(width, num_critics))
            layers.append(nn.ReLU())
            dim = width
        layers.append(VectorizedLinear(dim, 1, num_critics))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        x = x.unsqueeze(0).expand(self.num_critics, *x.shape)
        return self.net(x).squeeze(-1)
