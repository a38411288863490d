"""Evaluation protocol: N deterministic episodes in a vector env, seeded, normalised.

Local (:func:`evaluate`) or on Ray workers in blocks of episodes (:mod:`rlft.runtime.ray_evaluation`).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import gymnasium as gym
import numpy as np
import torch

from rlft.common.progress import Progress

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


@dataclass
class Episodes:
    """What a block of evaluation episodes produced, in episode order."""

    returns: list[float]
    lengths: list[int]
    successes: list[bool]
    tracks_success: bool  # the env reports info["success"]

    @staticmethod
    def concat(blocks: Sequence["Episodes"]) -> "Episodes":
        return Episodes([r for b in blocks for r in b.returns], [n for b in blocks for n in b.lengths],
                        [s for b in blocks for s in b.successes], any(b.tracks_success for b in blocks))


@contextlib.contextmanager
def seeded_rng(act: Any, rng_seed: int | None) -> Iterator[None]:
    """Inside: torch's global RNG (CPU and CUDA) seeded with ``rng_seed`` and, for a policy with its
    own generator, ``act.reseed(rng_seed)``; outside, torch's RNG is as it was before. So a
    stochastic sampler (DDPM noise, MPPI samples, sampled replies) scores the same policy the same
    way every time, and evaluating never shifts a training run's random stream. ``None``: no
    change (the policy samples from the caller's stream)."""
    if rng_seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rng_seed)
        if hasattr(act, "reseed"):
            act.reseed(rng_seed)
        yield


def run_episodes(act: ActFn, vec_env: gym.vector.VectorEnv, episodes: int, seed: int, first: int = 0,
                 progress: bool = False) -> Episodes:
    """Episodes ``first ... first + episodes - 1`` of an evaluation, ``vec_env.num_envs`` at a
    time; episode ``i`` is reset with ``seed + i``. (:func:`evaluate` runs them all from
    ``first=0``; Ray evaluation workers run blocks of them, :mod:`rlft.runtime.ray_evaluation`.)"""
    returns: list[float] = []
    lengths: list[int] = []
    successes: list[bool] = []
    tracks_success = False
    n = vec_env.num_envs
    bar = Progress(episodes, "eval", enabled=progress, unit="episodes", leave=False)
    env_steps = 0  # shown beside the episode count: parallel episodes often end together
    while len(returns) < episodes:
        done = len(returns)
        count = min(n, episodes - done)
        seeds = [seed + first + done + i for i in range(n)]  # envs past `count` run but are not counted
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
    return Episodes(returns, lengths, successes, tracks_success)


def score(episodes: Episodes, ref_min_score: float | None = None, ref_max_score: float | None = None) -> EvalResult:
    """Episodes summarised: mean and spread of returns, normalised scores and success."""
    r = np.asarray(episodes.returns)
    if ref_min_score is not None and ref_max_score is not None and np.isfinite([ref_min_score, ref_max_score]).all():
        norm = 100.0 * (r - ref_min_score) / (ref_max_score - ref_min_score)
    else:
        norm = np.full_like(r, np.nan)
    rate = float(np.mean(episodes.successes)) if episodes.tracks_success else float("nan")
    return EvalResult(
        returns=episodes.returns,
        lengths=episodes.lengths,
        return_mean=float(r.mean()),
        return_std=float(r.std()),
        normalized_score=float(norm.mean()),
        normalized_score_std=float(norm.std()),
        successes=episodes.successes,
        success_rate=rate,
        success_rate_std=float(np.sqrt(rate * (1 - rate))),
    )


def evaluate(
    act: ActFn,
    vec_env: gym.vector.VectorEnv,
    episodes: int,
    seed: int,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    progress: bool = False,
    rng_seed: int | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes, ``vec_env.num_envs`` at a time; episode ``i`` is reset with ``seed + i``.

    ``act`` maps a batch of observations to a batch of actions (the policy's deterministic
    action). Results do not depend on training state or on how many envs run in parallel.
    Observations and actions may be arrays or, for text envs, tuples of strings. A stateful
    policy (one that keeps a dialogue per env) exposes ``reset(num_envs)``, called at every
    vector reset. Where the env reports ``info["success"]``, the success rate is recorded too.
    ``progress`` shows the episodes as they finish (long evaluations of language policies).
    ``rng_seed``: sample any policy noise from this seed (:func:`seeded_rng`).
    """
    check_episodes(episodes)
    with seeded_rng(act, rng_seed):
        return score(run_episodes(act, vec_env, episodes, seed, progress=progress), ref_min_score, ref_max_score)


def check_episodes(episodes: int) -> None:
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")


@dataclass
class Acting:
    """A trained policy and the env it acts in, as its run evaluated it."""

    actor: Callable[[Any], Any]  # a batch of observations -> a batch of actions (reset/episodes_ended if stateful)
    # (render_mode, inner wrapper or None) -> one env as the policy sees it; the wrapper goes around the task's
    # own env, under rlft's transforms (a recorder then sees every simulator step of a chunked policy)
    make_env: Callable[[str | None, Callable[[gym.Env], gym.Env] | None], gym.Env]
    eval_episodes: int  # the run's own evaluation protocol
    eval_envs: int
    eval_seed: int
    ref_scores: tuple[float | None, float | None]
    metric: str  # eval.json's metric for this run
