"""The one protocol every acting network satisfies."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Policy(Protocol):
    """Maps a batch of observations to a batch of actions.

    ``deterministic=True`` gives the evaluation action (mean / argmax / noise-free);
    ``False`` samples the policy's own exploration distribution.
    """

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor: ...
