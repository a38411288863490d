"""Recording episodes from a policy and writing them as a Minari dataset.

Shared by the dataset collectors (:mod:`rlft.offline.collection` for MuJoCo locomotion,
:mod:`rlft.offline.maze_collection` for the sparse-reward maze).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterable

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from tqdm.auto import tqdm

from rlft.envs.factory import register_task_module
from rlft.envs.registry import TaskSpec


class EpisodeRecorder(gym.Wrapper):
    """Keeps every finished episode seen through this env as a Minari episode buffer."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.episodes: list[dict[str, np.ndarray]] = []
        self.episode_end_steps: list[int] = []
        self.total_steps = 0
        self._current: dict[str, list] | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._current = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        assert self._current is not None, "step() called before reset()"
        self.total_steps += 1
        self._current["observations"].append(obs)
        self._current["actions"].append(np.asarray(action, dtype=np.float32))
        self._current["rewards"].append(float(reward))
        self._current["terminations"].append(bool(terminated))
        self._current["truncations"].append(bool(truncated))
        if terminated or truncated:
            self.episodes.append(self._finished())
            self.episode_end_steps.append(self.total_steps)
            self._current = None
        return obs, reward, terminated, truncated, info

    def _finished(self) -> dict:
        assert self._current is not None
        return {k: _stack(v) for k, v in self._current.items()}


def _stack(values: list) -> np.ndarray | dict[str, np.ndarray]:
    """Stack a list of observations; Dict observations become a dict of stacked arrays (Minari's layout)."""
    if values and isinstance(values[0], dict):
        return {k: np.stack([v[k] for v in values]) for k in values[0]}
    return np.asarray(values)


def rollout_episodes(
    env: gym.Env,
    act: Callable[[np.ndarray], np.ndarray],
    transitions: int,
    seed: int,
    desc: str,
    on_reset: Callable[[], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Collect whole episodes until at least ``transitions`` steps; the last episode is cut
    (marked truncated) so the dataset has exactly ``transitions`` steps. ``on_reset`` is
    called after every reset (e.g. to let a scripted policy pick a new target)."""
    recorder = EpisodeRecorder(env)
    obs, _ = recorder.reset(seed=seed)
    with tqdm(total=transitions, desc=desc, unit="step", leave=False) as bar:
        while recorder.total_steps < transitions:
            obs, _, terminated, truncated, _ = recorder.step(act(obs))
            bar.update(1)
            if terminated or truncated:
                obs, _ = recorder.reset()
                if on_reset is not None:
                    on_reset()
            elif recorder.total_steps == transitions:
                recorder._current["truncations"][-1] = True
                recorder.episodes.append(recorder._finished())
    return recorder.episodes


def evaluate_policy(env: gym.Env, act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int) -> float:
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            ret += float(reward)
            done = terminated or truncated
        returns.append(ret)
    return float(np.mean(returns))


def prepare_output(out_dir: Path, dataset_ids: Iterable[str]) -> None:
    """Refuse to overwrite existing datasets and point Minari's writer at ``out_dir``."""
    for dataset_id in dataset_ids:
        if (out_dir / dataset_id).exists():
            raise FileExistsError(f"{out_dir / dataset_id} exists; remove it or bump --version")
    os.environ["MINARI_DATASETS_PATH"] = str(out_dir)


def task_env_spec(task: TaskSpec) -> gym.envs.registration.EnvSpec:
    """The Gymnasium spec of ``task`` as rlft makes it: the registered spec with the task's
    ``gymnasium.make`` kwargs and time limit, so a dataset records the env it was collected in
    (and :func:`rlft.offline.loaders.load_task_dataset` can check it)."""
    register_task_module(task)
    spec = gym.spec(task.env_id)
    return dataclasses.replace(spec, kwargs={**spec.kwargs, **task.env_kwargs}, max_episode_steps=task.max_episode_steps)


def write_minari_dataset(
    dataset_id: str,
    episodes: list[dict[str, np.ndarray]],
    task: TaskSpec,
    out_dir: Path,
    algorithm_name: str,
    description: str,
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    env_spec: gym.envs.registration.EnvSpec | None = None,
) -> dict:
    """Write ``episodes`` with Minari's own writer under ``out_dir`` (``MINARI_DATASETS_PATH``
    must point there) and return the dataset's statistics. Pass the spaces when the recorded
    observations are a wrapped (e.g. flattened) view of the environment's, and ``env_spec`` when
    the env was made otherwise than the task makes it (default: :func:`task_env_spec`)."""
    env_spec = env_spec or task_env_spec(task)
    buffers = [
        EpisodeBuffer(
            id=i,
            observations=ep["observations"],
            actions=ep["actions"],
            rewards=ep["rewards"],
            terminations=ep["terminations"],
            truncations=ep["truncations"],
        )
        for i, ep in enumerate(episodes)
    ]
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        env=env_spec,
        algorithm_name=algorithm_name,
        author="rlft",
        ref_min_score=task.ref_min_score,
        ref_max_score=task.ref_max_score,
        description=description,
        data_format="hdf5",
        eval_env=env_spec,
        author_email="rlft@users.noreply.github.com",
        code_permalink="rlft/offline",
        observation_space=observation_space,
        action_space=action_space,
    )
    returns = np.array([ep["rewards"].sum() for ep in episodes])
    return {
        "id": dataset_id,
        "path": str(Path(out_dir) / dataset_id),
        "episodes": len(episodes),
        "transitions": int(sum(len(ep["rewards"]) for ep in episodes)),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "normalized_score_mean": float(
            100 * (returns.mean() - task.ref_min_score) / (task.ref_max_score - task.ref_min_score)
        ),
    }
