"""Residual fine-tuning over a frozen base policy (ResiP: Ankile et al. 2024, "From Imitation
to Refinement", arXiv 2407.16677, Sec. 4).

The frozen base (a behaviour-cloned diffusion policy) predicts action chunks; at every
environment step a Gaussian residual policy sees the observation *and* the base action and
outputs a correction, and the executed action is ``a = clip(a_base + scale * a_res)`` with
``scale = 0.1`` (the paper's residual action scale). PPO trains the residual on the sparse
success reward with the base untouched.

Here the base lives in a vector-env wrapper: :class:`ResidualVectorEnv` runs the base,
keeps each sub-env's remaining chunk, and exposes ``[obs, a_base]`` as observation and the
residual as action. Residual PPO is then ordinary Gaussian PPO on the wrapped env, and the
same evaluator scores it. With a zero residual the wrapped env executes the base policy's
actions exactly.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlft.policies.base import Policy


class ResidualVectorEnv(gym.vector.VectorWrapper):
    """Observation ``[obs, a_base]``, action ``a_res``; executes ``clip(a_base + scale * a_res, -1, 1)``.

    ``base.act(obs)`` must return the executed part of a chunk, ``[B, act_steps * action_dim]``
    (e.g. :meth:`rlft.policies.diffusion.DiffusionPolicy.act`); a sub-env asks for a new chunk
    when its chunk is used up or its episode ended. The wrapped vector env must autoreset in
    the same step (:func:`rlft.envs.make_vector_env` does).
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        base: Policy,
        act_steps: int,
        scale: float = 0.1,
        device: str | torch.device = "cpu",
        deterministic_base: bool = True,
    ):
        super().__init__(env)
        space = env.single_action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"ResidualVectorEnv needs flat Box actions, got {space}")
        if getattr(env, "autoreset_mode", None) != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError("ResidualVectorEnv needs a vector env with autoreset_mode=SAME_STEP")
        self.base, self.act_steps, self.scale = base, act_steps, scale
        self.device, self.deterministic_base = torch.device(device), deterministic_base
        self.action_dim = space.shape[0]
        obs_dim = env.single_observation_space.shape[0]
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim + self.action_dim,), np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, (self.action_dim,), np.float32)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._chunks = np.zeros((self.num_envs, act_steps, self.action_dim), dtype=np.float32)
        self._index = np.zeros(self.num_envs, dtype=np.int64)
        self._obs: np.ndarray | None = None

    def _base_chunks(self, obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        chunk = self.base.act(obs_t, deterministic=self.deterministic_base).cpu().numpy()
        return chunk.reshape(len(obs), self.act_steps, self.action_dim)

    def _refill(self, envs: np.ndarray) -> None:
        if envs.any():
            self._chunks[envs] = self._base_chunks(self._obs[envs])
            self._index[envs] = 0

    def base_action(self) -> np.ndarray:
        """The base actions the sub-envs execute next (before the residual), ``[num_envs, action_dim]``."""
        return self._chunks[np.arange(self.num_envs), self._index]

    def _augment(self, obs: np.ndarray, base_action: np.ndarray) -> np.ndarray:
        return np.concatenate([obs, base_action], axis=-1).astype(np.float32)

    def reset(self, *, seed: Any = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = np.asarray(obs, dtype=np.float32)
        self._refill(np.ones(self.num_envs, dtype=bool))
        return self._augment(self._obs, self.base_action()), info

    def step(self, actions):
        residual = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, self.action_dim)
        executed = np.clip(self.base_action() + self.scale * residual, -1.0, 1.0)
        obs, reward, terminated, truncated, info = self.env.step(executed)
        done = np.asarray(terminated) | np.asarray(truncated)
        self._obs = np.asarray(obs, dtype=np.float32)
        self._index += 1
        self._refill(done | (self._index >= self.act_steps))
        if done.any() and "final_obs" in info:
            info = dict(info)
            final = info["final_obs"]
            augmented = np.empty(self.num_envs, dtype=object)
            ended = np.flatnonzero(done)
            last = np.stack([np.asarray(final[i], dtype=np.float32) for i in ended])
            base_at_end = self._base_chunks(last)[:, 0]
            for j, i in enumerate(ended):
                augmented[i] = self._augment(last[j], base_at_end[j])
            info["final_obs"] = augmented
        return self._augment(self._obs, self.base_action()), reward, terminated, truncated, info
