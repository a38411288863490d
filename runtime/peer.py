"""A peer library's learner as an rlft run (``pipeline: peer``): stable-baselines3's SAC or PPO,
built from ``configs/peer/<name>.yaml``, trained in chunks of ``loop.eval_every`` environment
steps and evaluated after each by rlft's own evaluator (the same episodes, reset seeds and
normalised score as rlft's learners), so a suite compares rlft with a peer on one protocol.

SB3 keeps its replay buffer and optimiser in its own pickles, which rlft never loads, so a peer
run has one checkpoint, at its end (the policy's weights): a run killed before it starts again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rlft.common.typed_config import config_from_mapping
from rlft.envs.factory import make_env, make_vector_env, resolve_task
from rlft.runtime.evaluation import EvalResult, evaluate
from rlft.runtime.runner import Phase, Runner

ACTIVATIONS = ("relu", "tanh", "elu")  # policy_kwargs.activation_fn by name (torch.nn's ReLU, Tanh, ELU)


@dataclass
class PeerLoopConfig:
    """Budget and evaluation cadence (``loop:``)."""

    steps: int = 100_000
    eval_every: int = 5_000
    eval_episodes: int = 10
    eval_envs: int = 10
    eval_seed: int = 1_000_000


@dataclass
class PeerConfig:
    """The peer learner (``peer:``): its library's class and constructor arguments."""

    name: str
    algo: str  # sac | ppo (stable_baselines3.SAC / PPO)
    env_cfg: dict[str, Any]
    kwargs: dict[str, Any] = field(default_factory=dict)  # the constructor's keyword arguments
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    vec_normalize: dict[str, Any] | None = None  # VecNormalize's arguments (running obs/reward normalisation)

    def __post_init__(self) -> None:
        if self.algo not in ("sac", "ppo"):
            raise ValueError(f"peer.algo={self.algo!r}: rlft runs stable-baselines3's sac or ppo")
        activation = self.policy_kwargs.get("activation_fn")
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"peer.policy_kwargs.activation_fn={activation!r}: one of {list(ACTIVATIONS)}")


def build_sb3(peer: PeerConfig, seed: int) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """The SB3 learner and the observation transform its policy expects (VecNormalize's running
    statistics as they are when it is called, without updating them; or nothing)."""
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from torch import nn

    policy_kwargs = dict(peer.policy_kwargs)
    if "activation_fn" in policy_kwargs:
        activations = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}
        policy_kwargs["activation_fn"] = activations[policy_kwargs["activation_fn"]]
    env: Any = make_env(peer.env_cfg)
    if peer.vec_normalize is not None:
        env = VecNormalize(DummyVecEnv([lambda: make_env(peer.env_cfg)]), **peer.vec_normalize)
    learner = {"sac": SAC, "ppo": PPO}[peer.algo]
    model = learner("MlpPolicy", env, policy_kwargs=policy_kwargs, seed=seed, device="cpu", verbose=0, **peer.kwargs)
    return model, (env.normalize_obs if peer.vec_normalize is not None else (lambda obs: obs))


class PeerExperiment(Runner):
    """stable-baselines3 from scratch, evaluated by rlft (one phase, ``train``)."""

    pipeline: ClassVar[str] = "peer"
    axis = "environment steps"

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        settings = self.settings(cfg)
        self.loop: PeerLoopConfig = settings["loop"]
        self.peer: PeerConfig = settings["peer"]
        self.task = resolve_task(self.peer.env_cfg["task"])
        self.model, self.normalize = build_sb3(self.peer, int(cfg.seed))
        self.eval_env = make_vector_env(self.peer.env_cfg, min(self.loop.eval_envs, self.loop.eval_episodes))
        self.phases = [Phase("train", self._train, self.loop.steps)]

    @classmethod
    def settings(cls, cfg: DictConfig) -> dict[str, Any]:
        peer = OmegaConf.to_container(cfg.peer, resolve=True)
        return {"loop": config_from_mapping(PeerLoopConfig, cfg.loop, "loop"),
                "peer": config_from_mapping(PeerConfig, peer, "peer")}

    def _train(self) -> None:
        if self.phase_step == 0:
            self.evaluate()  # the untrained policy, as rlft's learners are evaluated at step 0
        while self.phase_step < self.loop.steps:
            chunk = min(self.loop.eval_every, self.loop.steps - self.phase_step)
            self.model.learn(chunk, reset_num_timesteps=False, progress_bar=False)
            done = int(self.model.num_timesteps) - self.phase_step  # PPO rounds up to whole rollouts
            self.phase_step += done
            self.step += done
            self.work += done
            self.evaluate()

    def evaluate_policy(self, phase: str) -> EvalResult:
        """SB3's deterministic action on the evaluation episodes every rlft learner meets."""
        def act(obs: np.ndarray) -> np.ndarray:
            return self.model.predict(self.normalize(obs), deterministic=True)[0]

        return evaluate(act, self.eval_env, self.loop.eval_episodes, self.loop.eval_seed, self.task.ref_min_score,
                        self.task.ref_max_score)

    def pipeline_state(self) -> dict[str, Any]:
        return {"policy": self.model.policy.state_dict()}

    def load_pipeline_state(self, state: Mapping[str, Any]) -> None:
        self.model.policy.load_state_dict(state["policy"])

    def load_pretrained(self, state: Mapping[str, Any], config: DictConfig, path: Path) -> None:
        raise ValueError(f"init_from {path}: a peer run trains from scratch")

    def describe(self) -> dict[str, Any]:
        import stable_baselines3

        return {"task": self.task.name, "method": self.peer.name,
                "source": f"stable-baselines3 {stable_baselines3.__version__}",
                "details": {"env_id": self.task.env_id, "algo": self.peer.algo}}
