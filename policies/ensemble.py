"""Critic ensembles: N Q-functions stored as stacked parameters and evaluated together.

Two kernels compute the same function of the same parameters (tested to float rounding):
``batched`` runs each layer for all members at once (one ``baddbmm``, one normalisation), which
suits accelerators; ``per_member`` runs each member's layers as plain 2-D ops (``addmm``, a fused
``layer_norm`` with its affine) and stacks the outputs once at the end. Measured on this 2-core CPU
(``python -m rlft.scripts.benchmark_updates --compare kernel --threads 1 2``,
``benchmarks/ensemble_kernel.md``): with one torch thread the second is never slower and 1.2-2.5x
faster for 10-critic SAC and Cal-QL; with two threads it is 5-7 % slower on batches of 256 rows and
1.3x faster on CQL's 2,560-row penalty batches. So ``auto`` picks ``per_member`` on CPU when torch runs
one thread or a call has at least :data:`PER_MEMBER_ROWS` rows, and ``batched`` otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class VectorizedLinear(nn.Module):
    """``members`` independent linear layers stored as ``[members, in, out]`` weights.

    Input ``[members, batch, in]`` -> output ``[members, batch, out]`` through one
    ``torch.baddbmm`` (:meth:`per_member`: a list of ``[batch, in]`` through one ``addmm`` each).
    Each member is initialised like ``nn.Linear`` (Kaiming-uniform).
    ``members`` (indices) evaluates only those members, for inputs ``[len(members), batch, in]``.
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

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        bias, weight = _select(self.bias, self.weight, members)
        return torch.baddbmm(bias, x, weight)

    def per_member(self, xs: list[torch.Tensor], members: torch.Tensor | None = None) -> list[torch.Tensor]:
        """:meth:`forward` member by member (``xs``: one ``[batch, in]`` input per member): one ``addmm`` each."""
        bias, weight = _select(self.bias, self.weight, members)
        return [torch.addmm(b, x, w) for x, w, b in zip(xs, weight.unbind(0), bias.unbind(0))]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, members={self.members}"


class VectorizedLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate affine transform per ensemble member."""

    def __init__(self, width: int, members: int, eps: float = 1e-5):
        super().__init__()
        self.width, self.eps = width, eps
        self.weight = nn.Parameter(torch.ones(members, 1, width))
        self.bias = nn.Parameter(torch.zeros(members, 1, width))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """All members at once: one normalisation, then the per-member affine in one ``addcmul``."""
        bias, weight = _select(self.bias, self.weight, members)
        return torch.addcmul(bias, torch.nn.functional.layer_norm(x, (self.width,), eps=self.eps), weight)

    def per_member(self, xs: list[torch.Tensor], members: torch.Tensor | None = None) -> list[torch.Tensor]:
        """:meth:`forward` member by member: one fused ``layer_norm`` each, whose kernel applies the
        affine (and computes its gradients) in the same pass."""
        bias, weight = _select(self.bias, self.weight, members)
        return [torch.nn.functional.layer_norm(x, (self.width,), w[0], b[0], self.eps)
                for x, w, b in zip(xs, weight.unbind(0), bias.unbind(0))]


def _select(bias: torch.Tensor, weight: torch.Tensor,
            members: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (bias, weight) if members is None else (bias[members], weight[members])


KERNELS = ("auto", "batched", "per_member")
PER_MEMBER_ROWS = 1024  # rows per member from which ``auto`` runs members one by one on a multi-threaded CPU


def per_member_wins(x: torch.Tensor) -> bool:
    """``auto``'s choice for an input ``[members, rows, in]`` (module docstring)."""
    return x.device.type == "cpu" and (torch.get_num_threads() == 1 or x.shape[-2] >= PER_MEMBER_ROWS)


class EnsembleMLP(nn.Sequential):
    """``members`` independent MLPs evaluated together: ``[..., in] -> [members, ..., out]``.

    Each hidden layer is ``VectorizedLinear -> [Dropout] -> [LayerNorm] -> activation``; dropout
    (independent masks per member) follows the first hidden layer only, as in TD-MPC2's Q-functions.
    ``forward(x, members)`` evaluates only the listed members (``[len(members), ..., out]``), which
    is what targets over a random pair of members cost. ``kernel`` (module docstring): ``auto``
    (:func:`per_member_wins` chooses per call), ``batched`` or ``per_member``; with
    dropout the two draw their masks in a different order.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        members: int,
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        kernel: str = "auto",
    ):
        layers: list[nn.Module] = []
        dim = in_dim
        for i, width in enumerate(hidden):
            layers.append(VectorizedLinear(dim, width, members))
            if dropout > 0 and i == 0:
                layers.append(nn.Dropout(dropout))
            if layer_norm:
                layers.append(VectorizedLayerNorm(width, members))
            layers.append(activation())
            dim = width
        layers.append(VectorizedLinear(dim, out_dim, members))
        super().__init__(*layers)
        if kernel not in KERNELS:
            raise ValueError(f"unknown ensemble kernel {kernel!r}; choose from {KERNELS}")
        self.members, self.kernel = members, kernel

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        lead, count = x.shape[:-1], self.members if members is None else len(members)
        out = x.reshape(1, -1, x.shape[-1]).expand(count, -1, -1)
        return self._layers(out, members, 0).reshape(count, *lead, -1)

    def forward_one_hot(self, hot: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` of a 0/1 input given by the indices of its ones: ``hot [B, K]`` (``K`` ones
        per row) -> ``[members, B, out]``.

        Equal to ``forward`` of the dense ``[B, in]`` input, but the first layer gathers and sums
        ``K`` weight rows (``embedding_bag``) instead of multiplying by a mostly-zero matrix: for
        one-hot character features (thousands of inputs, tens of ones) that removes nearly all
        of the network's FLOPs.
        """
        first = self[0]
        weight, bias = (first.weight, first.bias) if members is None else (first.weight[members], first.bias[members])
        out = torch.stack([nn.functional.embedding_bag(hot, w, mode="sum") for w in weight]) + bias
        return self._layers(out, members, 1)

    def _layers(self, out: torch.Tensor, members: torch.Tensor | None, start: int) -> torch.Tensor:
        layers = list(self)[start:]
        if self.kernel == "per_member" or (self.kernel == "auto" and per_member_wins(out)):
            outs = list(out.unbind(0))
            for layer in layers:
                outs = layer.per_member(outs, members) if hasattr(layer, "per_member") else [layer(o) for o in outs]
            return torch.stack(outs)
        for layer in layers:
            out = layer(out, members) if hasattr(layer, "per_member") else layer(out)
        return out


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
        self.net = EnsembleMLP(obs_dim + action_dim, 1, num_critics, hidden, layer_norm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """``Q_i(s, a)`` of every member (or of ``members`` only): ``[N, ...]`` for inputs ``[..., dim]``."""
        return self.net(torch.cat([obs, action], dim=-1), members).squeeze(-1)

    def reduced(self, obs: torch.Tensor, action: torch.Tensor, reduction: str, subset_size: int = 2) -> torch.Tensor:
        """``reduce_ensemble(self(obs, action), reduction, subset_size)``, evaluating only the members
        the reduction reads: for ``"redq"`` the random subset alone (drawn as ``reduce_ensemble`` draws it),
        which is ``subset_size / N`` of the FLOPs (WSRL: 2 of 10)."""
        if reduction != "redq":
            return reduce_ensemble(self(obs, action), reduction, subset_size)
        return self(obs, action, redq_members(self.num_critics, subset_size, obs.device)).min(0).values


TARGET_REDUCTIONS = ("min", "mean", "redq", "weighted_min_pair")


def reduce_ensemble(q: torch.Tensor, reduction: str, subset_size: int = 2) -> torch.Tensor:
    """Collapse ensemble values ``q`` of shape ``[N, B]`` into one target value per sample.

    - ``"min"``: ``min_i Q_i`` (clipped double-Q for N=2, SAC-N / EDAC for larger N).
    - ``"mean"``: ``mean_i Q_i``.
    - ``"redq"``: min over a random subset of ``subset_size`` members, one subset per call
      (REDQ, Chen et al. 2021, Alg. 1; WSRL subsamples 2 of 10).
    - ``"weighted_min_pair"``: the mean of ``min(Q_i, Q_j)`` over all ``N(N-1)/2`` pairs
      (E2O / ENOTO, Zhao et al. 2023, Sec. 4.2: the expectation of RandomMinPair).
      Computed in closed form: after sorting ascending, the k-th smallest value is the
      pair minimum of the ``N - 1 - k`` pairs it forms with larger members.
    """
    n = q.shape[0]  # q: [N, ...]; reduced over members
    if reduction == "min":
        return q.min(0).values
    if reduction == "mean":
        return q.mean(0)
    if reduction == "redq":
        return q[redq_members(n, subset_size, q.device)].min(0).values
    if reduction == "weighted_min_pair":
        if n < 2:
            raise ValueError("weighted_min_pair needs at least 2 critics")
        ascending = q.sort(0).values
        weights = torch.arange(n - 1, -1, -1, device=q.device, dtype=q.dtype) / (n * (n - 1) / 2)
        return (weights.view(-1, *[1] * (q.dim() - 1)) * ascending).sum(0)
    raise ValueError(f"unknown target reduction {reduction!r}; choose from {TARGET_REDUCTIONS}")


def redq_members(n: int, subset_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """REDQ's random subset of ``subset_size`` of ``n`` members (one ``randperm`` draw)."""
    if not 1 <= subset_size <= n:
        raise ValueError(f"redq subset size must be in [1, {n}], got {subset_size}")
    return torch.randperm(n, device=device)[:subset_size]
