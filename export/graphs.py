"""The modules an export traces: everything between the simulator and a policy network, as one graph.

:class:`DeployGraph` wraps every family (normalisation in, rescaling and clipping out); the
others adapt one family's policy to it: the deterministic action of an actor, DPPO's denoising
chain with its noise as an input, a world model's policy prior, and ResiP's frozen base plus
residual with the base's action chunk carried as graph state.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn


def _buffer(x: np.ndarray | None, repeat: int = 1) -> torch.Tensor:
    """``x`` as float32, tiled ``repeat`` times (an empty tensor for ``None``: no normalisation)."""
    return torch.zeros(0) if x is None else torch.as_tensor(np.tile(np.asarray(x, np.float32), repeat))


class DeployGraph(nn.Module):
    """Raw observations -> native actions. The input is ``obs_history`` raw observations, oldest
    first, flat; each is normalised ``(obs - mean) / std`` (clipped to ``+-clip`` for running
    statistics), the policy maps them (and any further inputs) to ``chunk`` actions in ``[-1, 1]``,
    flat, and each is mapped to ``low + (a + 1) / 2 (high - low)`` and clipped to ``[low, high]``.
    A policy that returns a tuple returns its action first and its next state after it; the graph
    passes the state through."""

    def __init__(self, policy: Callable[..., Any], obs_mean: np.ndarray | None, obs_std: np.ndarray | None,
                 low: np.ndarray, high: np.ndarray, obs_history: int = 1, chunk: int = 1,
                 obs_clip: float | None = None):
        super().__init__()
        self.policy, self.obs_history, self.chunk, self.obs_clip = policy, obs_history, chunk, obs_clip
        dim = len(low)
        self.register_buffer("mean", _buffer(obs_mean, obs_history))
        self.register_buffer("std", _buffer(obs_std, obs_history))
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).reshape(dim))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).reshape(dim))

    def forward(self, obs: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.mean.numel():
            obs = (obs - self.mean) / self.std
            if self.obs_clip is not None:
                obs = obs.clamp(-self.obs_clip, self.obs_clip)
        out = self.policy(obs, *inputs)
        out, state = (out[0], tuple(out[1:])) if isinstance(out, tuple) else (out, ())
        unit = out.clamp(-1.0, 1.0).unflatten(-1, (self.chunk, self.low.shape[0]))
        action = self.low + (unit + 1.0) * 0.5 * (self.high - self.low)
        action = torch.minimum(torch.maximum(action, self.low), self.high).flatten(-2)
        return (action, *state) if state else action


class Deterministic(nn.Module):
    """``owner.act(obs, deterministic=True)`` as a module holding ``network``'s weights."""

    def __init__(self, owner: Any, network: nn.Module):
        super().__init__()
        self.owner, self.network = owner, network

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.owner.act(obs, deterministic=True)


class DenoisingChain(nn.Module):
    """DPPO's evaluation action (DDPM through the frozen and the fine-tuned denoising steps, the
    last step noise-free) with its sampling noise ``[B, K + 1, chunk_dim]`` as an input, so the
    exported graph equals PyTorch exactly for the same noise."""

    def __init__(self, actor: nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.actor.base.executed(self.actor.sample_chain(obs, deterministic=True, noise=noise)[0])


class PolicyPrior(nn.Module):
    """A TD-MPC2 world model's policy prior, mean action: ``pi(encode(obs)).mean``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.model.pi(self.model.encode(obs)).mean


class ResidualStep(nn.Module):
    """One environment step of ResiP (``policies/residual.py`` ``ResidualVectorEnv``, evaluated):
    where ``chunk_step`` is 0 the frozen diffusion base samples a new chunk by DDPM with the given
    ``noise`` (else the carried ``base_chunk`` stays), the base action is the chunk's entry at
    ``chunk_step``, and the executed action is ``clip(a_base + scale * mu_res([obs, a_base]), -1, 1)``
    with PPO's running statistics, if the run kept them, normalising ``[obs, a_base]``. Returns the
    action, the chunk and the next ``chunk_step``: the caller feeds both back and zeros them at an
    episode start. The base runs only in calls that need a new chunk (``torch.cond``, an ONNX ``If``)."""

    def __init__(self, residual: nn.Module, base: nn.Module, act_steps: int, scale: float,
                 stats: tuple[np.ndarray, np.ndarray, float] | None):
        super().__init__()
        self.residual, self.base, self.act_steps, self.scale = residual, base, act_steps, scale
        self.register_buffer("z_mean", _buffer(None if stats is None else stats[0]))
        self.register_buffer("z_std", _buffer(None if stats is None else stats[1]))
        self.z_clip = None if stats is None else float(stats[2])

    def forward(self, obs: torch.Tensor, noise: torch.Tensor, base_chunk: torch.Tensor,
                chunk_step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fresh = chunk_step == 0

        def sample(obs: torch.Tensor, noise: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
            return self.base.executed(self.base.sample(obs, deterministic=True, noise=noise))

        def carry(obs: torch.Tensor, noise: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
            return carried.clone()

        chunk = torch.cond(fresh.any(), sample, carry, (obs, noise, base_chunk))
        chunk = torch.where(fresh[:, None], chunk, base_chunk)
        steps = chunk.unflatten(-1, (self.act_steps, -1))
        index = chunk_step[:, None, None].expand(-1, 1, steps.shape[-1])
        base_action = steps.gather(1, index).squeeze(1)
        z = torch.cat([obs, base_action], dim=-1)
        if self.z_mean.numel():
            z = ((z - self.z_mean) / self.z_std).clamp(-self.z_clip, self.z_clip)
        action = (base_action + self.scale * self.residual.act(z, deterministic=True)).clamp(-1.0, 1.0)
        return action, chunk, torch.remainder(chunk_step + 1, self.act_steps)
