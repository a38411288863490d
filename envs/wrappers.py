"""Wrappers every rlft environment can stack: action rescaling, observation normalisation
with fixed (dataset) statistics, and episode statistics.

Action rescaling and episode statistics reuse Gymnasium's wrappers (``RescaleAction``,
``RecordEpisodeStatistics``); only normalisation with *frozen* statistics is ours, since
Gymnasium's ``NormalizeObservation`` keeps updating running moments.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class FixedNormalizeObservation(gym.ObservationWrapper):
    """``(obs - mean) / std`` with statistics fixed at construction (e.g. from a dataset).

    Offline-to-online learners must see online observations exactly as they saw the data,
    so the statistics never update.
    """

    def __init__(self, env: gym.Env, mean: np.ndarray, std: np.ndarray):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"FixedNormalizeObservation needs a Box observation space, got {space}")
        mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        if mean.shape != space.shape or std.shape != space.shape:
            raise ValueError(
                f"normalisation stats have shapes {mean.shape}/{std.shape} but observations have shape {space.shape}"
            )
        if (std <= 0).any():
            raise ValueError("normalisation std must be positive")
        self.mean, self.std = mean, std
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, space.shape, np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return ((observation - self.mean) / self.std).astype(np.float32)


def rescale_action(env: gym.Env) -> gym.Env:
    """Expose a ``[-1, 1]`` action box whatever the env's bounds (no-op when already so)."""
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        return env
    if np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0):
        return env
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise ValueError(f"cannot rescale an unbounded action space {space}")
    ones = np.ones(space.shape, dtype=space.dtype)
    return gym.wrappers.RescaleAction(env, -ones, ones)


def native_action_space(env: gym.Env) -> gym.Space:
    """The action space of ``env`` before :func:`rescale_action` (the simulator's own bounds)."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.RescaleAction):
            return env.env.action_space
        env = env.env
    return env.action_space


class SuccessReward(gym.Wrapper):
    """Sparse success reward: ``r = 1`` on the step where ``info[key]`` turns true, else 0,
    and the episode terminates there (the setting of DPPO's and ResiP's manipulation tasks,
    arXiv 2409.00588 Sec. 5, arXiv 2407.16677 Sec. 4). ``info["success"]`` is set on every step.
    """

    def __init__(self, env: gym.Env, key: str = "success"):
        super().__init__(env)
        self.key = key

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        if self.key not in info:
            raise KeyError(f"SuccessReward: the env's info has no {self.key!r} key (keys: {sorted(info)})")
        success = bool(info[self.key])
        info["success"] = success
        return obs, float(success), terminated or success, truncated, info


class ActionChunking(gym.Wrapper):
    """Executes a chunk of ``steps`` actions per agent step (diffusion policies' action chunks).

    The agent's action space is ``Box(low, high, (steps * action_dim,))`` (the chunk, flat,
    first action first). Rewards of the executed steps are summed (discount 1 inside a
    chunk, as DPPO's multi-step wrapper does); the chunk stops early when the episode ends.
    ``info["chunk_steps"]`` says how many simulator steps ran.
    """

    def __init__(self, env: gym.Env, steps: int):
        super().__init__(env)
        if steps < 1:
            raise ValueError(f"ActionChunking needs steps >= 1, got {steps}")
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"ActionChunking needs a flat Box action space, got {space}")
        self.steps, self.action_dim = steps, space.shape[0]
        self.action_space = gym.spaces.Box(np.tile(space.low, steps), np.tile(space.high, steps), dtype=space.dtype)

    def step(self, action):
        chunk = np.asarray(action).reshape(self.steps, self.action_dim)
        total, executed = 0.0, 0
        for a in chunk:
            obs, reward, terminated, truncated, info = self.env.step(a)
            total += float(reward)
            executed += 1
            if terminated or truncated:
                break
        info = dict(info, chunk_steps=executed)
        return obs, total, terminated, truncated, info
