"""Build environments from config: ``make_env`` for one, ``make_vector_env`` for many."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from rlft.common.suggest import did_you_mean
from rlft.common.user_code import import_named
from rlft.envs.registry import TaskSpec, get_task
from rlft.envs.wrappers import ActionChunking, FixedNormalizeObservation, SuccessReward, rescale_action

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
    cfg: Mapping[str, Any] | EnvConfig,
    obs_stats: ObsStats | None = None,
    seed: int | None = None,
    action_chunk: int = 1,
    obs_history: int = 1,
    flatten_dict: bool = True,
    inner: Callable[[gym.Env], gym.Env] | None = None,
) -> gym.Env:
    """One environment: Gymnasium env -> [success reward] -> [action repeat] -> [flattened dict obs]
    -> ``[-1, 1]`` actions -> [dataset obs normalisation] -> episode stats -> [obs history] -> [action chunks].

    ``seed`` seeds the env's RNG (via a first ``reset``) and its action space. ``action_chunk > 1``
    makes each agent action a flat chunk of that many actions (:class:`ActionChunking`); episode
    statistics still count simulator steps. ``obs_history > 1`` stacks that many observations,
    oldest first, flat (the episode's first observation pads the start). ``flatten_dict=False``
    keeps Dict observations as they are (recording datasets with uint8 images). ``inner`` wraps
    the task's env before any rlft transform (a video recorder sees every simulator step).
    """
    cfg = EnvConfig.from_mapping(cfg)
    env = make_task_env(resolve_task(cfg.task), cfg.max_episode_steps, cfg.env_kwargs)
    if inner is not None:
        env = inner(env)
    if flatten_dict and isinstance(env.observation_space, gym.spaces.Dict) and not _has_text(env.observation_space):
        env = gym.wrappers.FlattenObservation(env)  # goal-conditioned obs: keys in sorted order
    env = rescale_action(env)
    if obs_stats is not None:
        env = FixedNormalizeObservation(env, *obs_stats)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if obs_history > 1:
        stacked = gym.wrappers.FrameStackObservation(env, obs_history, padding_type="reset")
        env = gym.wrappers.FlattenObservation(stacked)
    if action_chunk > 1:
        env = ActionChunking(env, action_chunk)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def register_task_module(task: TaskSpec) -> None:
    """Make ``task.env_id`` known to ``gym.spec`` and ``gym.make`` (once per process, workers
    included): import the package that registers it, or register a user's ``module:attr``."""
    if task.env_id in gym.registry:
        return
    if task.entry_point is not None:
        gym.register(id=task.env_id, entry_point=task.entry_point)
    elif task.module is not None:
        gym.register_envs(importlib.import_module(task.module))


def make_task_env(task: TaskSpec, max_episode_steps: int | None = None, env_kwargs: Mapping[str, Any] | None = None) -> gym.Env:
    """The task as the agent sees it, before any rlft-side transform: ``gymnasium.make`` with the
    task's kwargs and time limit -> [success reward] -> [action repeat]. Dataset collection acts here."""
    register_task_module(task)
    kwargs = {**task.env_kwargs, **(env_kwargs or {})}
    env = gym.make(task.env_id, max_episode_steps=max_episode_steps or task.max_episode_steps, **kwargs)
    if task.success_key is not None:
        env = SuccessReward(env, task.success_key)
    if task.action_repeat > 1:
        env = gym.wrappers.RepeatAction(env, task.action_repeat)
    return env


def make_vector_env(
    cfg: Mapping[str, Any] | EnvConfig,
    num_envs: int,
    obs_stats: ObsStats | None = None,
    asynchronous: bool = False,
    action_chunk: int = 1,
    obs_history: int = 1,
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of :func:`make_env` in a Gymnasium vector env (sync or subprocess).

    Finished sub-envs reset in the same step (``AutoresetMode.SAME_STEP``): the returned
    observation starts the next episode and ``info["final_obs"]`` holds the last one.
    """
    cfg = EnvConfig.from_mapping(cfg)
    thunks: list[Callable[[], gym.Env]] = [
        lambda: make_env(cfg, obs_stats, action_chunk=action_chunk, obs_history=obs_history) for _ in range(num_envs)
    ]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous:
        return gym.vector.AsyncVectorEnv(thunks, autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(thunks, autoreset_mode=mode)


def _has_text(space: gym.spaces.Dict) -> bool:
    """Text-and-image observations (VLM tasks) stay Dicts."""
    return any(isinstance(sub, gym.spaces.Text) for sub in space.values())


def resolve_task(name: str) -> TaskSpec:
    """A registered task, an ad-hoc spec for any Gymnasium id (no reference scores), or a user's
    env given as ``module:attr`` (:func:`custom_task`). An unknown name is an
    :class:`~rlft.envs.registry.UnknownTaskError` naming the closest registered tasks."""
    try:
        return get_task(name)
    except KeyError:
        if name in gym.registry:
            limit = gym.registry[name].max_episode_steps or 1000
            return TaskSpec(name=name, env_id=name, ref_min_score=float("nan"), ref_max_score=float("nan"),
                            max_episode_steps=limit)
        if ":" in name:
            return custom_task(name)
        raise


@functools.cache  # made and checked once per process, not at every make_env
def custom_task(name: str) -> TaskSpec:
    """The task of ``env.task=<module>:<attr>``: the module is imported (a name it registers with
    Gymnasium, as ``gymnasium.make("module:Env-v0")`` reads it, or an ``Env`` subclass or factory it
    defines, registered here as ``<module>.<attr>``), one env is made, and its spaces are checked
    (a reset's observation must lie in the observation space). No reference scores: the metric is
    the return. The time limit is the registration's, else 1000 (``env.max_episode_steps``)."""
    module, attr, target = import_named(name, "env.task")
    module_name = module.__name__
    if attr in gym.registry:
        spec = TaskSpec(name=name, env_id=attr, ref_min_score=float("nan"), ref_max_score=float("nan"),
                        max_episode_steps=gym.registry[attr].max_episode_steps or 1000, module=module_name)
    else:
        if not callable(target):
            known = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, gym.Env)]
            raise ValueError(f"env.task={name}: module {module_name!r} has no env class, factory or registered id "
                             f"{attr!r}{did_you_mean(attr, known)}")
        spec = TaskSpec(name=name, env_id=f"{module_name}.{attr}", ref_min_score=float("nan"),
                        ref_max_score=float("nan"), entry_point=name)
    _check_spaces(spec)
    return spec


def _check_spaces(spec: TaskSpec) -> None:
    """Make ``spec``'s env once: it must be a ``gymnasium.Env`` with Gymnasium spaces whose reset
    observation lies in its observation space."""
    env = make_task_env(spec)
    try:
        for what in ("observation_space", "action_space"):
            if not isinstance(getattr(env, what, None), gym.spaces.Space):
                raise ValueError(f"env.task={spec.name}: the env's {what} is not a gymnasium.spaces.Space")
        obs, _ = env.reset(seed=0)
        if not env.observation_space.contains(obs):
            shape, dtype = getattr(obs, "shape", None), getattr(obs, "dtype", type(obs).__name__)
            raise ValueError(f"env.task={spec.name}: reset's observation (shape {shape}, dtype {dtype}) is not in the "
                             f"env's observation space {env.observation_space}; make them agree")
    finally:
        env.close()
