"""Observation encoders: flat ``[state, pixels]`` vectors (a flattened Dict observation) to features.

rlft's envs flatten Dict observations in key order, so gym-pusht's ``{agent_pos, pixels}``
arrives as ``[x, y, r_0, g_0, b_0, ...]``. :class:`ImageStateEncoder` splits that vector again,
runs a small strided CNN on the image (the DrQ-v2 encoder layout, Yarats et al. 2021, scaled to
64x64 inputs) and concatenates the projected image features with the low-dimensional state.
With an observation history every frame is encoded by the same CNN. Trailing ``extra_dim``
inputs (the residual policy's base action) pass through unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ImageStateEncoder(nn.Module):
    """``[frames x (state_dim + H*W*C), extra]`` -> ``[frames x (features + state_dim), extra]``.

    Pixels are expected in ``[0, 1]`` (the env normalisation divides them by 255).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        state_dim: int,
        frames: int = 1,
        features: int = 64,
        channels: int = 32,
        extra_dim: int = 0,
    ):
        super().__init__()
        height, width, depth = (int(v) for v in image_shape)
        self.image_shape, self.state_dim, self.frames, self.extra_dim = (
            (height, width, depth),
            state_dim,
            frames,
            extra_dim,
        )
        self.cnn = nn.Sequential(
            nn.Conv2d(depth, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.cnn(torch.zeros(1, depth, height, width)).shape[1]
        self.project = nn.Sequential(nn.Linear(flat, features), nn.LayerNorm(features), nn.Tanh())
        self.frame_dim = state_dim + height * width * depth
        self.out_dim = frames * (features + state_dim) + extra_dim

    @property
    def in_dim(self) -> int:
        return self.frames * self.frame_dim + self.extra_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[-1] != self.in_dim:
            raise ValueError(f"ImageStateEncoder expects {self.in_dim} inputs, got {obs.shape[-1]}")
        batch = obs.shape[0]
        frames = obs[:, : self.frames * self.frame_dim].reshape(batch * self.frames, self.frame_dim)
        state, pixels = frames[:, : self.state_dim], frames[:, self.state_dim :]
        image = pixels.reshape(-1, *self.image_shape).permute(0, 3, 1, 2)
        encoded = torch.cat([self.project(self.cnn(image)), state], dim=-1).reshape(batch, -1)
        return torch.cat([encoded, obs[:, self.frames * self.frame_dim :]], dim=-1)


def encoded(encoder: nn.Module | None, body: nn.Module) -> nn.Module:
    """``body`` behind an optional encoder."""
    return body if encoder is None else nn.Sequential(encoder, body)
