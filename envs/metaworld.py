"""Meta-World manipulation tasks (Yu et al. 2019, v3 environments) behind a Gymnasium id.

``gymnasium.make("rlft/MetaWorld-v3", env_name="push-v3")`` builds one Sawyer task whose
object and goal positions are drawn, at every reset, from the 50 training variations of
Meta-World's MT1 benchmark. Unlike Meta-World's own ``Meta-World/MT1`` entry (which picks
the variation from the env RNG *before* ``reset(seed=...)`` seeds it), the variation here
is a function of the reset seed, so evaluation episode ``i`` is the same scene every time.

Meta-World ships a scripted expert for every task (:func:`scripted_expert`); rlft uses them
to write demonstration datasets (:mod:`rlft.offline.demos`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import gymnasium as gym
import numpy as np

ENV_ID = "rlft/MetaWorld-v3"
TASK_SEED = 0  # seed of the MT1 benchmark object that fixes the 50 training variations


class TaskVariationOnReset(gym.Wrapper):
    """Sets one of ``tasks`` before every reset: ``reset(seed=s)`` picks variation ``f(s)``;
    resets without a seed continue the wrapper's own generator."""

    def __init__(self, env: gym.Env, tasks: list[Any]):
        super().__init__(env)
        if not tasks:
            raise ValueError("TaskVariationOnReset needs at least one task")
        self.tasks = tasks
        self._task_rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._task_rng = np.random.default_rng(seed)
        self.env.unwrapped.set_task(self.tasks[int(self._task_rng.integers(len(self.tasks)))])
        return self.env.reset(seed=seed, options=options)


def make_metaworld_env(env_name: str, render_mode: str | None = None) -> gym.Env:
    """One Meta-World v3 task (e.g. ``"push-v3"``) with seeded task variations."""
    env_class, tasks = _training_variations(env_name)
    return TaskVariationOnReset(env_class(render_mode=render_mode), list(tasks))


@functools.cache
def _training_variations(env_name: str) -> tuple[type, tuple[Any, ...]]:
    """The env class and the 50 training variations of MT1 ``env_name`` (seed ``TASK_SEED``): built
    once per process, since building them takes about half a second and a vector env makes several
    (Meta-World restores numpy's global RNG afterwards, so the cache changes no random stream)."""
    import metaworld

    if env_name not in metaworld.ALL_V3_ENVIRONMENTS:
        raise KeyError(f"unknown Meta-World task {env_name!r}; known: {sorted(metaworld.ALL_V3_ENVIRONMENTS)}")
    benchmark = metaworld.MT1(env_name, seed=TASK_SEED)
    return benchmark.train_classes[env_name], tuple(benchmark.train_tasks)


def scripted_expert(env_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's hand-written policy for ``env_name``: raw observation -> action in ``[-1, 1]``."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[env_name]()
    return lambda obs: np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="rlft.envs.metaworld:make_metaworld_env", disable_env_checker=True)
