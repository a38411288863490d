"""The protocol every acting network satisfies, and what on-policy fine-tuning adds to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Policy(Protocol):
    """Maps a batch of observations to a batch of actions.

    ``deterministic=True`` gives the evaluation action (mean / argmax / noise-free);
    ``False`` samples the policy's own exploration distribution.
    """

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor: ...


@dataclass
class Exploration:
    """What an on-policy actor returns when it explores a batch of observations."""

    env_action: torch.Tensor  # [B, env action dim], what the env executes
    stored: dict[str, torch.Tensor]  # per-sample tensors :meth:`PPOActor.evaluate` needs later
    log_prob: torch.Tensor  # [B, M]: one log-probability per policy decision (M = 1, or DPPO's K')


@runtime_checkable
class PPOActor(Policy, Protocol):
    """A policy family the PPO core (:mod:`rlft.agents.ppo`) can fine-tune.

    A sample may consist of ``M`` decisions with their own probability ratio (DPPO: one per
    fine-tuned denoising step); each gets its own clip range and advantage weight.
    """

    def explore(self, obs: torch.Tensor) -> Exploration: ...

    def evaluate(self, obs: torch.Tensor, stored: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(log_prob [B, M], entropy [B] or None)`` of stored samples under the current parameters."""
        ...

    def clip_coefficients(self) -> torch.Tensor:
        """``[M]`` PPO clip ranges, one per decision."""
        ...

    def advantage_weights(self) -> torch.Tensor:
        """``[M]`` factors on the advantage, one per decision."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
