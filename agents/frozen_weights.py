"""A frozen copy of an LM's trained weights, swapped in to score sequences under an earlier policy.

GRPO's KL term (DeepSeekMath eq. 4) scores the sampled tokens under the policy RL started from, and
ArCHer's opt-in trust region under the actor as it was before the iteration's actor steps. Both keep
only the parameters that train (with LoRA, the adapters) and swap them into the live model for the
scoring pass instead of holding a second model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class FrozenWeights:
    """The trainable parameters of ``model`` as they are now (``weights``: name -> tensor)."""

    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.weights = weights if weights is not None else {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model runs with the frozen weights inside the block and its own ones after it."""
        params = dict(self.model.named_parameters())

        def swap() -> None:
            for name, frozen in self.weights.items():
                params[name].data, self.weights[name] = frozen, params[name].data

        with torch.no_grad():
            swap()
        try:
            yield
        finally:
            with torch.no_grad():
                swap()
