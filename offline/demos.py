"""Demonstration datasets for manipulation tasks, written by scripted experts.

Meta-World ships a hand-written policy for every task (:func:`rlft.envs.metaworld.scripted_expert`);
Push-T has rlft's pusher (:class:`rlft.envs.pusht_controller.PushTController`).
:func:`collect_demos` runs the expert with Gaussian action noise (so demonstrations cover some
recoveries, and behaviour cloning from few of them is imperfect, which leaves fine-tuning
something to fix), keeps the successful episodes and writes them as a Minari dataset, the
same format as every other rlft dataset (images stay uint8 inside it). Training pairs with
action chunks are cut from it at load time (:func:`chunk_windows`, the way Diffusion Policy does:
Chi et al. 2023, Sec. 3.1: at every step ``t`` the condition is the observation history
``o_{t-To+1..t}`` and the target the action chunk ``a_{t..t+H-1}``; windows that reach past an
episode's start or end repeat its first observation or last action).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from rlft.envs.factory import make_env
from rlft.envs.metaworld import scripted_expert
from rlft.envs.registry import get_task
from rlft.offline.dataset import TransitionDataset
from rlft.envs.pusht_controller import PushTController
from rlft.offline.recording import EpisodeRecorder, prepare_output, write_minari_dataset

Expert = Callable[[gym.Env, Any], np.ndarray]  # (env, observation) -> action in [-1, 1]


def make_expert(task_name: str) -> tuple[Expert, Callable[[], None]]:
    """The scripted expert of a task and the function to call after every reset."""
    task = get_task(task_name)
    if task.env_id == "rlft/MetaWorld-v3":
        policy = scripted_expert(task.env_kwargs["env_name"])
        return (lambda env, obs: policy(obs)), (lambda: None)
    if task.env_id == "gym_pusht/PushT-v0":
        pusher = PushTController()
        # the pusher commands a target position in pixels; the env's actions are rescaled to [-1, 1]
        return (lambda env, obs: pusher.act(env) / 256.0 - 1.0), pusher.reset
    raise ValueError(f"no scripted expert for {task_name!r}: Meta-World tasks (mw-*) and pusht have one")


@dataclass
class DemoConfig:
    """What :func:`collect_demos` records."""

    task: str = "mw-push"  # a registered Meta-World task (``mw-<name>``) or ``pusht`` / ``pusht-state``
    episodes: int = 50  # successful demonstrations to keep
    noise: float = 0.1  # std of Gaussian noise added to the expert's actions
    seed: int = 0
    max_attempts_factor: int = 4  # give up after episodes * factor attempts


def record_demos(cfg: DemoConfig) -> tuple[list[dict[str, np.ndarray]], int]:
    """Run the noisy expert until ``cfg.episodes`` successes; returns them and the attempts used."""
    expert, on_reset = make_expert(cfg.task)
    recorder = EpisodeRecorder(make_env({"task": cfg.task}, flatten_dict=False))
    action_dim = recorder.action_space.shape[0]
    rng = np.random.default_rng(cfg.seed)
    kept: list[dict[str, np.ndarray]] = []
    attempts = 0
    with tqdm(total=cfg.episodes, desc=f"demos {cfg.task}", unit="episode", leave=False) as bar:
        while len(kept) < cfg.episodes:
            if attempts >= cfg.episodes * cfg.max_attempts_factor:
                raise RuntimeError(
                    f"{cfg.task}: only {len(kept)} of {attempts} noisy expert episodes succeeded; lower the noise"
                )
            obs, _ = recorder.reset(seed=cfg.seed * 100_003 + attempts)
            on_reset()
            attempts += 1
            done, success = False, False
            while not done:
                noise = cfg.noise * rng.standard_normal(action_dim)
                action = np.clip(expert(recorder, obs) + noise, -1.0, 1.0).astype(np.float32)
                obs, _, terminated, truncated, info = recorder.step(action)
                done, success = terminated or truncated, bool(info["success"])
            if success:
                kept.append(recorder.episodes[-1])
                bar.update(1)
    recorder.close()
    return kept, attempts


def collect_demos(cfg: DemoConfig, out_dir: str | Path, version: int = 0) -> dict:
    """Record demonstrations and write ``rlft/<task>/expert-v<version>`` under ``out_dir``."""
    out_dir = Path(out_dir).resolve()  # Minari's writer needs an absolute root
    dataset_id = f"rlft/{cfg.task}/expert-v{version}"
    prepare_output(out_dir, [dataset_id])
    episodes, attempts = record_demos(cfg)
    task = get_task(cfg.task)
    probe = make_env({"task": cfg.task}, flatten_dict=False)
    stats = write_minari_dataset(
        dataset_id,
        episodes,
        task,
        out_dir,
        algorithm_name=f"scripted-expert+gaussian-noise-{cfg.noise}",
        description=(
            f"{len(episodes)} successful episodes of the scripted expert of {cfg.task} "
            f"with N(0, {cfg.noise}^2) action noise ({attempts} attempts); sparse success reward."
        ),
        observation_space=probe.observation_space,
        action_space=probe.action_space,
    )
    probe.close()
    return dict(stats, attempts=attempts, success_rate_of_attempts=len(episodes) / attempts)


def chunk_windows(
    dataset: TransitionDataset,
    horizon: int,
    obs_history: int = 1,
    obs_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(cond [N, obs_history * obs_dim], chunks [N, horizon * action_dim])``, one per dataset step.

    ``obs_stats`` normalises observations first (the policy then sees env observations
    normalised with the same statistics)."""
    if horizon < 1 or obs_history < 1:
        raise ValueError(f"horizon and obs_history must be >= 1, got {horizon}, {obs_history}")
    obs = dataset.observations
    if obs_stats is not None:
        obs = (obs - obs_stats[0]) / obs_stats[1]
    conds, chunks = [], []
    for sl in dataset.episode_slices():
        o, a = obs[sl], dataset.actions[sl]
        n = len(a)
        steps = np.arange(n)
        hist = np.clip(steps[:, None] + np.arange(-obs_history + 1, 1)[None], 0, n - 1)
        fut = np.clip(steps[:, None] + np.arange(horizon)[None], 0, n - 1)
        conds.append(o[hist].reshape(n, -1))
        chunks.append(a[fut].reshape(n, -1))
    return np.concatenate(conds).astype(np.float32), np.concatenate(chunks).astype(np.float32)
