"""The offline-to-online pipeline (``pipeline: o2o``): the agent's own dataset phases (SPOT's VAE),
offline RL, then online fine-tuning.

It serves every :class:`rlft.agents.base.Learner` (``act``, ``update``, ``pretrain_phases``,
``start_online``, ``state_dict``; ``sequence_length`` and ``reset`` for world models, which learn
from sequences and plan). The run folder, checkpoints, exact resume, ``init_from``, ``eval.json``
and the learning curve come from :class:`rlft.runtime.runner.Runner`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rlft.agents.base import Learner
from rlft.agents.online import AgentActor, LocalCollector
from rlft.agents.registry import agent_config, make_agent
from rlft.common.typed_config import ConfigError, config_from_mapping
from rlft.agents.replay_buffer import Batch, ChunkBatch, ReplayBuffer
from rlft.agents.sac import SAC
from rlft.envs.factory import make_env, make_vector_env, resolve_task
from rlft.offline.returns import returns_to_go
from rlft.offline.safety import available_memory, format_bytes
from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_data:} and ${rlft_or:}
from rlft.runtime.evaluation import Acting, EvalResult, evaluate
from rlft.runtime.logger import MeanAccumulator
from rlft.common.progress import Progress
from rlft.runtime.ray_evaluation import EnvBuilders, eval_pool, evaluate_on_workers
from rlft.runtime.ray_pool import WorkerPool
from rlft.runtime.runner import DatasetRunner, Phase
from rlft.runtime.transition_workers import CollectionConfig, RayTransitions


def _agent_options(cfg: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items() if k != "name"}


@dataclass
class TrainerConfig:
    """Budgets and cadences of a run (``trainer:`` in the Hydra config)."""

    batch_size: int = 256
    pretrain_steps: dict[str, int] = field(default_factory=lambda: {"vae": 100_000})  # per agent phase
    offline_steps: int = 1_000_000  # gradient updates on the dataset
    online_steps: int = 1_000_000  # environment steps of fine-tuning
    utd: int = 1  # updates per online environment step
    warmup_steps: int = 0  # first online env steps act with the pretrained policy and do no updates (WSRL)
    # first online env steps act uniformly at random in [-1, 1] and make no updates: learning from
    # scratch (rlpd train_finetuning.py start_training, stable-baselines3's learning_starts)
    random_steps: int = 0
    offline_data_ratio: float | None = None  # online batches: share of dataset rows (None: uniform over all)
    # No update before the online buffer holds more than max(warmup_steps, min_online_steps)
    # transitions. None: the online rows of one batch, online_batch_size * (1 - offline_data_ratio)
    # (zhouzypaul/wsrl finetune.py `min_steps_to_update`), and 0 when batches draw uniformly from
    # the dataset and the online rows together (the dataset already fills them).
    min_online_steps: int | None = None
    # "step": every online env step past the start owes `utd` updates, made before the next step
    # (wsrl finetune.py); "episode": a finished episode owes its length * utd updates, made after it,
    # so the policy is fixed within an episode (Cal-QL's conservative_sac_main.py).
    update_schedule: Literal["step", "episode"] = "step"
    online_batch_size: int | None = None  # rows of an online batch (None: batch_size)
    # "repeat": utd updates per env step, each on its own batch; "split": one batch per env step,
    # `utd` critic steps on its equal slices, then one actor step on the whole batch (wsrl
    # agents/sac.py `update_high_utd`); "split_last": the actor step on the last slice only (rlpd
    # agents/sac/sac_learner.py `update`). The split modes are for the SAC family.
    utd_mode: Literal["repeat", "split", "split_last"] = "repeat"
    # The offline-only control of a fine-tuning run: in place of the online phase, the same updates
    # (utd_mode, online_batch_size) of the offline objective on dataset rows, utd per online step
    # from the first update step on (update_schedule: episode is read as step: there are no
    # episodes), evaluated at the same steps, with no env step taken; with
    # init_from the fine-tuning run's checkpoint it is that run continued offline (rlft's design:
    # it separates "online data helped" from "more updates helped").
    offline_control: bool = False
    eval_every: int = 5_000  # updates (offline) / env steps (online) between evaluations
    eval_episodes: int = 10
    eval_envs: int = 10  # evaluation episodes run in parallel (vector env)
    eval_seed: int = 1_000_000  # evaluation episode i resets with eval_seed + i
    log_every: int = 1_000
    checkpoint_every: int = 50_000  # online: at the first episode end past each multiple
    keep_checkpoints: int = 2
    normalize_obs: bool = True  # normalise observations with dataset statistics
    reward_scale: float = 1.0  # stored reward = reward_scale * r + reward_bias (dataset and online)
    reward_bias: float = 0.0
    # set: reward_scale becomes this / (max - min episode return of the dataset), IQL's locomotion
    # normalisation with 1000 (implicit_q_learning train_offline.py `normalize`)
    reward_return_range: float | None = None


class Experiment(DatasetRunner):
    """The offline-to-online pipeline: builds everything from a resolved config and runs (or
    resumes) the agent's dataset phases, offline RL and online fine-tuning."""

    pipeline = "o2o"
    budget_key = "trainer.online_steps"  # the fine-tuning budget, which a resume may raise
    axis = "offline updates, then online environment steps"
    method_key = "agent"

    @classmethod
    def settings(cls, cfg: DictConfig) -> dict[str, Any]:
        if OmegaConf.is_missing(cfg.agent, "name"):
            raise ConfigError("agent=custom needs agent.name=<module>:<Class>, your Learner subclass "
                              "(docs/extending.md)")
        return {"trainer": config_from_mapping(TrainerConfig, cfg.trainer, "trainer"),
                "agent": agent_config(cfg.agent.name, _agent_options(cfg)),
                "rollout": config_from_mapping(CollectionConfig, cfg.get("rollout", {}), "rollout")}

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        settings = self.settings(cfg)
        self.trainer: TrainerConfig = settings["trainer"]
        self.rollout: CollectionConfig = settings["rollout"]
        self.agent_settings = settings["agent"]
        self.keep_checkpoints = self.trainer.keep_checkpoints
        self.check_budget({"trainer.offline_steps": self.trainer.offline_steps},
                          {"trainer.online_steps": self.trainer.online_steps})

        self.task = resolve_task(cfg.env.task)
        self.dataset = self.load_dataset(cfg.dataset, cfg.env)
        self.obs_stats = self.dataset.observation_stats() if self.trainer.normalize_obs else None
        self.ref_scores = (self.dataset.ref_min_score, self.dataset.ref_max_score)
        if self.dataset.ref_min_score is None:  # no reference returns (a user's env): score and plot the return
            self.plot_metric = "return_mean"

        self.agent = make_agent(cfg.agent.name, settings["agent"], self.dataset.obs_dim, self.dataset.action_dim,
                                self.device)
        self._check_utd_mode(cfg.agent.name)
        if self.rollout.backend == "ray" and self.agent.acts_with_state:
            raise ConfigError(f"rollout.backend=ray: agent '{cfg.agent.name}' acts from a state (a planner's warm "
                              "start, an action chunk) that does not travel to Ray workers; use rollout.backend=local")
        capacity = len(self.dataset) + max(1, self.trainer.online_steps)
        self._check_buffer_memory(capacity)
        self.buffer = ReplayBuffer(
            self.dataset.obs_dim,
            self.dataset.action_dim,
            capacity,
            self.device,
            self._reward_scale(),
            self.trainer.reward_bias,
        )
        mean, std = self.obs_stats if self.obs_stats is not None else (None, None)
        stored_rewards = self.buffer.transform_rewards(self.dataset.rewards)
        # Sparse tasks: an episode that only ever got the lowest reward failed (Cal-QL's rule).
        self.sparse_fail_reward = float(stored_rewards.min()) if self.task.sparse_reward else None
        mc_returns = returns_to_go(
            stored_rewards, self.dataset.episode_ends, self.agent.cfg.discount, self.sparse_fail_reward
        )
        self.buffer.load_dataset(self.dataset, mean, std, mc_returns)
        self.eval_env = make_vector_env(cfg.env, min(self.trainer.eval_envs, self.trainer.eval_episodes), self.obs_stats)

        for name, fn in self.agent.pretrain_phases:
            if name not in self.trainer.pretrain_steps:
                raise ValueError(f"agent '{cfg.agent.name}' has a '{name}' phase: set trainer.pretrain_steps.{name}")
            steps = int(self.trainer.pretrain_steps[name])
            phase = self._dataset_phase(self._updates_on_dataset(fn), steps, evaluated=False)
            self.phases.append(Phase(name, phase, steps, pretraining=True, on_axis=False))
        offline = self._dataset_phase(self._updates_on_dataset(self.agent.update), self.trainer.offline_steps,
                                      evaluated=True)
        self.phases.append(Phase("offline", offline, self.trainer.offline_steps, pretraining=True))
        if self.trainer.offline_control:
            control = self._dataset_phase(self._offline_control_step, self.trainer.online_steps, evaluated=True)
            self.phases.append(Phase("offline_control", control, self.trainer.online_steps))
        else:
            self.phases.append(Phase("online", self._online_phase, self.trainer.online_steps))
        self.accumulator = MeanAccumulator()
        self.collector: LocalCollector | RayTransitions | None = None
        self._eval_only: WorkerPool | None = None  # Ray evaluation workers while nothing is collected
        self._eval_agent: Learner | None = None  # a CPU copy of the agent that Ray evaluations send
        self.owed_updates = 0  # updates the online data collected so far call for, not yet made

    def _check_utd_mode(self, agent_name: str) -> None:
        """The split modes need a learner with :meth:`SAC.update_split` and a batch ``utd`` divides."""
        t = self.trainer
        if t.utd_mode == "repeat":
            return
        if not isinstance(self.agent, SAC):
            raise ConfigError(f"trainer.utd_mode={t.utd_mode}: agent '{agent_name}' is not of the SAC family; "
                              "use trainer.utd_mode=repeat")
        if self.rollout.overlap and self.rollout.max_staleness < t.utd:
            raise ConfigError(f"trainer.utd_mode={t.utd_mode} makes {t.utd} updates at once: rollout.max_staleness="
                              f"{self.rollout.max_staleness} would let none run while a round is out; raise it to "
                              f">= {t.utd}")
        if self.online_batch_size % t.utd:
            raise ConfigError(f"trainer.utd_mode={t.utd_mode}: an online batch of {self.online_batch_size} rows "
                              f"(trainer.online_batch_size) does not split into trainer.utd={t.utd} equal slices")

    def _check_buffer_memory(self, capacity: int) -> None:
        """Refuse a budget whose replay buffer (the dataset's rows plus one per online step) does not
        fit the memory this machine has free, before allocating it (``ConfigError`` saying how much
        it needs), instead of an allocator error or the kernel's OOM killer mid-run."""
        needed = ReplayBuffer.bytes_needed(self.dataset.obs_dim, self.dataset.action_dim, capacity)
        free = available_memory() if self.device.type == "cpu" else None
        if free is not None and needed > free:
            raise ConfigError(f"trainer.online_steps={self.trainer.online_steps}: the replay buffer (the dataset's "
                              f"{len(self.dataset)} rows + one per online step) needs {format_bytes(needed)} and this "
                              f"machine has {format_bytes(free)} available; lower trainer.online_steps")

    def _reward_scale(self) -> float:
        """``trainer.reward_scale``, or the scale that makes the dataset's episode returns span
        ``trainer.reward_return_range`` (printed, and kept in eval.json's details)."""
        t = self.trainer
        if t.reward_return_range is None:
            return t.reward_scale
        if t.reward_scale != 1.0:
            raise ConfigError(f"trainer.reward_scale={t.reward_scale} and trainer.reward_return_range="
                              f"{t.reward_return_range}: set one of them")
        returns = self.dataset.episode_returns()
        spread = float(returns.max() - returns.min())
        if not spread > 0:
            raise ConfigError(f"trainer.reward_return_range: the episode returns of {self.dataset.source} all "
                              f"equal {returns.max():.3f}, so their range cannot set the reward scale")
        scale = t.reward_return_range / spread
        print(f"reward scale {scale:.4g}: episode returns span {spread:.1f} in {self.dataset.source}, "
              f"{t.reward_return_range:g} after scaling")
        return scale

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["details"]["reward_scale"] = self.buffer.reward_scale
        info["details"]["reward_bias"] = self.buffer.reward_bias
        return info

    # ------------------------------------------------------------ checkpoints
    def pipeline_state(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            "accumulator": self.accumulator.state_dict(),
            "buffer": self.buffer.online_state_dict(),
            "collector": self.collector.state_dict() if self.collector is not None else None,
            "owed_updates": self.owed_updates,
            "obs_stats": [torch.as_tensor(x) for x in self.obs_stats] if self.obs_stats is not None else None,
            "ref_scores": list(self.ref_scores),  # what acting() scores with, without the dataset
        }

    @classmethod
    def acting(cls, cfg: DictConfig, saved: Mapping[str, Any], device: str, deterministic: bool = True) -> Acting:
        """The agent rebuilt from the config and the env's shapes, its weights and observation
        statistics from the checkpoint; the reference scores the run used (a checkpoint from before
        2026-12-08 holds none: the task's). No dataset is read."""
        settings, state = cls.settings(cfg), saved["state"]
        trainer: TrainerConfig = settings["trainer"]
        stats = state.get("obs_stats")
        obs_stats = tuple(x.cpu().numpy() for x in stats) if stats is not None else None
        env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
        probe = make_env(env_cfg)
        try:
            obs_dim, action_dim = gym.spaces.flatdim(probe.observation_space), probe.action_space.shape[0]
        finally:
            probe.close()
        agent = make_agent(cfg.agent.name, settings["agent"], obs_dim, action_dim, torch.device(device))
        agent.load_state_dict(state["agent"])
        task = resolve_task(env_cfg["task"])
        refs = state.get("ref_scores") or (task.ref_min_score, task.ref_max_score)
        refs = tuple(None if r is None or not np.isfinite(r) else float(r) for r in refs)

        def one_env(render_mode: str | None, inner: Callable[[gym.Env], gym.Env] | None = None) -> gym.Env:
            kwargs = {**env_cfg.get("env_kwargs", {}), **({"render_mode": render_mode} if render_mode else {})}
            return make_env({**env_cfg, "env_kwargs": kwargs}, obs_stats, inner=inner)

        return Acting(AgentActor(agent, torch.device(device), deterministic), one_env, trainer.eval_episodes,
                      trainer.eval_envs, trainer.eval_seed, refs,
                      "normalized_score" if refs[0] is not None else "return_mean")

    def load_pipeline_state(self, state: Mapping[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.accumulator.load_state_dict(state["accumulator"])
        self.buffer.load_online_state_dict(state["buffer"])
        self.owed_updates = int(state["owed_updates"])
        if state["collector"] is not None:
            self._close_eval_only()
            self.collector = self._make_collector()
            self.collector.load_state_dict(state["collector"])

    def load_pretrained(self, state: Mapping[str, Any], config: DictConfig, path: Path) -> None:
        """Another run's offline agent. It must share the agent and the observation normalisation
        (compared by value, so a copy of the dataset elsewhere is fine)."""
        if config.agent.name != self.cfg.agent.name:
            raise ValueError(
                f"init_from {path}: agent '{config.agent.name}' cannot start a '{self.cfg.agent.name}' run"
            )
        ours = [torch.as_tensor(x) for x in self.obs_stats] if self.obs_stats is not None else None
        theirs = state.get("obs_stats")
        same = (ours is None and theirs is None) or (
            ours is not None and theirs is not None
            and all(o.shape == t.shape and torch.allclose(o.float(), t.float()) for o, t in zip(ours, theirs))
        )
        if not same:
            raise ValueError(
                f"init_from {path}: pretrained on {config.dataset.source} with other observation normalisation "
                f"than this run's dataset {self.cfg.dataset.source}"
            )
        self.agent.load_state_dict(dict(state["agent"], online=False))

    def _make_collector(self) -> LocalCollector | RayTransitions:
        """Where online transitions come from: this process's env, or Ray workers (``rollout:``)."""
        seed, discount = int(self.cfg.seed), self.agent.cfg.discount
        if self.rollout.backend == "local":
            return LocalCollector(make_env(self.cfg.env, self.obs_stats), self.buffer, seed, self.device, discount,
                                  self.sparse_fail_reward)
        env_cfg = OmegaConf.to_container(self.cfg.env, resolve=True)
        build_env = functools.partial(make_env, env_cfg, self.obs_stats)
        build_agent = functools.partial(make_agent, self.cfg.agent.name, self.agent_settings, self.dataset.obs_dim,
                                        self.dataset.action_dim, "cpu")
        return RayTransitions(self.rollout, build_env, build_agent, self.buffer, seed, discount,
                              self.sparse_fail_reward, self._eval_envs())

    def _eval_envs(self) -> EnvBuilders:
        env_cfg = OmegaConf.to_container(self.cfg.env, resolve=True)
        return {"eval": functools.partial(make_vector_env, env_cfg, self.eval_env.num_envs, self.obs_stats)}

    def _eval_workers(self) -> WorkerPool:
        """The Ray workers evaluations run on: the collection workers while fine-tuning is online,
        before that a pool of evaluation workers (closed when collection starts: both would hold the
        same CPUs)."""
        if isinstance(self.collector, RayTransitions):
            return self.collector.workers()
        if self._eval_only is None:
            self._eval_only = eval_pool(self.rollout, self._eval_envs())
        return self._eval_only

    def _close_eval_only(self) -> None:
        if self._eval_only is not None:
            self._eval_only.close()
            self._eval_only = None

    def finish(self) -> None:
        self._close_eval_only()

    # -------------------------------------------------------------- evaluate
    def evaluate_policy(self, phase: str) -> EvalResult:
        """The agent's deterministic policy, here or on Ray workers; policy noise (a planner's
        samples) from the evaluation's own seed, so evaluating never shifts training's stream."""
        t = self.trainer
        if self.rollout.backend == "ray":
            if self._eval_agent is None:
                with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: keep training's stream
                    self._eval_agent = make_agent(self.cfg.agent.name, self.agent_settings, self.dataset.obs_dim,
                                                  self.dataset.action_dim, "cpu")
            self._eval_agent.load_acting_state(self.agent.acting_state())
            act = AgentActor(self._eval_agent, torch.device("cpu"), deterministic=True)
            return evaluate_on_workers(self._eval_workers(), act, "eval", t.eval_episodes, t.eval_seed,
                                       *self.ref_scores, rng_seed=t.eval_seed, version=self.agent.num_updates)
        return evaluate(AgentActor(self.agent, self.device, deterministic=True), self.eval_env, t.eval_episodes,
                        t.eval_seed, *self.ref_scores, rng_seed=t.eval_seed)

    # ---------------------------------------------------------------- phases
    def _sample(self, rows: int, offline_ratio: float | None = None) -> Batch | ChunkBatch:
        """A training batch: transitions, or sequences or action chunks for agents that learn from them; online rows
        of finished episodes only for agents that read their Monte-Carlo returns (Cal-QL)."""
        if self.agent.sequence_length > 1:
            return self.buffer.sample_sequences(rows, self.agent.sequence_length, offline_ratio)
        if self.agent.chunk_length > 1:
            return self.buffer.sample_chunks(rows, self.agent.chunk_length, self.agent.cfg.discount, offline_ratio)
        finished = self.agent.needs_finished_episodes and self.agent.online
        return self.buffer.sample(rows, offline_ratio, finished_only=finished)

    @property
    def online_batch_size(self) -> int:
        return self.trainer.online_batch_size or self.trainer.batch_size

    @property
    def first_update_step(self) -> int:
        """Online env steps made before the first update: ``max(warmup_steps, random_steps,
        min_online_steps)``, ``min_online_steps`` defaulting to one batch's online rows (wsrl
        finetune.py; 0 when batches draw uniformly from the dataset and the online rows together).
        finetune.py updates from step index ``max(...) + 1`` on (its ``<=``): one step later than here."""
        t = self.trainer
        minimum = t.min_online_steps
        if minimum is None:
            rows = self.online_batch_size
            minimum = 0 if t.offline_data_ratio is None else rows - round(rows * t.offline_data_ratio)
        return max(t.warmup_steps, t.random_steps, minimum)

    def _online_data_ready(self) -> bool:
        """Whether online updates may start: a sequence learner needs one whole sequence online,
        a calibrated learner one finished episode (before it, its calibration would see no
        online returns: the window where Cal-QL is meant to prevent the dip)."""
        if self.agent.needs_finished_episodes:
            return self.buffer.num_finished_online > 0
        return self.buffer.num_online >= self.agent.sequence_length

    def _log(self, started: float, steps_done: int) -> None:
        rate = steps_done / max(time.perf_counter() - started, 1e-9)
        self.log({"phase_step": self.phase_step, "steps_per_sec": rate, **self.accumulator.pop()})

    def _dataset_phase(self, work: Callable[[], None], steps: int, evaluated: bool) -> Callable[[], None]:
        """A phase of ``steps`` steps without the env, each doing ``work`` (:meth:`_updates_on_dataset`:
        the agent's own pretraining or offline RL; the offline-only control's owed updates)."""

        def run() -> None:
            t = self.trainer
            started, first = time.perf_counter(), self.phase_step
            bar = Progress(steps, self.phase.name, initial=self.phase_step, enabled=self.show_progress)
            while self.phase_step < steps:
                work()
                self.phase_step += 1
                self.work += 1
                self.step += evaluated
                bar.update(1)
                if self.phase_step % t.log_every == 0:
                    self._log(started, self.phase_step - first)
                if evaluated and (self.phase_step % t.eval_every == 0 or self.phase_step == steps):
                    bar.set_postfix(score=f"{self.evaluate().normalized_score:.1f}")
                if self.phase_step % t.checkpoint_every == 0 and self.phase_step < steps:
                    self.checkpoint()
            bar.close()

        return run

    def _update_online(self, count: int, dataset_only: bool = False) -> None:
        """Make ``count`` of the owed online updates (``utd_mode: split*``: whole env steps' worth,
        ``utd`` critic steps each, so a remainder stays owed); ``dataset_only``: the offline-only
        control's, on dataset rows."""
        t = self.trainer
        ratio = None if dataset_only else t.offline_data_ratio
        if t.utd_mode == "repeat":
            for _ in range(count):
                batch = self._sample(self.online_batch_size, ratio)
                self.accumulator.add(self.check_update(self.agent.update(batch)))
        else:
            count -= count % t.utd
            actor_rows = "all" if t.utd_mode == "split" else "last"
            for _ in range(count // t.utd):
                batch = self._sample(self.online_batch_size, ratio)
                self.accumulator.add(self.check_update(self.agent.update_split(batch, t.utd, actor_rows)))
        self.owed_updates -= count

    def _owe_updates(self, steps: int, episode_lengths: list[int]) -> None:
        """What the ``steps`` transitions just stored (from ``phase_step`` on) owe, once the data are
        ready: ``utd`` updates for each step from :attr:`first_update_step` on (``update_schedule:
        step``), or ``utd`` per step of each episode that ended past it (``episode``)."""
        t = self.trainer
        if not self._online_data_ready():
            return
        if t.update_schedule == "step":
            self.owed_updates += t.utd * max(0, self.phase_step + steps - max(self.first_update_step, self.phase_step))
        elif self.phase_step + steps > self.first_update_step:
            self.owed_updates += t.utd * sum(episode_lengths)

    def _updates_on_dataset(self, update_fn: Callable) -> Callable[[], None]:
        """One step of a dataset phase: ``update_fn`` on a dataset batch."""
        return lambda: self.accumulator.add(self.check_update(update_fn(self._sample(self.trainer.batch_size))))

    def _offline_control_step(self) -> None:
        """``trainer.offline_control``: one online step's owed updates on dataset rows, no env step
        (see TrainerConfig)."""
        if self.phase_step >= self.first_update_step:
            self.owed_updates += self.trainer.utd
            self._update_online(self.owed_updates, dataset_only=True)

    def _online_phase(self) -> None:
        """Rounds of collection (one env step locally, ``workers x steps_per_call`` on Ray), each
        followed by the updates its transitions call for; with ``rollout.overlap`` up to
        ``rollout.max_staleness`` of them run while the next round is out."""
        t, r = self.trainer, self.rollout
        if self.collector is None:
            self.agent.start_online()
            if t.offline_data_ratio == 0.0:
                self.buffer.discard_offline()
            self._close_eval_only()
            self.collector = self._make_collector()
        started, first = time.perf_counter(), self.phase_step
        next_checkpoint = (self.phase_step // t.checkpoint_every + 1) * t.checkpoint_every
        bar = Progress(t.online_steps, "online", initial=self.phase_step, enabled=self.show_progress)
        crossed = lambda before, every: before // every < self.phase_step // every  # noqa: E731
        while self.phase_step < t.online_steps:
            steps = min(self.collector.steps_per_round, t.online_steps - self.phase_step)
            uniform = self.phase_step < t.random_steps
            if uniform:  # a round never straddles the end of the random steps
                steps = min(steps, t.random_steps - self.phase_step)
            version = self.agent.num_updates
            self.collector.start(self.agent, steps, version, uniform)
            if r.overlap:
                self._update_online(min(self.owed_updates, r.max_staleness))
            episodes = self.collector.finish()
            self.accumulator.add({"rollout/staleness": self.agent.num_updates - version})
            self._owe_updates(steps, [episode.length for episode in episodes])
            last = self.phase_step + steps == t.online_steps
            during_next = min(self.owed_updates, r.max_staleness) if r.overlap and not last else 0
            self._update_online(self.owed_updates - during_next)
            before = self.phase_step
            self.phase_step += steps
            self.step += steps
            self.work += steps
            bar.update(steps)
            for episode in episodes:
                self.accumulator.add({"train/episode_return": episode.episode_return,
                                      "train/episode_length": episode.length})
            if crossed(before, t.log_every):
                self._log(started, self.phase_step - first)
            if crossed(before, t.eval_every) or self.phase_step == t.online_steps:
                bar.set_postfix(score=f"{self.evaluate().normalized_score:.1f}")
            if self.phase_step < t.online_steps and self.phase_step >= next_checkpoint and self.collector.can_checkpoint:
                self.checkpoint()
                next_checkpoint = (self.phase_step // t.checkpoint_every + 1) * t.checkpoint_every
        bar.close()
        self.collector.close()
        self.collector = None
