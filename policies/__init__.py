"""Networks that act: MLP actors, batched critic ensembles, the behaviour VAE, diffusion policies
(and DPPO's fine-tunable chain), Gaussian PPO policies, residual fine-tuning over a frozen base,
image encoders."""

from rlft.policies.base import Exploration, Policy, PPOActor
from rlft.policies.diffusion import ChunkSpec, DiffusionPolicy
from rlft.policies.dppo import DPPOPolicy
from rlft.policies.encoders import ImageStateEncoder
from rlft.policies.ensemble import CriticEnsemble, VectorizedLinear
from rlft.policies.gaussian import GaussianPPOPolicy
from rlft.policies.mlp import DeterministicActor, mlp
from rlft.policies.residual import ResidualVectorEnv
from rlft.policies.vae import BehaviorVAE

__all__ = [
    "BehaviorVAE",
    "ChunkSpec",
    "CriticEnsemble",
    "DPPOPolicy",
    "DeterministicActor",
    "DiffusionPolicy",
    "Exploration",
    "GaussianPPOPolicy",
    "ImageStateEncoder",
    "PPOActor",
    "Policy",
    "ResidualVectorEnv",
    "VectorizedLinear",
    "mlp",
]
