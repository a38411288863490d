"""Discrete regression of scalars: a categorical over fixed bins in symlog space.

TD-MPC2 (Hansen et al. 2024, arXiv 2310.16828, Sec. 3.3 and App. A) predicts rewards and
Q-values as logits over ``num_bins`` bins evenly spaced in ``symlog(x) = sign(x) log(1 + |x|)``
between ``vmin`` and ``vmax`` (101 bins in [-10, 10]), after DreamerV3 (Hafner et al. 2023).
A target scalar becomes a *two-hot* vector, its probability mass split between the two bins
around it, and the loss is the cross-entropy to it; the prediction is the symexp of the expected
bin value. This makes the losses invariant to the reward scale of the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


@dataclass(frozen=True)
class TwoHot:
    """Bins of the discrete regression; scalars are ``[..., 1]`` tensors, logits ``[..., num_bins]``."""

    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0

    def __post_init__(self) -> None:
        if self.num_bins < 2 or not self.vmax > self.vmin:
            raise ValueError(f"two-hot bins need num_bins >= 2 and vmax > vmin, got {self}")

    @property
    def bin_size(self) -> float:
        return (self.vmax - self.vmin) / (self.num_bins - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Two-hot targets ``[..., num_bins]`` of scalars ``[..., 1]`` (clipped to the bin range)."""
        position = (symlog(x).clamp(self.vmin, self.vmax) - self.vmin) / self.bin_size
        low = position.floor().clamp(max=self.num_bins - 1)
        upper_weight = position - low
        low = low.long()
        target = torch.zeros(*x.shape[:-1], self.num_bins, device=x.device, dtype=x.dtype)
        target.scatter_(-1, low, 1.0 - upper_weight)
        return target.scatter_add(-1, (low + 1).clamp(max=self.num_bins - 1), upper_weight)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted scalar ``[..., 1]``: symexp of the expected bin value."""
        bins = torch.linspace(self.vmin, self.vmax, self.num_bins, device=logits.device, dtype=logits.dtype)
        return symexp((F.softmax(logits, dim=-1) * bins).sum(-1, keepdim=True))

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy ``[...]`` between logits and the two-hot encoding of ``target [..., 1]``."""
        return -(self.encode(target) * F.log_softmax(logits, dim=-1)).sum(-1)
