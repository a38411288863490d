"""Evaluation on Ray workers (``rollout.backend=ray``), equal to the local evaluator's.

Every Ray actor of rlft is an :class:`EvaluatingWorker`: besides its own job (PPO rollouts,
online transitions, or nothing for :class:`EvalWorker`) it holds the app's evaluation envs,
built on first use, and runs a contiguous block of an evaluation's episodes on them. Reusing the
rollout actors keeps evaluation inside the CPUs Ray already reserved for them (a second pool
would wait for CPUs the first one holds).

:func:`evaluate_on_workers` splits ``episodes`` into one block per worker (the first blocks one
longer when they do not divide), sends every worker the policy (a CPU object, put in Ray's
object store once), and concatenates the blocks in order. Episode ``i`` is reset with
``seed + i`` wherever it runs, and each block samples any policy noise from
``rng_seed + first`` (its first episode's index), so:

* with one worker, a Ray evaluation *is* the local one (:func:`rlft.runtime.evaluation.evaluate`
  with the same ``rng_seed``), bit for bit;
* with more, a deterministic policy gets the same episodes as locally (up to the float rounding
  of other batch shapes), and a stochastic one the same seeds, sampled from other streams.

Dead or hung workers are restarted and their block redone (:class:`rlft.runtime.ray_pool.WorkerPool`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import gymnasium as gym
import torch

from rlft.runtime.evaluation import ActFn, EvalResult, Episodes, check_episodes, run_episodes, score, seeded_rng
from rlft.runtime.ray_pool import WorkerPool, WorkerSettings

EnvBuilders = Mapping[str, Callable[[], gym.vector.VectorEnv]]  # evaluation env name -> builder


class EvaluatingWorker:
    """A Ray actor's evaluation half: named evaluation envs and :meth:`evaluate_block`."""

    def __init__(self, eval_envs: EnvBuilders):
        torch.set_num_threads(1)  # one core per worker: no oversubscription
        self._eval_builders, self._eval_envs = dict(eval_envs), {}

    def evaluate_block(self, act: ActFn, env: str, first: int, episodes: int, seed: int,
                       rng_seed: int | None) -> Episodes:
        """Episodes ``first ... first + episodes - 1`` of an evaluation on env ``env``."""
        if env not in self._eval_envs:
            self._eval_envs[env] = self._eval_builders[env]()
        with seeded_rng(act, None if rng_seed is None else rng_seed + first):
            return run_episodes(act, self._eval_envs[env], episodes, seed, first)

    def pid(self) -> int:
        return os.getpid()


class EvalWorker(EvaluatingWorker):
    """A Ray actor that only evaluates (apps whose rollouts stay in the learner's process)."""


def episode_blocks(episodes: int, workers: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each worker's block; workers past ``episodes`` get none."""
    blocks, first = [], 0
    for rank in range(workers):
        count = episodes // workers + (rank < episodes % workers)
        blocks.append((first, count))
        first += count
    return blocks


def evaluate_on_workers(pool: WorkerPool, act: ActFn, env: str, episodes: int, seed: int,
                        ref_min_score: float | None = None, ref_max_score: float | None = None,
                        rng_seed: int | None = None, version: int = 0) -> EvalResult:
    """:func:`rlft.runtime.evaluation.evaluate` of ``act`` (a CPU object Ray can pickle) on the
    workers' evaluation env ``env``; ``version`` names the policy in fault messages."""
    check_episodes(episodes)
    shared = WorkerPool.put(act)
    blocks = episode_blocks(episodes, len(pool.workers))
    calls = {rank: (shared, env, first, count, seed, rng_seed) for rank, (first, count) in enumerate(blocks) if count}
    results = pool.call("evaluate_block", calls, version)
    return score(Episodes.concat([results[rank] for rank in sorted(results)]), ref_min_score, ref_max_score)


def eval_pool(settings: WorkerSettings, eval_envs: EnvBuilders) -> WorkerPool:
    """A pool of ``settings.workers`` :class:`EvalWorker` actors."""
    actor = WorkerPool.remote_class(EvalWorker, settings)
    return WorkerPool(settings, lambda rank: actor.remote(eval_envs), "evaluation")


def cpu_copy(module: Any) -> Any:
    """A detached CPU copy of a module (or of anything with ``.to``), to send to workers."""
    import copy

    return copy.deepcopy(module).to("cpu")
