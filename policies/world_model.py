"""TD-MPC2's implicit world model: encoder, latent dynamics, reward, Q-ensemble and policy prior.

Hansen, Su and Wang 2024, "TD-MPC2: Scalable, Robust World Models for Continuous Control",
arXiv 2310.16828, Sec. 3 and App. A-B. Every component is an MLP with LayerNorm and Mish:

- encoder ``h(s) -> z`` and dynamics ``d(z, a) -> z'`` end in *SimNorm*: the latent is split into
  groups of ``simnorm_dim`` and each group is a softmax, so latents live on a product of simplices
  (Sec. 3.2), which keeps multi-step rollouts bounded;
- reward ``R(z, a)`` and ``num_q`` Q-functions ``Q_i(z, a)`` are discrete regressors over 101
  symlog bins (:mod:`rlft.policies.two_hot`); the Q-functions are one batched ensemble with 1%
  dropout after their first layer and slowly-updated target copies;
- the policy prior ``p(z)`` is a tanh-squashed Gaussian with a bounded log-std, or, with
  ``prior_noise_std`` set (FOWM), TD-MPC's deterministic ``tanh(mu(z))`` sampled with fixed
  Gaussian noise of that std, clipped to +-0.3 (``TruncatedNormal.sample(clip=0.3)`` in FOWM's
  ``algorithm/tdmpc.py``): an AWR-fitted prior never trains a std.

Two optional heads: ``termination`` (TD-MPC2's episodic extension: the probability that the
episode ended on reaching ``z``, so rollouts of tasks that terminate, like Hopper, stop collecting
reward) and ``value`` (FOWM's state value ``V(z)``, Feng et al. 2023, arXiv 2310.16029, Sec. 4,
learned by expectile regression for in-sample offline TD targets). ``V`` is a discrete regressor
over the same symlog bins as ``Q``, so its loss has the scale of the others (FOWM's TD-MPC has
MSE losses for every head; rlft's TD-MPC2 heads are two-hot cross-entropies).

Parameter counts for Hopper (11-D observations, 3-D actions): the paper's 5M preset (latent 512,
MLPs 512, 5 Q-functions) has 4.9M, 6.0M with both optional heads; rlft's CPU preset (latent 128,
MLPs 256, 5 Q-functions) 1.0M, 1.2M with both heads (``configs/wm_size/``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from rlft.policies.ensemble import EnsembleMLP, VectorizedLinear
from rlft.policies.mlp import ACTIVATIONS, mlp
from rlft.policies.two_hot import TwoHot


@dataclass
class WorldModelConfig:
    """Architecture (TD-MPC2's 5M-parameter defaults, ``config.yaml`` and App. B)."""

    latent_dim: int = 512
    enc_dim: int = 256  # encoder hidden width
    num_enc_layers: int = 2  # encoder layers (hidden layers = num_enc_layers - 1)
    mlp_dim: int = 512  # hidden width of dynamics, reward, Q, policy (two hidden layers each)
    num_q: int = 5
    dropout: float = 0.01  # Q-functions, after their first layer
    simnorm_dim: int = 8
    num_bins: int = 101
    vmin: float = -10.0  # bin range in symlog space
    vmax: float = 10.0
    log_std_min: float = -10.0  # policy prior log-std range
    log_std_max: float = 2.0
    prior_noise_std: float | None = None  # None: learned log-std (TD-MPC2); FOWM: 0.05 (its min_std)
    activation: str = "mish"  # "mish" (the paper) or "silu": near-identical, much faster in torch on CPU

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        if self.latent_dim % self.simnorm_dim:
            raise ValueError(f"latent_dim {self.latent_dim} must be a multiple of simnorm_dim {self.simnorm_dim}")
        if self.num_q < 2:
            raise ValueError(f"num_q must be >= 2 (targets use a random pair), got {self.num_q}")
        if self.prior_noise_std is not None and self.prior_noise_std <= 0:
            raise ValueError(f"prior_noise_std must be > 0 (or None for a learned std), got {self.prior_noise_std}")


class SimNorm(nn.Module):
    """Simplicial normalisation (Lavoie et al. 2022): softmax over groups of ``dim`` features."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.unflatten(-1, (-1, self.dim)), dim=-1).flatten(-2)


def _latent_mlp(in_dim: int, hidden: list[int], cfg: WorldModelConfig) -> nn.Sequential:
    """An MLP whose output layer is ``Linear -> LayerNorm -> SimNorm`` (encoder, dynamics)."""
    body = mlp(in_dim, cfg.latent_dim, hidden, layer_norm=True, activation=ACTIVATIONS[cfg.activation])
    return nn.Sequential(*body, nn.LayerNorm(cfg.latent_dim), SimNorm(cfg.simnorm_dim))


def _init_weights(module: nn.Module) -> None:
    """TD-MPC2's initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, VectorizedLinear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def random_pair(members: int) -> torch.Tensor:
    """Two distinct member indices drawn uniformly (torch's global RNG)."""
    return torch.randperm(members)[:2]


def reduce_pair(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """``min`` or ``avg`` over the leading (member) dimension of two members' values."""
    if reduce == "min":
        return values.min(0).values
    if reduce == "avg":
        return values.mean(0)
    raise ValueError(f"reduce must be 'min' or 'avg', got {reduce!r}")


@dataclass
class PriorSample:
    """An action of the policy prior with what its objective needs."""

    action: torch.Tensor  # [..., A] sampled and squashed
    mean: torch.Tensor  # [..., A] tanh of the Gaussian mean (the deterministic action)
    log_prob: torch.Tensor | None  # [..., 1] log-density of ``action`` (squashing corrected); None: fixed noise


class WorldModel(nn.Module):
    """The implicit (decoder-free) world model; all inputs may carry leading time/batch dims.

    ``termination`` adds the termination head (tasks that terminate), ``value_head`` FOWM's ``V(z)``.
    """

    def __init__(
        self, obs_dim: int, action_dim: int, cfg: WorldModelConfig, termination: bool = False, value_head: bool = False
    ):
        super().__init__()
        self.cfg, self.obs_dim, self.action_dim = cfg, obs_dim, action_dim
        self.bins = TwoHot(cfg.num_bins, cfg.vmin, cfg.vmax)
        za, hidden, act = cfg.latent_dim + action_dim, [cfg.mlp_dim] * 2, ACTIVATIONS[cfg.activation]
        self.encoder = _latent_mlp(obs_dim, [cfg.enc_dim] * max(cfg.num_enc_layers - 1, 1), cfg)
        self.dynamics = _latent_mlp(za, hidden, cfg)
        self.reward_head = mlp(za, cfg.num_bins, hidden, layer_norm=True, activation=act)
        prior_out = action_dim if cfg.prior_noise_std is not None else 2 * action_dim
        self.prior = mlp(cfg.latent_dim, prior_out, hidden, layer_norm=True, activation=act)
        self.qs = EnsembleMLP(za, cfg.num_bins, cfg.num_q, hidden, layer_norm=True, activation=act,
                              dropout=cfg.dropout)
        self.termination_head = (
            mlp(cfg.latent_dim, 1, hidden, layer_norm=True, activation=act) if termination else None
        )
        self.value_head = (
            mlp(cfg.latent_dim, cfg.num_bins, hidden, layer_norm=True, activation=act) if value_head else None
        )
        self.apply(_init_weights)
        # Zero-initialised output layers: reward, Q and V start at exactly 0 (TD-MPC2's init.zero_).
        nn.init.zeros_(self.reward_head[-1].weight)
        nn.init.zeros_(self.qs[-1].weight)
        if self.value_head is not None:
            nn.init.zeros_(self.value_head[-1].weight)
        self.target_qs = copy.deepcopy(self.qs).requires_grad_(False)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> "WorldModel":
        super().train(mode)
        self.target_qs.train(False)  # target Q-functions never use dropout
        return self

    # ------------------------------------------------------------------ parts
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs)

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.dynamics(torch.cat([z, action], dim=-1))

    def reward_logits(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.reward_head(torch.cat([z, action], dim=-1))

    def reward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Predicted reward ``[..., 1]``."""
        return self.bins.decode(self.reward_logits(z, action))

    def termination_logit(self, z: torch.Tensor) -> torch.Tensor:
        if self.termination_head is None:
            raise RuntimeError("this world model has no termination head (built with termination=False)")
        return self.termination_head(z)

    def terminated(self, z: torch.Tensor) -> torch.Tensor | None:
        """``[..., 1]`` 1.0 where reaching ``z`` ends the episode; ``None`` without a termination head."""
        if self.termination_head is None:
            return None
        return (self.termination_head(z) > 0).float()

    def value_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``[..., num_bins]`` of FOWM's state value."""
        if self.value_head is None:
            raise RuntimeError("this world model has no value head (built with value_head=False)")
        return self.value_head(z)

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """FOWM's ``V(z)``, ``[..., 1]``."""
        return self.bins.decode(self.value_logits(z))

    def q_logits(
        self, z: torch.Tensor, action: torch.Tensor, target: bool = False, members: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[num_q, ..., num_bins]`` (or only ``members``)."""
        return (self.target_qs if target else self.qs)(torch.cat([z, action], dim=-1), members)

    def q_values(self, z: torch.Tensor, action: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Every member's Q-value, ``[num_q, ..., 1]``."""
        return self.bins.decode(self.q_logits(z, action, target))

    def q(self, z: torch.Tensor, action: torch.Tensor, reduce: str = "min", target: bool = False) -> torch.Tensor:
        """``min`` or ``avg`` of two members drawn at random per call (TD-MPC2's ``Q``), ``[..., 1]``."""
        return reduce_pair(self.bins.decode(self.q_logits(z, action, target, random_pair(self.cfg.num_q))), reduce)

    def pi(self, z: torch.Tensor) -> PriorSample:
        """Sample the policy prior (reparameterised)."""
        if self.cfg.prior_noise_std is not None:
            mean = torch.tanh(self.prior(z))
            noise = (self.cfg.prior_noise_std * torch.randn_like(mean)).clamp(-0.3, 0.3)
            return PriorSample(action=(mean + noise).clamp(-1.0, 1.0), mean=mean, log_prob=None)
        mu, raw_log_std = self.prior(z).chunk(2, dim=-1)
        log_std = self.cfg.log_std_min + 0.5 * (self.cfg.log_std_max - self.cfg.log_std_min) * (torch.tanh(raw_log_std) + 1)
        eps = torch.randn_like(mu)
        gaussian_log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
        action = torch.tanh(mu + eps * log_std.exp())
        log_prob = gaussian_log_prob - torch.log(torch.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
        return PriorSample(action=action, mean=torch.tanh(mu), log_prob=log_prob)
