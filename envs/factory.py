"""Build environments from config: ``make_env`` for one, ``make_vector_env`` for many."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from rlft.envs.registry import TaskSpec, get_task
from rlft.envs.wrappers import FixedNormalizeObservation, rescale_action

ObsStats = tuple[np.ndarray, np.ndarray]


@dataclass
class EnvConfig:
    """What ``configs/env/*.yaml`` holds."""

    task: str = "hopper"  # registered task name (rlft.envs.registry) or a Gymnasium id
    max_episode_steps: int | None = None  # None -> the task's own limit
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # extra gymnasium.make kwargs

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | "EnvConfig") -> "EnvConfig":
        if isinstance(cfg, EnvConfig):
            return cfg
        known = {k: cfg[k] for k in ("task", "max_episode_steps", "env_kwargs") if k in cfg}
        if "env_kwargs" in known:
            known["env_kwargs"] = dict(known["env_kwargs"] or {})
        return cls(**known)


def make_env(
    cfg: Mapping[str, Any] | EnvConfig, obs_stats: ObsStats | None = None, seed: int | None = None
) -> gym.Env:
    """One environment: Gymnasium env -> [action repeat] -> [flattened dict obs] -> ``[-1, 1]`` actions -> [dataset obs normalisation] -> episode stats.

    ``seed`` seeds the env's RNG (via a first ``reset``) and its action space.
    """
    cfg = EnvConfig.from_mapping(cfg)
    task = resolve_task(cfg.task)
    kwargs = {**task.env_kwargs, **cfg.env_kwargs}
    if task.module is not None and task.env_id not in gym.registry:
        gym.register_envs(importlib.import_module(task.module))
    env = gym.make(task.env_id, max_episode_steps=cfg.max_episode_steps or task.max_episode_steps, **kwargs)
    if task.action_repeat > 1:
        env = gym.wrappers.RepeatAction(env, task.action_repeat)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)  # goal-conditioned obs: keys in sorted order
    env = rescale_action(env)
    if obs_stats is not None:
        env = FixedNormalizeObservation(env, *obs_stats)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(
    cfg: Mapping[str, Any] | EnvConfig,
    num_envs: int,
    obs_stats: ObsStats | None = None,
    asynchronous: bool = False,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of :func:`make_env` in a Gymnasium vector env (sync or subprocess)."""
    cfg = EnvConfig.from_mapping(cfg)
    thunks: list[Callable[[], gym.Env]] = [lambda: make_env(cfg, obs_stats) for _ in range(num_envs)]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(thunks)
    return gym.vector.SyncVectorEnv(thunks)


def resolve_task(name: str) -> TaskSpec:
    """A registered task, or an ad-hoc spec for any Gymnasium id (no reference scores)."""
    try:
        return get_task(name)
    except KeyError:
        if name in gym.registry:
            return TaskSpec(name=name, env_id=name, ref_min_score=float("nan"), ref_max_score=float("nan"))
        raise
