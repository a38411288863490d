"""Online transitions on Ray actors for the offline-to-online runner (``rollout.backend=ray``).

Each :class:`TransitionWorker` is a Ray actor holding one env (an
:class:`rlft.agents.online.EnvStepper`) and a CPU copy of the agent. A *round* sends every worker
the agent's acting weights (:meth:`rlft.agents.base.Learner.acting_state`, put once in Ray's
object store), the policy version (the learner's update count), a torch RNG state and a number
of steps; each worker steps its env that many times, continuing its episodes across rounds, and
returns the transitions, tagged with the version, with its env state after them. The learner
writes them into the replay buffer in rank order (one :class:`rlft.agents.online.EpisodeRecorder`
per worker, so Monte-Carlo returns are written when each worker's episode ends).

* Worker ``r``'s env is reset with ``seed + r`` at the start; worker 0 is the local run's env.
* Without ``rollout.overlap``, worker 0 samples from the learner's own RNG state and hands it
  back, and the learner waits for the round before it updates: with one worker and
  ``rollout.steps_per_call=1`` a run is the local run, bit for bit. Workers ``r > 0`` (and every
  worker with ``overlap``) sample from a generator seeded by ``(seed, round, r)``.
* With ``rollout.overlap`` the learner keeps updating while a round is out, at most
  ``rollout.max_staleness`` updates, so no transition is more than that many updates behind the
  learner when it lands in the buffer (``rollout/staleness`` in the metrics is that lag).
* A worker's env state is how its episode was reset plus the actions since
  (:meth:`EnvStepper.state_dict`). A worker that dies or hangs is replaced by one rebuilt from
  its state at the start of the round, which then redoes the round with the same weights and RNG
  state (:class:`rlft.runtime.ray_pool.WorkerPool`): the buffer gets exactly the transitions it
  would have got. Checkpoints hold the same states, so ``resume`` rebuilds every worker's env
  where it was.

The same workers run the runner's evaluations while fine-tuning is online
(:mod:`rlft.runtime.ray_evaluation`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import torch

from rlft.agents.base import Learner
from rlft.agents.online import AgentActor, EnvStepper, EpisodeEnd, EpisodeRecorder, Transitions
from rlft.agents.replay_buffer import ReplayBuffer
from rlft.runtime.ray_evaluation import EnvBuilders, EvaluatingWorker
from rlft.runtime.ray_pool import WorkerPool, WorkerSettings, worker_rng_state


@dataclass
class CollectionConfig(WorkerSettings):
    """Where the offline-to-online runner's online env steps run (``rollout:`` in the config)."""

    steps_per_call: int = 1  # env steps each Ray worker takes per round
    overlap: bool = False  # ray: the learner updates while a round is out (its data then lag behind)
    max_staleness: int = 1_000  # overlap: most updates the learner makes while a round is out

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps_per_call < 1:
            raise ValueError(f"rollout.steps_per_call must be >= 1, got {self.steps_per_call}")
        if self.max_staleness < 0:
            raise ValueError(f"rollout.max_staleness must be >= 0, got {self.max_staleness}")
        if self.overlap and self.backend == "local":
            raise ValueError("rollout.overlap=true needs rollout.backend=ray (the local backend steps in the learner)")


@dataclass
class TransitionRequest:
    """One worker's part of a round."""

    steps: int
    version: int
    rng: torch.Tensor  # torch CPU RNG state to sample with
    uniform: bool = False  # uniformly random actions instead of the agent's


@dataclass
class TransitionResult:
    transitions: Transitions
    env_state: dict[str, Any]  # the worker's EnvStepper state after the round
    rng: torch.Tensor
    pid: int


class TransitionWorker(EvaluatingWorker):
    """One collection worker (a Ray actor): an env, rebuilt from ``env_state`` when given, and a
    CPU copy of the agent; it also runs blocks of evaluations (:mod:`rlft.runtime.ray_evaluation`)."""

    def __init__(self, make_env: Callable[[], gym.Env], make_agent: Callable[[], Learner], seed: int,
                 env_state: dict[str, Any] | None, eval_envs: EnvBuilders):
        super().__init__(eval_envs)
        self.agent = make_agent()
        self.stepper = EnvStepper(make_env(), seed, torch.device("cpu"))
        if env_state is not None:
            self.stepper.load_state_dict(env_state)

    def collect(self, acting_state: dict[str, Any], request: TransitionRequest) -> TransitionResult:
        self.agent.load_acting_state(acting_state)
        torch.set_rng_state(request.rng)
        explore = AgentActor(self.agent, torch.device("cpu"), deterministic=False, uniform=request.uniform)
        transitions = self.stepper.run(explore, request.steps, request.version)
        return TransitionResult(transitions, self.stepper.state_dict(), torch.get_rng_state(), os.getpid())


class RayTransitions:
    """The Ray backend of the offline-to-online runner's collection; same contract as
    :class:`rlft.agents.online.LocalCollector` (``start``, ``finish``, checkpoints)."""

    can_checkpoint = True  # between rounds every worker's state is known

    def __init__(self, cfg: CollectionConfig, make_env: Callable[[], gym.Env], make_agent: Callable[[], Learner],
                 buffer: ReplayBuffer, seed: int, mc_discount: float, sparse_fail_reward: float | None,
                 eval_envs: EnvBuilders | None = None):
        self.cfg, self.seed = cfg, seed
        self.steps_per_round = cfg.workers * cfg.steps_per_call
        self.recorders = [EpisodeRecorder(buffer, mc_discount, sparse_fail_reward) for _ in range(cfg.workers)]
        self.env_states: list[dict[str, Any] | None] = [None] * cfg.workers  # None: fresh, reset with seed + rank
        self.rounds = 0
        actor = WorkerPool.remote_class(TransitionWorker, cfg)
        self._new_worker = lambda rank: actor.remote(make_env, make_agent, seed + rank,  # noqa: E731
                                                     self.env_states[rank], eval_envs or {})
        self.pool: WorkerPool | None = None  # started at the first round (after a resume: from its states)
        self._round: tuple[dict[int, tuple], dict[int, Any], int] | None = None

    def _split(self, steps: int) -> list[int]:
        """``steps`` over the workers: ``steps_per_call`` each, a short last round evenly."""
        w = self.cfg.workers
        return [steps // w + (rank < steps % w) for rank in range(w)]

    def start(self, agent: Learner, steps: int, version: int, uniform: bool = False) -> None:
        """Send a round of ``steps`` transitions in all, acted by ``agent`` (policy ``version``) or
        uniformly at random."""
        weights = WorkerPool.put(agent.acting_state())
        calls = {}
        for rank, count in enumerate(self._split(steps)):
            if count:
                own = rank == 0 and not self.cfg.overlap
                rng = torch.get_rng_state() if own else worker_rng_state(self.seed, self.rounds, rank)
                calls[rank] = (weights, TransitionRequest(count, version, rng, uniform))
        self._round = (calls, self.workers().submit("collect", calls), version)

    def workers(self) -> WorkerPool:
        """The workers, started at first use (after a resume: from the checkpoint's env states)."""
        if self.pool is None:
            self.pool = WorkerPool(self.cfg, self._new_worker, "collection")
        return self.pool

    def finish(self) -> list[EpisodeEnd]:
        """Wait for the round and write its transitions into the buffer (rank order); returns the
        episodes that ended in it."""
        calls, futures, version = self._round
        results = self.pool.gather("collect", calls, futures, version)
        self._round = None
        ends: list[EpisodeEnd] = []
        for rank in sorted(results):
            ends += self.recorders[rank].record(results[rank].transitions)
            self.env_states[rank] = results[rank].env_state
        if 0 in results and not self.cfg.overlap:
            torch.set_rng_state(results[0].rng)
        self.rounds += 1
        return ends

    @property
    def restarts(self) -> int:
        return self.pool.restarts if self.pool is not None else 0

    def state_dict(self) -> dict[str, Any]:
        return {"env_states": self.env_states, "recorders": [r.state_dict() for r in self.recorders],
                "rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["env_states"]) != self.cfg.workers:
            raise ValueError(f"the checkpoint's collection ran {len(state['env_states'])} Ray workers, this run "
                             f"rollout.workers={self.cfg.workers}: resume with the same number")
        self.close()
        self.env_states, self.rounds = list(state["env_states"]), int(state["rounds"])
        for recorder, saved in zip(self.recorders, state["recorders"]):
            recorder.load_state_dict(saved)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
