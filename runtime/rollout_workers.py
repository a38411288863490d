"""PPO rollouts on Ray actors (``rollout.backend=ray``), equal to the local vector env's.

Each :class:`RolloutWorker` is a Ray actor holding a gymnasium vector env of ``envs_per_worker``
sub-envs and a CPU copy of the PPO collector (actor, critic, running statistics). Every
iteration :class:`RayRollouts` sends each worker the weights (with a policy version), the
statistics, a torch RNG state and its sub-envs' reset seeds; the worker runs the very
``PPO.collect`` the local backend runs and returns the rollout arrays, its final statistics and
its RNG state. The learner lays the workers' envs side by side (rank order) and merges the
statistics, so:

* with one worker, a Ray rollout *is* the local one, bit for bit: worker 0 samples from the
  learner's own RNG state and hands it back, and its statistics replace the learner's;
* worker ``r > 0`` samples from a generator seeded by ``(seed, version, r)``, and its sub-envs
  are the global envs ``r * M ... r * M + M - 1``, reset with the seeds the local run gives them.

A worker that dies or does not answer within ``rollout.timeout_s`` is replaced by a new actor and
its rollout redone from the same request (same weights, seeds and RNG state), so the batch is
complete and the run's results are unchanged (:class:`rlft.runtime.ray_pool.WorkerPool`).
The same workers run the app's evaluations (:mod:`rlft.runtime.ray_evaluation`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from rlft.agents.ppo import PPO, Rollout, RunningMeanStd, RunningReturnScaler
from rlft.runtime.ray_evaluation import EnvBuilders, EvaluatingWorker
from rlft.runtime.ray_pool import WorkerPool, WorkerSettings, worker_rng_state


@dataclass
class RolloutConfig(WorkerSettings):
    """Where PPO's rollouts run (``rollout:`` in the config)."""

    envs_per_worker: int | None = None  # null: loop.num_envs split evenly; set: workers x this envs in all

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.envs_per_worker is not None and self.envs_per_worker < 1:
            raise ValueError(f"rollout.envs_per_worker must be >= 1, got {self.envs_per_worker}")

    def total_envs(self, num_envs: int) -> int:
        """Sub-envs of one iteration in all (``num_envs``: ``loop.num_envs``)."""
        if self.backend == "local":
            return num_envs
        if self.envs_per_worker is not None:
            return self.workers * self.envs_per_worker
        if num_envs % self.workers:
            raise ValueError(f"loop.num_envs={num_envs} does not split over rollout.workers={self.workers}; "
                             "set rollout.envs_per_worker")
        return num_envs


@dataclass
class CollectRequest:
    """Everything one worker needs for one rollout."""

    version: int  # the policy version (PPO iterations done)
    obs_stats: dict[str, Any] | None
    reward_scaler: dict[str, Any] | None  # this worker's envs' running returns and the shared statistics
    rng: torch.Tensor  # torch CPU RNG state to sample with
    seeds: list[int]  # reset seeds of this worker's sub-envs
    steps: int  # agent steps per sub-env


@dataclass
class CollectResult:
    rollout: Rollout
    version: int
    obs_stats: dict[str, Any] | None
    reward_scaler: dict[str, Any] | None
    rng: torch.Tensor
    pid: int


def cpu_collector(ppo: PPO, num_envs: int) -> PPO:
    """A copy of ``ppo`` that can collect and nothing else: CPU modules, no optimiser, a return
    scaler for ``num_envs`` sub-envs."""
    clone = copy.copy(ppo)
    clone.actor, clone.critic = copy.deepcopy(ppo.actor).cpu(), copy.deepcopy(ppo.critic).cpu()
    clone.optimizer, clone.device = None, torch.device("cpu")
    clone.obs_stats = copy.deepcopy(ppo.obs_stats)
    clone.reward_scaler = RunningReturnScaler(num_envs, ppo.cfg.gamma) if ppo.reward_scaler is not None else None
    return clone


class RolloutWorker(EvaluatingWorker):
    """One rollout worker (a Ray actor): a vector env and a CPU copy of the collector; it also
    runs blocks of evaluations on ``eval_envs`` (:mod:`rlft.runtime.ray_evaluation`)."""

    def __init__(self, make_env: Callable[[int], gym.vector.VectorEnv], collector: PPO, num_envs: int,
                 eval_envs: EnvBuilders):
        super().__init__(eval_envs)
        self.env, self.ppo = make_env(num_envs), collector

    def collect(self, weights: dict[str, dict[str, torch.Tensor]], request: CollectRequest) -> CollectResult:
        """One rollout with ``weights`` (actor and critic state dicts, shared by every worker)."""
        ppo = self.ppo
        ppo.actor.load_state_dict(weights["actor"])
        ppo.critic.load_state_dict(weights["critic"])
        if request.obs_stats is not None:
            ppo.obs_stats.load_state_dict(request.obs_stats)
        if request.reward_scaler is not None:
            ppo.reward_scaler.load_state_dict(request.reward_scaler)
        torch.set_rng_state(request.rng)
        obs, _ = self.env.reset(seed=request.seeds)
        rollout, _ = ppo.collect(self.env, obs, request.steps)
        return CollectResult(rollout, request.version,
                             ppo.obs_stats.state_dict() if ppo.obs_stats is not None else None,
                             ppo.reward_scaler.state_dict() if ppo.reward_scaler is not None else None,
                             torch.get_rng_state(), os.getpid())


class RayRollouts:
    """The Ray backend of rlft-finetune: ``collect`` has the local ``PPO.collect``'s contract."""

    def __init__(self, cfg: RolloutConfig, make_env: Callable[[int], gym.vector.VectorEnv], ppo: PPO,
                 num_envs: int, seed: int, eval_envs: EnvBuilders | None = None):
        self.cfg, self.seed = cfg, seed
        self.envs_per_worker = num_envs // cfg.workers
        actor = WorkerPool.remote_class(RolloutWorker, cfg)
        collector = cpu_collector(ppo, self.envs_per_worker)
        self.pool = WorkerPool(cfg, lambda rank: actor.remote(make_env, collector, self.envs_per_worker,
                                                              eval_envs or {}))

    def _requests(self, ppo: PPO, seeds: Sequence[int], steps: int, version: int) -> list[CollectRequest]:
        m, requests = self.envs_per_worker, []
        obs_stats = ppo.obs_stats.state_dict() if ppo.obs_stats is not None else None  # the same for every worker
        return_stats = ppo.reward_scaler.stats.state_dict() if ppo.reward_scaler is not None else None
        for rank in range(self.cfg.workers):
            rng = torch.get_rng_state() if rank == 0 else worker_rng_state(self.seed, version, rank)
            scaler = None
            if ppo.reward_scaler is not None:
                scaler = {"returns": torch.from_numpy(ppo.reward_scaler.returns[rank * m:(rank + 1) * m].copy()),
                          "stats": return_stats}
            requests.append(CollectRequest(version, obs_stats, scaler, rng, list(seeds[rank * m:(rank + 1) * m]),
                                           steps))
        return requests

    @staticmethod
    def _weights(ppo: PPO) -> Any:
        """The actor's and critic's weights on CPU, in Ray's object store once for all workers."""
        cpu = lambda module: {k: v.detach().cpu() for k, v in module.state_dict().items()}  # noqa: E731
        return WorkerPool.put({"actor": cpu(ppo.actor), "critic": cpu(ppo.critic)})

    def collect(self, ppo: PPO, seeds: Sequence[int], steps: int, version: int) -> Rollout:
        """One rollout of every sub-env (``seeds``: their reset seeds, in global order); ``ppo``'s
        running statistics and RNG state move on exactly as a local collection moves them."""
        requests, weights = self._requests(ppo, seeds, steps, version), self._weights(ppo)
        results = self.pool.call("collect", {rank: (weights, req) for rank, req in enumerate(requests)}, version)
        ordered = [results[rank] for rank in range(self.cfg.workers)]
        self._merge_statistics(ppo, ordered)
        torch.set_rng_state(ordered[0].rng)
        return Rollout.concat([r.rollout for r in ordered], ppo.device)

    @staticmethod
    def _merge_statistics(ppo: PPO, results: list[CollectResult]) -> None:
        """The workers' running statistics, grown apart from the learner's, merged back into it
        (one worker: taken as they are)."""
        if ppo.obs_stats is not None:
            merge_running_stats(ppo.obs_stats, [r.obs_stats for r in results])
        if ppo.reward_scaler is not None:
            ppo.reward_scaler.returns = np.concatenate([r.reward_scaler["returns"].numpy() for r in results])
            merge_running_stats(ppo.reward_scaler.stats, [r.reward_scaler["stats"] for r in results])

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    def pids(self) -> list[int]:
        return self.pool.pids()

    def close(self) -> None:
        self.pool.close()


def merge_running_stats(stats: RunningMeanStd, finals: Sequence[dict[str, Any]]) -> None:
    """Move ``stats`` to the merge of ``finals``: the states several copies of it reached, each by
    merging its own samples. One copy: its state is taken exactly."""
    if len(finals) == 1:
        stats.load_state_dict(finals[0])
        return
    start = copy.deepcopy(stats)
    for state in finals:
        grown = RunningMeanStd()
        grown.load_state_dict(state)
        stats.update_from_moments(*grown.added_since(start))
