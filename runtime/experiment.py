"""Offline-to-online experiment: dataset phases (pretraining, offline RL) then online fine-tuning.

One generic runner serves every :class:`rlft.agents.base.Learner` (``act``, ``update``,
``pretrain_phases``, ``start_online``, ``state_dict``; ``sequence_length`` and ``reset`` for
world models, which learn from sequences and plan). The run folder
gets the resolved config, ``metrics.csv`` + TensorBoard, atomic checkpoints, ``eval.json``
and a learning-curve PNG. ``resume`` continues from the newest checkpoint and reproduces
the numbers of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlft.agents.base import Learner
from rlft.agents.online import EnvStepper
from rlft.agents.registry import build_agent, config_from_mapping
from rlft.agents.replay_buffer import Batch, ReplayBuffer
from rlft.envs.factory import make_env, make_vector_env, resolve_task
from rlft.offline.dataset import TransitionDataset
from rlft.offline.loaders import load_task_dataset
from rlft.offline.returns import returns_to_go
from rlft.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlft.runtime.evaluation import EvalResult, evaluate
from rlft.runtime.logger import MeanAccumulator
from rlft.runtime.plotting import plot_learning_curve
from rlft.runtime.run_folder import CONFIG_FILE, open_run_folder, write_eval_json
from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_data:} and ${rlft_or:}
from rlft.runtime.seeding import get_rng_state, seed_everything, set_rng_state

OFFLINE_CHECKPOINT = "offline_checkpoint"  # the agent at the end of the dataset phases, kept for init_from


@dataclass
class TrainerConfig:
    """Budgets and cadences of a run (``trainer:`` in the Hydra config)."""

    batch_size: int = 256
    pretrain_steps: dict[str, int] = field(default_factory=lambda: {"vae": 100_000})  # per agent phase
    offline_steps: int = 1_000_000  # gradient updates on the dataset
    online_steps: int = 1_000_000  # environment steps of fine-tuning
    utd: int = 1  # updates per online environment step
    warmup_steps: int = 0  # first online env steps act with the pretrained policy and do no updates (WSRL)
    offline_data_ratio: float | None = None  # online batches: share of dataset rows (None: uniform over all)
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
    progress: bool = True  # tqdm progress bars


class Experiment:
    """Builds everything from a resolved config and runs (or resumes) the phases."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.trainer: TrainerConfig = config_from_mapping(TrainerConfig, cfg.trainer, "trainer")
        self.device = torch.device(cfg.device)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        seed_everything(int(cfg.seed))

        self.task = resolve_task(cfg.env.task)
        self.dataset = self._load_dataset()
        self.obs_stats = self.dataset.observation_stats() if self.trainer.normalize_obs else None
        self.ref_scores = (self.dataset.ref_min_score, self.dataset.ref_max_score)

        probe = make_env(cfg.env)
        self.dataset.check_spaces(probe.observation_space.shape, probe.action_space.shape, self.task.env_id)
        probe.close()

        agent_options = {k: v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items() if k != "name"}
        self.agent = build_agent(cfg.agent.name, agent_options, self.dataset.obs_dim, self.dataset.action_dim, self.device)
        self.buffer = ReplayBuffer(
            self.dataset.obs_dim,
            self.dataset.action_dim,
            len(self.dataset) + max(1, self.trainer.online_steps),
            self.device,
            self.trainer.reward_scale,
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

        phases = []
        for name, fn in self.agent.pretrain_phases:
            if name not in self.trainer.pretrain_steps:
                raise ValueError(f"agent '{cfg.agent.name}' has a '{name}' phase: set trainer.pretrain_steps.{name}")
            phases.append((name, int(self.trainer.pretrain_steps[name]), fn))
        phases.append(("offline", self.trainer.offline_steps, self.agent.update))
        self.dataset_phases: list[tuple[str, int, Callable]] = phases
        self.phase_index, self.phase_step, self.global_step = 0, 0, 0
        self.eval_history: list[dict[str, Any]] = []
        self.phase_starts: dict[str, int] = {}
        self.accumulator = MeanAccumulator()
        self.stepper: EnvStepper | None = None
        self._resume_step: int | None = None

    # ------------------------------------------------------------------ setup
    def _load_dataset(self) -> TransitionDataset:
        ds_cfg = self.cfg.dataset
        return load_task_dataset(ds_cfg.source, self.task, ds_cfg.get("format", "auto"))

    @property
    def phase_name(self) -> str:
        if self.phase_index < len(self.dataset_phases):
            return self.dataset_phases[self.phase_index][0]
        return "online" if self.phase_index == len(self.dataset_phases) else "done"

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> Path:
        state = {
            "agent": self.agent.state_dict(),
            "counters": {"phase_index": self.phase_index, "phase_step": self.phase_step, "global_step": self.global_step},
            "rng": get_rng_state(),
            "eval_history": self.eval_history,
            "phase_starts": self.phase_starts,
            "accumulator": self.accumulator.state_dict(),
            "buffer": self.buffer.online_state_dict(),
            "stepper": self.stepper.state_dict() if self.stepper is not None else None,
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
            "obs_stats": [torch.as_tensor(x) for x in self.obs_stats] if self.obs_stats is not None else None,
        }
        return save_checkpoint(self.run_dir / "checkpoints", self.global_step, state, self.trainer.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint in the run folder; ``False`` when there is none."""
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            return False
        state = load_checkpoint(path, self.device)
        self.agent.load_state_dict(state["agent"])
        counters = state["counters"]
        self.phase_index, self.phase_step, self.global_step = (
            counters["phase_index"], counters["phase_step"], counters["global_step"],
        )
        self.eval_history = list(state["eval_history"])
        self.phase_starts = dict(state["phase_starts"])
        self.accumulator.load_state_dict(state["accumulator"])
        self.buffer.load_online_state_dict(state["buffer"])
        if state["stepper"] is not None:
            self.stepper = self._make_stepper()
            self.stepper.load_state_dict(state["stepper"])
        set_rng_state(state["rng"])
        self._resume_step = self.global_step
        print(f"resumed from {path} (phase {self.phase_name}, step {self.phase_step}, global step {self.global_step})")
        return True

    def _init_from(self, source: str | Path) -> None:
        """Start from another run's offline agent and go straight to online fine-tuning.

        ``source`` is a run folder (its ``offline_checkpoint``) or a checkpoint folder. The
        offline run must share the agent and the observation normalisation (compared by value,
        so a copy of the dataset elsewhere is fine). The loaded agent is evaluated once (phase ``offline``).
        """
        source = Path(source)
        path = source / OFFLINE_CHECKPOINT if (source / OFFLINE_CHECKPOINT).is_dir() else source
        state = load_checkpoint(path, self.device)
        theirs = OmegaConf.create(state["config"])
        if theirs.agent.name != self.cfg.agent.name:
            raise ValueError(
                f"init_from {path}: agent '{theirs.agent.name}' cannot start a '{self.cfg.agent.name}' run"
            )
        ours = [torch.as_tensor(x) for x in self.obs_stats] if self.obs_stats is not None else None
        theirs_stats = state.get("obs_stats")
        same = (ours is None and theirs_stats is None) or (
            ours is not None and theirs_stats is not None
            and all(torch.allclose(o.float(), t.float()) for o, t in zip(ours, theirs_stats))
        )
        if not same:
            raise ValueError(
                f"init_from {path}: pretrained on {theirs.dataset.source} with other observation normalisation "
                f"than this run's dataset {self.cfg.dataset.source}"
            )
        if state["counters"]["phase_index"] < len(self.dataset_phases):
            raise ValueError(f"init_from {path}: that checkpoint is from before the end of offline training")
        agent_state = dict(state["agent"], online=False)
        self.agent.load_state_dict(agent_state)
        self.phase_index, self.phase_step = len(self.dataset_phases), 0
        self.global_step = int(state["counters"]["global_step"])
        self.phase_starts["offline"] = self.global_step
        print(f"initialised from {path} (offline agent at step {self.global_step})")
        self._evaluate("offline")

    def _make_stepper(self) -> EnvStepper:
        env = make_env(self.cfg.env, self.obs_stats)
        return EnvStepper(
            env, self.buffer, int(self.cfg.seed), self.device, self.agent.cfg.discount, self.sparse_fail_reward
        )

    # -------------------------------------------------------------- evaluate
    def _evaluate(self, phase: str) -> EvalResult:
        result = evaluate(
            AgentActor(self.agent, self.device, deterministic=True), self.eval_env, self.trainer.eval_episodes,
            self.trainer.eval_seed, *self.ref_scores,
        )
        record = {"step": self.global_step, "phase": phase, "phase_step": self.phase_step, **result.as_dict()}
        self.eval_history.append(record)
        self.logger.log(self.global_step, {"phase": phase, "eval/return": result.return_mean,
                                           "eval/normalized_score": result.normalized_score})
        self._write_eval_json()
        return result

    def _write_eval_json(self) -> None:
        def last(phase: str) -> dict | None:
            found = [r for r in self.eval_history if r["phase"] == phase]
            return found[-1] if found else None

        out = {
            "task": self.task.name,
            "env_id": self.task.env_id,
            "dataset": self.dataset.summary(),
            "seed": int(self.cfg.seed),
            "offline_end": last("offline"),
            "online_end": last("online") if self.phase_name == "done" else None,
            "history": self.eval_history,
        }
        write_eval_json(self.run_dir, out)

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Run every remaining phase; returns the content of ``eval.json``."""
        self.logger = open_run_folder(self.run_dir, self.cfg, self._resume_step)
        if self._resume_step is None and self.cfg.get("init_from"):
            self._init_from(self.cfg.init_from)
        try:
            while self.phase_index < len(self.dataset_phases):
                name, steps, update_fn = self.dataset_phases[self.phase_index]
                self._run_dataset_phase(name, steps, update_fn)
            if self.phase_index == len(self.dataset_phases):
                self._run_online_phase()
        finally:
            self.logger.close()
        self._write_eval_json()
        plot_learning_curve(
            self.eval_history,
            self.run_dir / "learning_curve.png",
            title=f"{self.cfg.agent.name} on {self.cfg.dataset.get('name', self.dataset.source)} (seed {self.cfg.seed})",
            phase_boundaries={"online": self.phase_starts["online"]} if "online" in self.phase_starts else None,
        )
        return json.loads((self.run_dir / "eval.json").read_text())

    def _sample(self, offline_ratio: float | None = None) -> Batch:
        """A training batch: transitions, or sequences for agents that learn from them."""
        if self.agent.sequence_length > 1:
            return self.buffer.sample_sequences(self.trainer.batch_size, self.agent.sequence_length, offline_ratio)
        return self.buffer.sample(self.trainer.batch_size, offline_ratio)

    def _advance_phase(self) -> None:
        self.phase_index += 1
        self.phase_step = 0

    def _log(self, phase: str, started: float, steps_done: int) -> None:
        rate = steps_done / max(time.perf_counter() - started, 1e-9)
        self.logger.log(self.global_step, {"phase": phase, "phase_step": self.phase_step,
                                           "steps_per_sec": rate, **self.accumulator.pop()})

    def _run_dataset_phase(self, name: str, steps: int, update_fn: Callable) -> None:
        self.phase_starts.setdefault(name, self.global_step - self.phase_step)
        t = self.trainer
        started, first = time.perf_counter(), self.phase_step
        bar = tqdm(total=steps, initial=self.phase_step, desc=name, disable=not t.progress, mininterval=1.0)
        while self.phase_step < steps:
            self.accumulator.add(update_fn(self._sample()))
            self.phase_step += 1
            self.global_step += 1
            bar.update(1)
            if self.phase_step % t.log_every == 0:
                self._log(name, started, self.phase_step - first)
            if name == "offline" and (self.phase_step % t.eval_every == 0 or self.phase_step == steps):
                result = self._evaluate(name)
                bar.set_postfix(score=f"{result.normalized_score:.1f}")
            if self.phase_step % t.checkpoint_every == 0 and self.phase_step < steps:
                self._checkpoint()
        bar.close()
        self._advance_phase()
        path = self._checkpoint()
        if self.phase_index == len(self.dataset_phases):
            self._keep_offline_checkpoint(path)

    def _keep_offline_checkpoint(self, path: Path) -> None:
        """Copy the end-of-offline checkpoint to ``OFFLINE_CHECKPOINT``: copy to a temporary
        folder, then rename, so a crash never leaves a half-written one for ``init_from``."""
        final, tmp = self.run_dir / OFFLINE_CHECKPOINT, self.run_dir / f".tmp-{OFFLINE_CHECKPOINT}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def _run_online_phase(self) -> None:
        t = self.trainer
        if self.stepper is None:
            self.agent.start_online()
            if t.offline_data_ratio == 0.0:
                self.buffer.discard_offline()
            self.stepper = self._make_stepper()
            self.phase_starts["online"] = self.global_step
        started, first = time.perf_counter(), self.phase_step
        next_checkpoint = (self.phase_step // t.checkpoint_every + 1) * t.checkpoint_every
        bar = tqdm(total=t.online_steps, initial=self.phase_step, desc="online", disable=not t.progress, mininterval=1.0)
        explore = AgentActor(self.agent, self.device, deterministic=False)
        while self.phase_step < t.online_steps:
            episode = self.stepper.step(explore)
            # sequence learners wait until the online rows hold one whole sequence
            if self.phase_step >= t.warmup_steps and self.buffer.num_online >= self.agent.sequence_length:
                for _ in range(t.utd):
                    self.accumulator.add(self.agent.update(self._sample(t.offline_data_ratio)))
            self.phase_step += 1
            self.global_step += 1
            bar.update(1)
            if episode is not None:
                self.accumulator.add({"train/episode_return": episode.episode_return,
                                      "train/episode_length": episode.length})
            if self.phase_step % t.log_every == 0:
                self._log("online", started, self.phase_step - first)
            if self.phase_step % t.eval_every == 0 or self.phase_step == t.online_steps:
                result = self._evaluate("online")
                bar.set_postfix(score=f"{result.normalized_score:.1f}")
            if episode is not None and self.phase_step >= next_checkpoint and self.phase_step < t.online_steps:
                self._checkpoint()
                next_checkpoint = (self.phase_step // t.checkpoint_every + 1) * t.checkpoint_every
        bar.close()
        self.stepper.env.close()
        self.stepper = None
        self._advance_phase()
        self._checkpoint()


class AgentActor:
    """The agent as the evaluator and the env stepper call it: observations (numpy or torch) in,
    actions of the same kind out. ``reset(num_envs)`` tells a planning agent that new episodes
    begin in this acting stream (evaluation and exploration are separate streams)."""

    def __init__(self, agent: Learner, device: torch.device, deterministic: bool):
        self.agent, self.device, self.deterministic = agent, device, deterministic

    def __call__(self, obs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = self.agent.act(obs_t, deterministic=self.deterministic)
        return action if isinstance(obs, torch.Tensor) else action.cpu().numpy()

    def reset(self, num_envs: int) -> None:
        if hasattr(self.agent, "reset"):
            self.agent.reset(num_envs, self.deterministic)


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run folder was started with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (is {run_dir} an rlft run folder?)")
    return OmegaConf.load(path)
