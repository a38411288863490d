"""DeepMind Control Suite tasks (Tassa et al. 2018, arXiv 1801.00690) behind a Gymnasium id.

``gymnasium.make("rlft/DMC-v0", domain="cartpole", task="balance")`` wraps one ``dm_control.suite``
task as a Gymnasium env: observations are the task's observation dict flattened in its own key
order (float32), actions are the actuator box (``[-1, 1]`` for every suite task). Suite episodes
never terminate; they end by time limit after 1,000 control steps, reported as ``truncated``.

Randomness comes from the Gymnasium generator ``np_random``: every reset draws a fresh seed from
it for the suite's own ``RandomState``, so ``reset(seed=s)`` fixes an episode and restoring
``np_random`` (exact resume, :class:`rlft.agents.online.EnvStepper`) reproduces the next one.
rlft registers tasks as ``dmc-<domain>-<task>`` with TD-MPC2's action repeat of 2
(:mod:`rlft.envs.registry`).
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

ENV_ID = "rlft/DMC-v0"


class DMControlEnv(gym.Env):
    """One ``dm_control.suite`` task with flat float32 observations."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, domain: str, task: str, render_mode: str | None = None, render_size: int = 64):
        with warnings.catch_warnings():  # headless machines: glfw warns that there is no display
            warnings.filterwarnings("ignore", message=".*DISPLAY")
            from dm_control import suite

        if (domain, task) not in suite.ALL_TASKS:
            known = sorted(f"{d}-{t}" for d, t in suite.ALL_TASKS)
            raise KeyError(f"unknown DeepMind Control task {domain}-{task}; known: {known}")
        self._random = np.random.RandomState(0)
        self._env = suite.load(domain, task, task_kwargs={"random": self._random})
        self.render_mode, self.render_size = render_mode, render_size
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32),
                                           dtype=np.float32)
        dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)

    @staticmethod
    def _flatten(observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._random.seed(int(self.np_random.integers(2**31 - 1)))
        step = self._env.reset()
        return self._flatten(step.observation), {}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape} does not match the action space {self.action_space.shape}")
        step = self._env.step(np.clip(action, self.action_space.low, self.action_space.high))
        return self._flatten(step.observation), float(step.reward or 0.0), False, step.last(), {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._env.physics.render(self.render_size, self.render_size, camera_id=0)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="rlft.envs.dm_control:DMControlEnv", disable_env_checker=True)
