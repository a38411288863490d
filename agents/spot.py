"""SPOT: Supported Policy Optimization (Wu et al. 2022, arXiv 2202.06239).

Three lines of difference from TD3 (:class:`rlft.agents.td3.TD3`):

1. **Density estimator** (Sec. 4.2): a conditional VAE of the behaviour policy is trained
   on the dataset first (``trainer.pretrain_steps.vae`` updates, paper: 1e5, lr 1e-3,
   beta 0.5) and then frozen.
2. **Actor loss** (Eq. 10, with the Q normalisation of Sec. 5 / App. C)::

       L(pi) = -Q(s, pi(s)) / mean|Q|  +  lambda * (-ELBO(s, pi(s)))

   where ``-ELBO`` estimates ``-log pi_beta(pi(s)|s)`` (or its importance-weighted
   version with ``iwae=True``, Sec. 4.3) and ``mean|Q|`` is detached.
3. **Online fine-tuning** (Sec. 5.3): the same objective keeps running on the growing
   buffer with Gaussian exploration noise; optionally lambda is cooled linearly, as
   ``lambda * max(lambda_end, 1 - u / lambda_cool_steps)`` after ``u`` online updates: it
   falls towards 0 and is held at the floor ``lambda * lambda_end`` from
   ``u = (1 - lambda_end) * lambda_cool_steps`` on (0.8 of the steps with the default 0.2).

Hyperparameters default to the paper's Gym-MuJoCo settings: TD3 defaults, lr 3e-4, actor
dropout 0.1, state normalisation, VAE 750-750 with latent ``2 * action_dim``. ``lambda`` is
chosen per dataset; the authors tuned it on the D4RL datasets (their configs: 0.1 for
hopper-weak and hopper-weak-replay, 0.05 for halfcheetah-weak), and rlft's datasets of
the same names are its own, weaker collections, so those values are starting points rather
than tuned ones (``configs/dataset/*.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlft.agents.optim import adam
from rlft.agents.base import Metrics
from rlft.agents.replay_buffer import Batch
from rlft.agents.td3 import Q1, TD3, TD3Config, UpdateFn
from rlft.policies.vae import BehaviorVAE


@dataclass
class SPOTConfig(TD3Config):
    """SPOT = TD3 hyperparameters plus the density estimator and the support constraint."""

    actor_dropout: float = 0.1  # SPOT's actor uses dropout 0.1
    vae_hidden: int = 750  # encoder / decoder widths
    vae_latent_dim: int | None = None  # None -> 2 * action_dim
    vae_lr: float = 1e-3
    beta: float = 0.5  # KL weight of the VAE
    lambd: float = 0.1  # support-constraint weight (per dataset)
    num_samples: int = 1  # latent samples for the density estimate in the actor loss
    iwae: bool = False  # importance-weighted estimate instead of the ELBO
    normalize_q: bool = True  # divide -Q by mean|Q| (detached)
    lambda_cool: bool = True  # cool lambda linearly during online fine-tuning
    lambda_end: float = 0.2  # lambda never drops below lambd * lambda_end (reached at 0.8 * lambda_cool_steps)
    lambda_cool_steps: int = 1_000_000  # online updates over which lambda would reach 0


class SPOT(TD3):
    """TD3 with SPOT's VAE support constraint on the actor."""

    cfg: SPOTConfig

    def __init__(self, obs_dim: int, action_dim: int, cfg: SPOTConfig, device: str | torch.device = "cpu"):
        super().__init__(obs_dim, action_dim, cfg, device)
        self.vae = BehaviorVAE(obs_dim, action_dim, cfg.vae_latent_dim, cfg.vae_hidden).to(self.device)
        self.vae_optimizer = adam(self.vae.parameters(), lr=cfg.vae_lr)
        self.online_updates = 0

    @property
    def pretrain_phases(self) -> list[tuple[str, UpdateFn]]:
        return [("vae", self.update_vae)]

    def update_vae(self, batch: Batch) -> Metrics:
        """One step of behaviour-VAE training on dataset pairs ``(s, a)``."""
        self.vae.requires_grad_(True)
        loss = self.vae.elbo_loss(batch.observations, batch.actions, self.cfg.beta).mean()
        self.vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_optimizer.step()
        return {"vae_loss": loss.detach()}

    @property
    def lambd(self) -> float:
        """Current support-constraint weight (cooled online when ``lambda_cool``)."""
        if not (self.online and self.cfg.lambda_cool):
            return self.cfg.lambd
        progress = 1.0 - self.online_updates / max(1, self.cfg.lambda_cool_steps)
        return self.cfg.lambd * max(self.cfg.lambda_end, progress)

    def neg_log_behavior(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Estimate of ``-log pi_beta(a|s)`` from the frozen VAE, shape ``[B]``."""
        if self.cfg.iwae:
            return -self.vae.log_prob_iwae(obs, action, self.cfg.beta, self.cfg.num_samples)
        return self.vae.elbo_loss(obs, action, self.cfg.beta, self.cfg.num_samples)

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        obs = batch.observations
        action = self.actor(obs)
        q = self.critic(obs, action, Q1)[0]
        neg_log_beta = self.neg_log_behavior(obs, action)
        q_term = -q.mean() / q.abs().mean().detach() if self.cfg.normalize_q else -q.mean()
        lambd = self.lambd
        loss = q_term + lambd * neg_log_beta.mean()
        return loss, {
            "q_pi": q.mean().detach(),
            "neg_log_beta": neg_log_beta.mean().detach(),
            "neg_log_beta_max": neg_log_beta.max().detach(),
            "lambda": lambd,
        }

    def update(self, batch: Batch) -> Metrics:
        if self.online:
            self.online_updates += 1
        self.vae.requires_grad_(False)
        return super().update(batch)

    def _modules(self):
        return {**super()._modules(), "vae": self.vae, "vae_optimizer": self.vae_optimizer}

    def state_dict(self):
        return {**super().state_dict(), "online_updates": self.online_updates}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.online_updates = int(state["online_updates"])
