"""Noise-prediction networks ``eps_theta(x_k, k, cond)`` for diffusion policies over flat action chunks.

- :class:`NoisePredictionMLP`: DPPO's layout (Ren et al. 2024, App. D): the denoising index
  through a sinusoidal embedding and a small Mish MLP, concatenated with the noisy chunk and
  the observation features, then an MLP.
- :class:`ConditionalUnet1D`: Diffusion Policy's temporal U-Net (Chi et al. 2023, Sec. 3.2 and
  App. A.2): 1-D convolutions over the chunk's time axis in residual blocks, each conditioned by
  FiLM (a per-channel scale and bias) on ``[embed(k), cond]``, halving the time axis after every
  level of ``channels`` but the last and doubling it back on the way up, with skip connections.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from rlft.policies.mlp import mlp


def time_embedding(dim: int) -> nn.Sequential:
    """Sinusoidal embedding of the denoising index, then ``Linear -> Mish -> Linear``."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 2 * dim), nn.Mish(), nn.Linear(2 * dim, dim))


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the denoising index."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=k.device) / max(half - 1, 1))
        angles = k.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class NoisePredictionMLP(nn.Module):
    """``eps_theta(x_k, k, obs)``: an MLP over ``[x_k, embed(k), obs]`` (DPPO's DiffusionMLP
    layout: a 16-dim time embedding through a small Mish MLP, then the main MLP)."""

    def __init__(self, cond_dim: int, chunk_dim: int, hidden: Sequence[int] = (256, 256), time_dim: int = 16):
        super().__init__()
        self.time = time_embedding(time_dim)
        self.net = mlp(chunk_dim + time_dim + cond_dim, chunk_dim, hidden, activation=nn.Mish)

    def forward(self, xk: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([xk, self.time(k), cond], dim=-1))


class _ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel, padding=kernel // 2),
            nn.GroupNorm(groups, out_channels),
            nn.Mish(),
        )


class _FiLMResidualBlock(nn.Module):
    """``conv -> FiLM(cond) -> conv`` plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.first = _ConvBlock(in_channels, out_channels, kernel, groups)
        self.second = _ConvBlock(out_channels, out_channels, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return self.second(scale * self.first(x) + bias) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """U-Net over ``[B, action_dim, horizon]``; input and output are flat chunks ``[B, horizon * action_dim]``.

    ``horizon`` must be divisible by ``2 ** (len(channels) - 1)``.
    """

    def __init__(
        self,
        cond_dim: int,
        action_dim: int,
        horizon: int,
        channels: Sequence[int] = (64, 128),
        time_dim: int = 32,
        kernel: int = 3,
        groups: int = 8,
    ):
        super().__init__()
        levels = len(channels)
        if horizon % (2 ** (levels - 1)):
            raise ValueError(
                f"horizon {horizon} is not divisible by 2^{levels - 1} (one halving per level but the last)"
            )
        self.action_dim, self.horizon = action_dim, horizon
        self.time = time_embedding(time_dim)
        film_dim = time_dim + cond_dim
        widths = [action_dim, *channels]
        self.down = nn.ModuleList()
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            last = i == levels - 1
            self.down.append(
                nn.ModuleList(
                    [
                        _FiLMResidualBlock(w_in, w_out, film_dim, kernel, groups),
                        _FiLMResidualBlock(w_out, w_out, film_dim, kernel, groups),
                        nn.Identity() if last else nn.Conv1d(w_out, w_out, 3, stride=2, padding=1),
                    ]
                )
            )
        self.mid = nn.ModuleList(
            [_FiLMResidualBlock(channels[-1], channels[-1], film_dim, kernel, groups) for _ in range(2)]
        )
        self.up = nn.ModuleList()
        for w_in, w_out in reversed(list(zip(widths[1:-1], widths[2:], strict=True))):
            self.up.append(
                nn.ModuleList(
                    [
                        _FiLMResidualBlock(2 * w_out, w_in, film_dim, kernel, groups),
                        _FiLMResidualBlock(w_in, w_in, film_dim, kernel, groups),
                        nn.ConvTranspose1d(w_in, w_in, 4, stride=2, padding=1),
                    ]
                )
            )
        self.head = nn.Sequential(
            _ConvBlock(channels[0], channels[0], kernel, groups), nn.Conv1d(channels[0], action_dim, 1)
        )

    def forward(self, xk: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        film = torch.cat([self.time(k), cond], dim=-1)
        x = xk.reshape(len(xk), self.horizon, self.action_dim).transpose(1, 2)
        skips = []
        for first, second, downsample in self.down:
            x = second(first(x, film), film)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, film)
        for first, second, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(second(first(x, film), film))
        return self.head(x).transpose(1, 2).reshape(len(xk), -1)
