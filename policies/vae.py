"""Conditional VAE of the behaviour policy, used by SPOT as a density estimator.

SPOT (Wu et al. 2022, arXiv 2202.06239), Sec. 4.2: a conditional VAE ``p(a|s)`` with
encoder ``q(z|s,a)`` and decoder ``p(a|s,z)`` (750-750 hidden units, latent size
``2 * action_dim``) is trained on the dataset and frozen. Its negative ELBO upper-bounds
``-log pi_beta(a|s)`` and serves as the support-constraint penalty; Sec. 4.3's
importance-sampled estimate tightens the bound with ``L`` samples.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rlft.policies.mlp import mlp


class BehaviorVAE(nn.Module):
    """``q(z|s,a) = N(mu, sigma)``, ``p(a|s,z) = N(tanh(D(s,z)), beta/4)``, prior ``N(0, I)``.

    Actions are in ``[-1, 1]`` (decoder output is tanh-squashed). The encoder's log-std is
    clamped to ``[-4, 15]`` for numerical stability, as in the paper's code.
    """

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int | None = None, hidden: int = 750):
        super().__init__()
        self.latent_dim = latent_dim or 2 * action_dim
        self.encoder = mlp(obs_dim + action_dim, 2 * self.latent_dim, (hidden, hidden))
        self.decoder = mlp(obs_dim + self.latent_dim, action_dim, (hidden, hidden))

    def encode(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.encoder(torch.cat([obs, action], -1)).chunk(2, -1)
        return mean, log_std.clamp(-4.0, 15.0).exp()

    def decode(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(torch.cat([obs, z], -1)))

    def elbo_loss(self, obs: torch.Tensor, action: torch.Tensor, beta: float, num_samples: int = 1) -> torch.Tensor:
        """Per-sample ``recon + beta * KL`` (mean over action / latent dims), shape ``[B]``.

        Proportional (up to a positive scale and a constant) to the negative ELBO with a
        Gaussian decoder of variance ``beta / 4``; minimised by VAE training and used as
        ``-log pi_beta(a|s)`` in SPOT's actor loss (``num_samples`` latent draws averaged).
        """
        mean, std = self.encode(obs, action)
        z = mean + std * torch.randn((num_samples, *mean.shape), device=mean.device)
        recon = self.decode(obs.expand(num_samples, *obs.shape), z)
        recon_loss = (recon - action).pow(2).mean(dim=(0, 2))
        kl = -0.5 * (1.0 + 2.0 * std.log() - mean.pow(2) - std.pow(2)).mean(-1)
        return recon_loss + beta * kl

    def log_prob_iwae(self, obs: torch.Tensor, action: torch.Tensor, beta: float, num_samples: int = 10) -> torch.Tensor:
        """Importance-weighted estimate of ``log pi_beta(a|s)`` (SPOT Sec. 4.3), shape ``[B]``.

        ``log (1/L) sum_l p(a|s,z_l) p(z_l) / q(z_l|s,a)`` with ``z_l ~ q(z|s,a)``.
        """
        mean, std = self.encode(obs, action)
        z = mean + std * torch.randn((num_samples, *mean.shape), device=mean.device)
        recon = self.decode(obs.expand(num_samples, *obs.shape), z)
        dec_std = math.sqrt(beta / 4.0)
        log_q = torch.distributions.Normal(mean, std, validate_args=False).log_prob(z).sum(-1)
        log_p_z = torch.distributions.Normal(0.0, 1.0, validate_args=False).log_prob(z).sum(-1)
        log_p_a = torch.distributions.Normal(recon, dec_std, validate_args=False).log_prob(action).sum(-1)
        return torch.logsumexp(log_p_a + log_p_z - log_q, dim=0) - math.log(num_samples)
