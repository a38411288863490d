"""Policy families for on-policy fine-tuning, built from one config block (``method.policy``).

=========  ========================  ====================================  =========================
family     behaviour-cloned base     what PPO trains                       env the PPO actor sees
=========  ========================  ====================================  =========================
gaussian   Gaussian MLP (optional)   the whole Gaussian policy             chunks of ``act_steps``
dppo       diffusion policy          last ``ft_steps`` denoising steps     chunks of ``act_steps``
residual   diffusion policy (frozen) a Gaussian residual on [obs, a_base]  single steps (ResiP)
=========  ========================  ====================================  =========================

A family of your own is ``method.policy.family=<module>:<Class>`` (:class:`FamilyPlugin`,
docs/extending.md): its base is cloned and fine-tuned as the Gaussian's is, in chunks of
``act_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import gymnasium as gym
import torch
from torch import nn

from rlft.common.user_code import import_named
from rlft.policies.base import PPOActor
from rlft.policies.diffusion import ChunkSpec, DiffusionPolicy
from rlft.policies.dppo import DPPOPolicy
from rlft.policies.encoders import ImageStateEncoder
from rlft.policies.gaussian import GaussianPPOPolicy
from rlft.policies.mlp import ACTIVATIONS
from rlft.policies.residual import ResidualVectorEnv

FAMILIES = ("gaussian", "dppo", "residual")


class FamilyPlugin(Protocol):
    """A policy family of your own (``method.policy.family=<module>:<Class>``): the class builds
    the behaviour-cloned base (``bc_loss(cond, chunks)`` on flat ``[B, horizon * action_dim]``
    chunks, ``act``) and the PPO actor over it (:class:`rlft.policies.base.PPOActor`; often the
    base itself). ``cfg`` is the whole ``method.policy`` block."""

    @staticmethod
    def build_base(cfg: "FamilyConfig", obs_dim: int, action_dim: int) -> nn.Module: ...

    @staticmethod
    def build_actor(cfg: "FamilyConfig", base: nn.Module, obs_dim: int, action_dim: int) -> PPOActor: ...


def family_plugin(name: str) -> type[FamilyPlugin]:
    """The class ``<module>:<Class>`` names, with both builders; a ``ValueError`` names what is wrong."""
    _, attr, plugin = import_named(name, "method.policy.family")
    missing = [m for m in ("build_base", "build_actor") if not callable(getattr(plugin, m, None))]
    if plugin is None or missing:
        raise ValueError(f"method.policy.family={name}: {attr!r} in {name.partition(':')[0]} "
                         f"{'does not exist' if plugin is None else 'lacks ' + ', '.join(missing)} "
                         "(a policy family class has build_base and build_actor: docs/extending.md)")
    return plugin


@dataclass
class FamilyConfig:
    """Everything that shapes the policy (``method.policy`` in configs)."""

    family: str = "dppo"
    horizon: int = 4  # predicted chunk length H
    act_steps: int = 4  # executed actions per chunk
    obs_history: int = 1  # observations the policy conditions on (To)
    hidden: Sequence[int] = field(default_factory=lambda: (256, 256))
    bc_init: bool = True  # gaussian only: start from behaviour cloning (else from scratch)
    activation: str = "mish"  # hidden activation of the Gaussian and residual MLPs (policies/mlp.py ACTIVATIONS)
    tanh_mean: bool = True  # gaussian only: squash the mean into the action box (False: SB3's unsquashed mean)
    # diffusion (dppo, residual base)
    denoising_steps: int = 20
    time_dim: int = 16
    denoiser: str = "mlp"  # or "unet": Diffusion Policy's 1-D temporal U-Net
    unet_channels: Sequence[int] = field(default_factory=lambda: (64, 128))
    # DPPO (arXiv 2409.00588 App. D)
    ft_steps: int = 10
    min_sampling_std: float = 0.1
    min_logprob_std: float = 0.1
    noise_clip: float = 3.0
    gamma_denoise: float = 0.99
    clip_coef: float = 0.01
    clip_coef_base: float = 0.001
    clip_coef_rate: float = 3.0
    # Gaussian PPO / residual (arXiv 2407.16677 Sec. 4)
    init_log_std: float = -1.0
    learn_std: bool = True  # False: log std fixed at init_log_std (ResiP's released residual)
    gaussian_clip_coef: float = 0.2
    residual_scale: float = 0.1
    residual_hidden: Sequence[int] = field(default_factory=lambda: (256, 256))
    residual_head_gain: float = 0.01
    # pixel observations: flat [state, H*W*C pixels] per frame (a flattened gym-pusht Dict observation)
    image_shape: Sequence[int] | None = None  # (H, W, C); None: no image encoder
    state_dim: int = 0  # low-dimensional entries before the pixels
    image_features: int = 64

    def __post_init__(self) -> None:
        if self.image_shape is not None and len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (height, width, channels), got {self.image_shape}")
        if self.family not in FAMILIES and ":" not in self.family:
            raise ValueError(f"unknown policy family {self.family!r}; available: {FAMILIES}, or your own as "
                             "<module>:<Class>")
        if self.plugin:
            family_plugin(self.family)  # checked now: a bad name stops the run before anything is built
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; available: {sorted(ACTIVATIONS)}")
        if (self.family == "gaussian" or self.plugin) and self.horizon != self.act_steps:
            raise ValueError(f"the {self.family} family predicts exactly the executed chunk: set horizon == act_steps")

    @property
    def plugin(self) -> bool:
        """A family of the user's (``<module>:<Class>``)."""
        return ":" in self.family

    def spec(self, obs_dim: int, action_dim: int) -> ChunkSpec:
        return ChunkSpec(obs_dim, action_dim, self.horizon, self.act_steps, self.obs_history)

    @property
    def env_chunk(self) -> int:
        """Actions per agent step in the PPO env (the residual acts every step)."""
        return 1 if self.family == "residual" else self.act_steps


def build_encoder(cfg: FamilyConfig, extra_dim: int = 0) -> ImageStateEncoder | None:
    """A fresh image encoder for pixel tasks (``extra_dim`` trailing inputs pass through), else ``None``."""
    if cfg.image_shape is None:
        return None
    return ImageStateEncoder(cfg.image_shape, cfg.state_dim, cfg.obs_history, cfg.image_features, extra_dim=extra_dim)


def build_base(cfg: FamilyConfig, obs_dim: int, action_dim: int) -> nn.Module:
    """The behaviour-cloned policy: a diffusion policy, or the Gaussian policy itself."""
    if cfg.plugin:
        return family_plugin(cfg.family).build_base(cfg, obs_dim, action_dim)
    spec = cfg.spec(obs_dim, action_dim)
    encoder = build_encoder(cfg)
    if cfg.family == "gaussian":
        return GaussianPPOPolicy(
            spec.cond_dim,
            spec.chunk_dim,
            cfg.hidden,
            cfg.init_log_std,
            tanh_mean=cfg.tanh_mean,
            clip_coef=cfg.gaussian_clip_coef,
            activation=ACTIVATIONS[cfg.activation],
            encoder=encoder,
            learn_std=cfg.learn_std,
        )
    return DiffusionPolicy(
        spec,
        cfg.denoising_steps,
        cfg.hidden,
        cfg.time_dim,
        encoder=encoder,
        denoiser=cfg.denoiser,
        unet_channels=cfg.unet_channels,
    )


def build_critic_encoder(cfg: FamilyConfig, action_dim: int) -> ImageStateEncoder | None:
    """The value function's own encoder (the residual family's critic also reads the base action)."""
    return build_encoder(cfg, extra_dim=action_dim if cfg.family == "residual" else 0)


def build_actor(cfg: FamilyConfig, base: nn.Module, obs_dim: int, action_dim: int) -> PPOActor:
    """The PPO actor around a (behaviour-cloned) base."""
    if cfg.plugin:
        return family_plugin(cfg.family).build_actor(cfg, base, obs_dim, action_dim)
    if cfg.family == "gaussian":
        return base
    if cfg.family == "dppo":
        return DPPOPolicy(
            base,
            cfg.ft_steps,
            cfg.min_sampling_std,
            cfg.min_logprob_std,
            cfg.noise_clip,
            cfg.gamma_denoise,
            cfg.clip_coef,
            cfg.clip_coef_base,
            cfg.clip_coef_rate,
        )
    for p in base.parameters():
        p.requires_grad_(False)
    return GaussianPPOPolicy(
        obs_dim * cfg.obs_history + action_dim,
        action_dim,
        cfg.residual_hidden,
        cfg.init_log_std,
        tanh_mean=False,
        clip_actions=False,
        head_gain=cfg.residual_head_gain,
        clip_coef=cfg.gaussian_clip_coef,
        activation=ACTIVATIONS[cfg.activation],
        encoder=build_encoder(cfg, extra_dim=action_dim),
        learn_std=cfg.learn_std,
    )


def wrap_env(
    cfg: FamilyConfig, env: gym.vector.VectorEnv, base: nn.Module, device: str | torch.device
) -> gym.vector.VectorEnv:
    """The env the actor acts in: the residual family hides its frozen base inside it."""
    if cfg.family != "residual":
        return env
    return ResidualVectorEnv(env, base, cfg.act_steps, cfg.residual_scale, device)
