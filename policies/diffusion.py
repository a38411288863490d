"""Diffusion policies over action chunks: a DDPM noise-prediction network conditioned on
an observation history (Chi et al. 2023, "Diffusion Policy", arXiv 2303.04137, Sec. 3).

Notation (Ho et al. 2020, "DDPM", Sec. 2): ``K`` denoising steps with noise schedule
``beta_1..K``, ``alpha_k = 1 - beta_k``, ``abar_k = prod_{i<=k} alpha_i``.

- forward process ``q(x_k | x_0) = N(sqrt(abar_k) x_0, (1 - abar_k) I)``;
- the network predicts the noise: ``eps_theta(x_k, k, obs)``, trained with
  ``|| eps - eps_theta(sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps, k, obs) ||^2`` (Eq. 14);
- reverse step ``p(x_{k-1} | x_k) = N(mu, beta~_k I)`` with ``x0_hat = (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k)``
  clipped to the action box, ``mu = c1_k x0_hat + c2_k x_k`` (Eq. 7) and
  ``beta~_k = beta_k (1 - abar_{k-1}) / (1 - abar_k)``.

The schedule is the cosine one (Nichol & Dhariwal 2021, Eq. 17), as in DPPO. Here the
denoising index runs ``k = K-1 .. 0`` in code (0-based), so ``x_0`` is the action chunk.
DDIM (Song et al. 2021, Eq. 12 with ``eta = 0``) gives a deterministic sampler with fewer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from rlft.policies.denoisers import ConditionalUnet1D, NoisePredictionMLP


def cosine_beta_schedule(steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """``beta_k = 1 - abar_k / abar_{k-1}`` with ``abar(t) = cos^2(((t/K + s) / (1 + s)) pi/2)``."""
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta).float()


def draw(noise: torch.Tensor | None, step: int, shape: tuple[int, ...] | torch.Size,
         device: torch.device | str) -> torch.Tensor:
    """Step ``step``'s standard normal noise: a slice of ``noise`` (``[B, steps, dim]``) when given,
    else a fresh draw from torch's RNG (one draw per step, the order sampling always used)."""
    return torch.randn(shape, device=device) if noise is None else noise[:, step]


class NoiseSchedule(nn.Module):
    """Precomputed DDPM coefficients (buffers, so they follow ``.to(device)`` and checkpoints)."""

    def __init__(self, steps: int):
        super().__init__()
        if steps < 1:
            raise ValueError(f"need at least one denoising step, got {steps}")
        betas = cosine_beta_schedule(steps).double()
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        posterior_var = betas * (1 - abar_prev) / (1 - abar)
        coefficients = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1 - abar).sqrt(),
            "posterior_var": posterior_var,
            # log of the posterior variance, clipped: beta~ is 0 at the last step (k = 0)
            "posterior_logvar": posterior_var.clamp(min=1e-20).log(),
            "mean_coef_x0": betas * abar_prev.sqrt() / (1 - abar),
            "mean_coef_xt": (1 - abar_prev) * alphas.sqrt() / (1 - abar),
        }
        for name, value in coefficients.items():
            self.register_buffer(name, value.float(), persistent=False)
        self.steps = steps

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample ``x_k ~ q(x_k | x_0)`` with the given standard-normal ``noise``."""
        return _at(self.sqrt_abar, k, x0) * x0 + _at(self.sqrt_one_minus_abar, k, x0) * noise

    def predict_x0(self, xk: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert the forward process given the predicted noise."""
        return (xk - _at(self.sqrt_one_minus_abar, k, xk) * eps) / _at(self.sqrt_abar, k, xk)

    def posterior(self, x0: torch.Tensor, xk: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of ``q(x_{k-1} | x_k, x_0)``."""
        mean = _at(self.mean_coef_x0, k, xk) * x0 + _at(self.mean_coef_xt, k, xk) * xk
        return mean, _at(self.posterior_logvar, k, xk).expand_as(mean)


def _at(values: torch.Tensor, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[k]`` shaped to broadcast against ``like`` (batch first)."""
    return values[k].reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class ChunkSpec:
    """Shapes of a chunked policy: it sees ``obs_history`` observations and predicts
    ``horizon`` actions, of which the first ``act_steps`` are executed."""

    obs_dim: int
    action_dim: int
    horizon: int = 4
    act_steps: int = 4
    obs_history: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.act_steps <= self.horizon:
            raise ValueError(f"need 1 <= act_steps <= horizon, got act_steps={self.act_steps}, horizon={self.horizon}")
        if self.obs_history < 1:
            raise ValueError(f"obs_history must be >= 1, got {self.obs_history}")

    @property
    def cond_dim(self) -> int:
        return self.obs_dim * self.obs_history

    @property
    def chunk_dim(self) -> int:
        return self.action_dim * self.horizon


class DiffusionPolicy(nn.Module):
    """DDPM policy over flat action chunks ``[B, horizon * action_dim]`` in ``[-1, 1]``.

    ``act`` returns the executed part of a sampled chunk, ``[B, act_steps * action_dim]``,
    for an env wrapped with :class:`rlft.envs.wrappers.ActionChunking`.
    """

    def __init__(
        self,
        spec: ChunkSpec,
        denoising_steps: int = 20,
        hidden: Sequence[int] = (256, 256),
        time_dim: int = 16,
        denoised_clip: float = 1.0,
        encoder: nn.Module | None = None,
        denoiser: str = "mlp",
        unet_channels: Sequence[int] = (64, 128),
    ):
        super().__init__()
        self.spec, self.denoised_clip = spec, denoised_clip
        self.schedule = NoiseSchedule(denoising_steps)
        self.encoder = encoder  # e.g. an ImageStateEncoder for pixel observations
        cond_dim = encoder.out_dim if encoder is not None else spec.cond_dim
        if denoiser == "mlp":
            self.network = NoisePredictionMLP(cond_dim, spec.chunk_dim, hidden, time_dim)
        elif denoiser == "unet":
            self.network = ConditionalUnet1D(cond_dim, spec.action_dim, spec.horizon, unet_channels, 2 * time_dim)
        else:
            raise ValueError(f"unknown denoiser {denoiser!r}; available: 'mlp', 'unet'")

    @property
    def denoising_steps(self) -> int:
        return self.schedule.steps

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """The denoiser's condition: encoded observations (the observations themselves without an encoder)."""
        return obs if self.encoder is None else self.encoder(obs)

    def bc_loss(self, obs: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """DDPM's simplified objective on dataset chunks, ``k`` uniform over all steps."""
        k = torch.randint(0, self.denoising_steps, (len(chunks),), device=chunks.device)
        noise = torch.randn_like(chunks)
        return (self.network(self.schedule.q_sample(chunks, k, noise), k, self.encode(obs)) - noise).pow(2).mean()

    def reverse_step(
        self, xk: torch.Tensor, k: torch.Tensor, cond: torch.Tensor, network: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``p(x_{k-1} | x_k, obs)`` given the encoded observation ``cond``
        (:meth:`encode`); ``network`` overrides the noise predictor (DPPO's fine-tuned copy)."""
        eps = (network or self.network)(xk, k, cond)
        x0 = self.schedule.predict_x0(xk, k, eps).clamp(-self.denoised_clip, self.denoised_clip)
        return self.schedule.posterior(x0, xk, k)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, deterministic: bool = True, noise: torch.Tensor | None = None) -> torch.Tensor:
        """A chunk by ancestral DDPM sampling. ``deterministic`` drops the noise of the last step
        (the standard DDPM output); the other steps keep their posterior noise. ``noise``
        (``[B, K + 1, chunk_dim]``: the start, then each step's) replaces the draws from torch's RNG,
        so an exported graph can take it as an input."""
        cond, batch = self.encode(obs), obs.shape[0]  # shape, not len(): a symbolic batch stays one when exported
        x = draw(noise, 0, (batch, self.spec.chunk_dim), obs.device)
        for i, k in enumerate(reversed(range(self.denoising_steps))):
            kk = torch.full((batch,), k, device=obs.device, dtype=torch.long)
            mean, logvar = self.reverse_step(x, kk, cond)
            std = torch.zeros_like(mean) if (k == 0 and deterministic) else (0.5 * logvar).exp()
            x = mean + std * draw(noise, i + 1, x.shape, obs.device)
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample_ddim(self, obs: torch.Tensor, steps: int = 5) -> torch.Tensor:
        """Deterministic DDIM sampling (``eta = 0``) over ``steps`` evenly spaced denoising indices."""
        if not 1 <= steps <= self.denoising_steps:
            raise ValueError(f"DDIM steps must be in [1, {self.denoising_steps}], got {steps}")
        sched = self.schedule
        ks = torch.linspace(self.denoising_steps - 1, 0, steps).round().long().tolist()
        cond = self.encode(obs)
        x = torch.randn(len(obs), self.spec.chunk_dim, device=obs.device)
        for i, k in enumerate(ks):
            kk = torch.full((len(obs),), k, device=obs.device, dtype=torch.long)
            eps = self.network(x, kk, cond)
            x0 = sched.predict_x0(x, kk, eps).clamp(-self.denoised_clip, self.denoised_clip)
            eps = (x - sched.sqrt_abar[k] * x0) / sched.sqrt_one_minus_abar[k]
            abar_prev = sched.alphas_cumprod[ks[i + 1]] if i + 1 < len(ks) else torch.ones(())
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        return x.clamp(-1.0, 1.0)

    def sampling_noise_shape(self) -> tuple[int, int]:
        """The per-sample shape of :meth:`sample`'s ``noise``: ``(K + 1, chunk_dim)``."""
        return self.denoising_steps + 1, self.spec.chunk_dim

    def executed(self, chunks: torch.Tensor) -> torch.Tensor:
        """The first ``act_steps`` actions of flat chunks."""
        return chunks[:, : self.spec.act_steps * self.spec.action_dim]

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self.executed(self.sample(obs, deterministic))
