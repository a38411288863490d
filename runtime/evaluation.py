"""Evaluation protocol: N deterministic episodes in a vector env, seeded, normalised."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from rlft.runtime.progress import Progress

ActFn = Callable[[Any], Any]


@dataclass
class EvalResult:
    """Returns of ``episodes`` evaluation episodes and their normalised scores."""

    returns: list[float]
    lengths: list[int]
    return_mean: float
    return_std: float
    normalized_score: float  # mean, 100 * (R - ref_min) / (ref_max - ref_min); NaN without references
    normalized_score_std: float
    successes: list[bool] = field(default_factory=list)  # info["success"] at each episode's end, if the env says
    success_rate: float = float("nan")
    success_rate_std: float = float("nan")  # sqrt(p (1 - p)) over episodes

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(
    act: ActFn,
    vec_env: gym.vector.VectorEnv,
    episodes: int,
    seed: int,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    progress: bool = False,
) -> EvalResult:
    """Run ``episodes`` episodes, ``vec_env.num_envs`` at a time; episode ``i`` is reset with ``seed + i``.

    ``act`` maps a batch of observations to a batch of actions (the policy's deterministic
    action). Results do not depend on training state or on how many envs run in parallel.
    Observations and actions may be arrays or, for text envs, tuples of strings. A stateful
    policy (one that keeps a dialogue per env) exposes ``reset(num_envs)``, called at every
    vector reset. Where the env reports ``info["success"]``, the success rate is recorded too.
    ``progress`` shows the episodes as they finish (long evaluations of language policies).
    """
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
    returns: list[float] = []
    lengths: list[int] = []
    successes: list[bool] = []
    tracks_success = False
    n = vec_env.num_envs
    bar = Progress(episodes, "eval", enabled=progress, unit="episodes", leave=False)
    env_steps = 0  # shown beside the episode count: parallel episodes often end together
    while len(returns) < episodes:
        first = len(returns)
        count = min(n, episodes - first)
        seeds = [seed + first + i for i in range(n)]  # envs past `count` run but are not counted
        obs, _ = vec_env.reset(seed=seeds)
        if hasattr(act, "reset"):
            act.reset(n)
        ep_return = np.zeros(n)
        ep_length = np.zeros(n, dtype=int)
        ep_success = np.zeros(n, dtype=bool)
        running = np.ones(n, dtype=bool)
        running[count:] = False
        while running.any():
            obs, reward, terminated, truncated, info = vec_env.step(act(obs))
            ep_return += np.where(running, reward, 0.0)
            ep_length += running
            ended = running & (terminated | truncated)
            if "final_info" in info and "success" in info["final_info"]:
                tracks_success = True
                ep_success |= ended & info["final_info"]["success"].astype(bool)
            running &= ~ended
            if ended.any() and hasattr(act, "episodes_ended"):  # those sub-envs reset themselves
                act.episodes_ended(ended)
            env_steps += int(running.sum() + ended.sum())
            bar.set_postfix(env_steps=env_steps)
            bar.update(int(ended.sum()))
        returns.extend(ep_return[:count].tolist())
        lengths.extend(ep_length[:count].tolist())
        successes.extend(ep_success[:count].tolist())
    bar.close()
    r = np.asarray(returns)
    if ref_min_score is not None and ref_max_score is not None and np.isfinite([ref_min_score, ref_max_score]).all():
        norm = 100.0 * (r - ref_min_score) / (ref_max_score - ref_min_score)
    else:
        norm = np.full_like(r, np.nan)
    rate = float(np.mean(successes)) if tracks_success else float("nan")
    return EvalResult(
        returns=returns,
        lengths=lengths,
        return_mean=float(r.mean()),
        return_std=float(r.std()),
        normalized_score=float(norm.mean()),
        normalized_score_std=float(norm.std()),
        successes=successes,
        success_rate=rate,
        success_rate_std=float(np.sqrt(rate * (1 - rate))),
    )
