"""Networks that act: MLP actors, batched critic ensembles, the behaviour VAE."""

from rlft.policies.base import Policy
from rlft.policies.ensemble import CriticEnsemble, VectorizedLinear
from rlft.policies.mlp import DeterministicActor, mlp
from rlft.policies.vae import BehaviorVAE

__all__ = ["BehaviorVAE", "CriticEnsemble", "DeterministicActor", "Policy", "VectorizedLinear", "mlp"]
