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
