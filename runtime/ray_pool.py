"""Ray actors called together, with restarts: what both kinds of rollout workers share.

:class:`WorkerPool` starts ``workers`` actors, calls one method on all of them and waits for
every answer. A worker that dies (its process exits, its node goes away) or does not answer
within ``timeout_s`` is killed, replaced by a new actor and its call redone with the very same
arguments, so a batch is never short; each restart prints one line, and a worker that fails
``max_restarts`` times in a row stops the run with :class:`RolloutWorkerError`. An exception
raised inside a worker (the env's, the policy's) is a bug, not a fault: it propagates.

Users: :mod:`rlft.runtime.rollout_workers` (PPO rollouts of ``rlft-finetune``) and
:mod:`rlft.runtime.transition_workers` (online transitions of the offline-to-online runner).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

BACKENDS = ("local", "ray")
STARTUP_TIMEOUT_S = 300.0  # a new worker builds its envs within this


@dataclass
class WorkerSettings:
    """Where rollouts run and how faults are handled (``rollout:`` in a config)."""

    backend: str = "local"  # local: the learner's own envs; ray: Ray actors
    workers: int = 1  # Ray actors
    timeout_s: float = 600.0  # a call not back by then counts as a dead worker
    max_restarts: int = 3  # consecutive restarts of one worker before the run stops
    worker_cpus: float = 1.0  # CPUs Ray reserves per worker (fractions let more workers than cores start)
    ray_init: dict[str, Any] = field(default_factory=dict)  # ray.init arguments, e.g. {address: auto}

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"rollout.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.workers < 1:
            raise ValueError(f"rollout.workers must be >= 1, got {self.workers}")
        if self.worker_cpus <= 0:
            raise ValueError(f"rollout.worker_cpus must be positive, got {self.worker_cpus}")


class RolloutWorkerError(RuntimeError):
    """A rollout worker kept failing; the message names it and the last error."""


class WorkerPool:
    """``settings.workers`` Ray actors built by ``new_worker(rank)`` (a remote handle); each must
    have a ``pid()`` method, used to wait until it is up."""

    def __init__(self, settings: WorkerSettings, new_worker: Callable[[int], Any], what: str = "rollout"):
        import ray

        self.settings, self.new_worker, self.what = settings, new_worker, what
        if not ray.is_initialized():
            ray.init(**{"include_dashboard": False, "log_to_driver": False, **settings.ray_init})
        self.workers = [new_worker(rank) for rank in range(settings.workers)]
        self._wait_ready(self.workers)
        self.restarts = 0

    @staticmethod
    def remote_class(cls: type, settings: WorkerSettings) -> Any:
        """``cls`` as a Ray actor class reserving ``settings.worker_cpus`` CPUs."""
        import ray

        return ray.remote(num_cpus=settings.worker_cpus)(cls)

    @staticmethod
    def _wait_ready(workers: list[Any]) -> None:
        """Block until ``workers`` are built, so ``timeout_s`` times calls, not start-ups."""
        import ray

        ray.get([w.pid.remote() for w in workers], timeout=STARTUP_TIMEOUT_S)

    def _restart(self, rank: int) -> None:
        import ray

        ray.kill(self.workers[rank], no_restart=True)
        self.workers[rank] = self.new_worker(rank)
        self._wait_ready([self.workers[rank]])
        self.restarts += 1

    def submit(self, method: str, calls: dict[int, tuple]) -> dict[int, Any]:
        """Start ``method(*args)`` on the worker of each rank in ``calls``; returns the futures."""
        return {rank: getattr(self.workers[rank], method).remote(*args) for rank, args in calls.items()}

    def gather(self, method: str, calls: dict[int, tuple], futures: dict[int, Any], version: int) -> dict[int, Any]:
        """Every rank's answer to the calls :meth:`submit` started; a dead or hung worker is
        restarted (``new_worker(rank)`` builds it as the call expects) and its call redone."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        pending, results = dict(futures), {}
        failures = dict.fromkeys(pending, 0)
        while pending:
            rank, future = next(iter(pending.items()))
            try:
                results[rank] = ray.get(future, timeout=self.settings.timeout_s)
                del pending[rank]
            except (RayActorError, GetTimeoutError) as err:
                failures[rank] += 1
                if failures[rank] > self.settings.max_restarts:
                    raise RolloutWorkerError(f"{self.what} worker {rank} failed {failures[rank]} times in a row at "
                                             f"policy version {version}; last error: {err}") from err
                self._restart(rank)
                reason = "timed out" if isinstance(err, GetTimeoutError) else "died"
                print(f"rlft: {self.what} worker {rank} {reason} at policy version {version} ({type(err).__name__}); "
                      f"restarted, its {self.what} redone from the same state (restart {failures[rank]} of at most "
                      f"{self.settings.max_restarts})", file=sys.stderr, flush=True)
                pending[rank] = self.submit(method, {rank: calls[rank]})[rank]
        return results

    def call(self, method: str, calls: dict[int, tuple], version: int) -> dict[int, Any]:
        """:meth:`submit` then :meth:`gather`."""
        return self.gather(method, calls, self.submit(method, calls), version)

    @staticmethod
    def put(value: Any) -> Any:
        """``value`` in Ray's object store once, for every worker."""
        import ray

        return ray.put(value)

    def pids(self) -> list[int]:
        import ray

        return ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []


def worker_rng_state(seed: int, call: int, rank: int) -> torch.Tensor:
    """The torch RNG state a worker samples with when it does not continue the learner's own:
    a fixed function of the run's seed, the call (iteration or round) and the worker's rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + call) * 1_009 + rank).get_state()
