"""On-policy fine-tuning run: behaviour cloning on demonstrations, then PPO in vectorised envs.

Phases: ``bc`` (clone the base policy from the dataset, or load another run's with
``init_from``), an evaluation of the cloned policy, then ``iterations`` PPO iterations of
``rollout_env_steps`` simulator steps in each of ``num_envs`` envs. Every iteration starts from
freshly reset envs (seeds derived from the run seed and the iteration), so a checkpoint at
an iteration boundary holds the whole state and ``resume`` continues bit for bit.

The run folder gets ``config.yaml``, ``metrics.csv`` (+ TensorBoard), ``bc_checkpoint/``,
``checkpoints/step_<iteration>`` (atomic), ``eval.json`` and ``learning_curve.png`` (success or
normalised score against environment steps).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlft.agents.families import FamilyConfig, build_actor, build_base, build_critic_encoder, wrap_env
from rlft.agents.ppo import PPO, PPOConfig
from rlft.agents.registry import config_from_mapping
from rlft.envs.factory import make_env, make_vector_env, resolve_task
from rlft.offline.bc import BCConfig, chunk_windows, train_bc
from rlft.offline.dataset import TransitionDataset
from rlft.offline.loaders import load_task_dataset
from rlft.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlft.runtime.evaluation import EvalResult, evaluate
from rlft.runtime.run_folder import open_run_folder, write_eval_json
from rlft.runtime.plotting import plot_learning_curve
from rlft.runtime.seeding import get_rng_state, seed_everything, set_rng_state

BC_CHECKPOINT = "bc_checkpoint"


@dataclass
class LoopConfig:
    """Budgets and cadences (``loop:`` in the config)."""

    num_envs: int = 8
    rollout_env_steps: int = 150  # simulator steps per env per iteration (agent steps: this / chunk size)
    iterations: int = 50
    eval_every: int = 5  # iterations
    eval_episodes: int = 20
    eval_envs: int = 10
    eval_seed: int = 1_000_000
    checkpoint_every: int = 10  # iterations
    keep_checkpoints: int = 2
    asynchronous: bool = False  # subprocess vector envs
    normalize_obs: bool = True  # dataset statistics
    progress: bool = True


class FinetuneExperiment:
    """Builds the dataset, policy, envs and PPO from a resolved config, and runs or resumes."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = torch.device(cfg.device)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        seed_everything(int(cfg.seed))
        self.loop: LoopConfig = config_from_mapping(LoopConfig, cfg.loop, "loop")
        # the task may add policy settings that depend on its observations (pixel layout)
        policy = {**cfg.method.policy, **cfg.task.get("policy", {})}
        self.family: FamilyConfig = config_from_mapping(FamilyConfig, policy, "method.policy / task.policy")
        self.bc_cfg: BCConfig = config_from_mapping(BCConfig, cfg.method.bc, "method.bc")
        self.ppo_cfg: PPOConfig = config_from_mapping(PPOConfig, cfg.method.ppo, "method.ppo")
        self.task = resolve_task(cfg.task.env_cfg.task)
        self.dataset = self._load_dataset()
        probe = make_env(cfg.task.env_cfg)
        self.dataset.check_spaces(probe.observation_space.shape, probe.action_space.shape, self.task.env_id)
        probe.close()
        self.obs_stats = self._observation_stats() if self.loop.normalize_obs else None
        obs_dim, action_dim = self.dataset.obs_dim, self.dataset.action_dim
        self.base = build_base(self.family, obs_dim, action_dim).to(self.device)
        self.iteration, self.env_steps = 0, 0
        self.eval_history: list[dict[str, Any]] = []
        self._resumed = False

    # ------------------------------------------------------------------ setup
    def _load_dataset(self) -> TransitionDataset:
        ds_cfg = self.cfg.task.dataset
        return load_task_dataset(ds_cfg.source, self.task, ds_cfg.get("format", "auto"))

    def _observation_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Dataset mean/std per observation entry; pixel entries are only scaled to ``[0, 1]``
        (per-pixel statistics of a mostly static background would blow up rare changes)."""
        mean, std = self.dataset.observation_stats()
        if self.family.image_shape is not None:
            mean[self.family.state_dim :], std[self.family.state_dim :] = 0.0, 255.0
        return mean, std

    def _chunked_env(self, num_envs: int, chunk: int):
        return make_vector_env(
            self.cfg.task.env_cfg, num_envs, self.obs_stats, self.loop.asynchronous, chunk, self.family.obs_history
        )

    def _vector_env(self, num_envs: int):
        """The env the PPO actor acts in (chunked, or hiding the residual family's base)."""
        return wrap_env(self.family, self._chunked_env(num_envs, self.family.env_chunk), self.base, self.device)

    def _build_learner(self) -> None:
        obs_dim, action_dim = self.dataset.obs_dim, self.dataset.action_dim
        self.actor = build_actor(self.family, self.base, obs_dim, action_dim).to(self.device)
        self.env = self._vector_env(self.loop.num_envs)
        self.eval_env = self._vector_env(min(self.loop.eval_envs, self.loop.eval_episodes))
        # the cloned base alone acts in chunks; only the residual family's PPO env differs (it hides the base)
        self.base_eval_env = self.eval_env
        if self.family.family == "residual":
            self.base_eval_env = self._chunked_env(self.eval_env.num_envs, self.family.act_steps)
        critic_encoder = build_critic_encoder(self.family, self.dataset.action_dim)
        obs_dim = self.env.single_observation_space.shape[0]
        self.ppo = PPO(self.actor, obs_dim, self.ppo_cfg, self.loop.num_envs, self.device, critic_encoder)

    # ---------------------------------------------------------------- phases
    def _behaviour_cloning(self) -> None:
        source = self.cfg.get("init_from")
        if source:
            path = Path(source) / BC_CHECKPOINT if (Path(source) / BC_CHECKPOINT).is_dir() else Path(source)
            state = load_checkpoint(path, self.device)
            if state["family_base"] != type(self.base).__name__:
                raise ValueError(
                    f"init_from {path}: holds a {state['family_base']}, this run needs a {type(self.base).__name__}"
                )
            self.base.load_state_dict(state["base"])
            print(f"initialised the base policy from {path}")
        elif self.family.family != "gaussian" or self.family.bc_init:
            cond, chunks = chunk_windows(self.dataset, self.family.horizon, self.family.obs_history, self.obs_stats)
            log = lambda step, m: self.logger.log(0, {"phase": "bc", "bc/step": step, **m})  # noqa: E731
            train_bc(self.base, cond, chunks, self.bc_cfg, self.device, log, self.loop.progress)
        state = {
            "base": self.base.state_dict(),
            "family_base": type(self.base).__name__,
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
        }
        final = save_checkpoint(self.run_dir / ".bc", 0, state)
        shutil.rmtree(self.run_dir / BC_CHECKPOINT, ignore_errors=True)
        os.replace(final, self.run_dir / BC_CHECKPOINT)
        shutil.rmtree(self.run_dir / ".bc", ignore_errors=True)

    def _evaluate(self, phase: str) -> EvalResult:
        act, env = (self.base.act, self.base_eval_env) if phase == "bc" else (self.actor.act, self.eval_env)

        def act_numpy(obs: np.ndarray) -> np.ndarray:
            return act(torch.as_tensor(obs, dtype=torch.float32, device=self.device), deterministic=True).cpu().numpy()

        # sampling noise of stochastic samplers (DDPM) from its own seed: the same policy always scores the
        # same, and evaluating never shifts the training run's random stream
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.loop.eval_seed)
            result = evaluate(act_numpy, env, self.loop.eval_episodes, self.loop.eval_seed, *self._ref_scores())
        record = {"step": self.env_steps, "iteration": self.iteration, "phase": phase, **result.as_dict()}
        self.eval_history.append(record)
        self.logger.log(
            self.env_steps,
            {"phase": phase, "eval/return": result.return_mean, "eval/normalized_score": result.normalized_score},
        )
        self._write_eval_json()
        return result

    def _ref_scores(self) -> tuple[float | None, float | None]:
        return self.dataset.ref_min_score, self.dataset.ref_max_score

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> Path:
        state = {
            "ppo": self.ppo.state_dict(),
            "counters": {"iteration": self.iteration, "env_steps": self.env_steps},
            "rng": get_rng_state(),
            "eval_history": self.eval_history,
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
        }
        return save_checkpoint(self.run_dir / "checkpoints", self.iteration, state, self.loop.keep_checkpoints)

    def resume(self) -> bool:
        """Continue from the newest checkpoint; ``False`` when there is none."""
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            return False
        state = load_checkpoint(path, self.device)
        self._build_learner()
        self.ppo.load_state_dict(state["ppo"])
        self.iteration, self.env_steps = state["counters"]["iteration"], state["counters"]["env_steps"]
        self.eval_history = list(state["eval_history"])
        set_rng_state(state["rng"])
        self._resumed = True
        print(f"resumed from {path} (iteration {self.iteration}, {self.env_steps} env steps)")
        return True

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Behaviour cloning (unless resumed), then the remaining PPO iterations; returns ``eval.json``."""
        self.logger = open_run_folder(self.run_dir, self.cfg, self.env_steps if self._resumed else None)
        try:
            if not self._resumed:
                self._behaviour_cloning()
                self._build_learner()
                self._evaluate("bc")
                self._checkpoint()
            self._iterate()
        finally:
            self.logger.close()
        self._write_eval_json(done=True)
        plot_learning_curve(
            self.eval_history,
            self.run_dir / "learning_curve.png",
            title=f"{self.cfg.method.name} on {self.task.name} (seed {self.cfg.seed})",
            xlabel="environment steps",
        )
        return json.loads((self.run_dir / "eval.json").read_text())

    @property
    def agent_steps(self) -> int:
        """Agent steps per env per iteration (chunks for chunked families)."""
        return -(-self.loop.rollout_env_steps // self.family.env_chunk)

    def _iterate(self) -> None:
        loop = self.loop
        bar = tqdm(
            total=loop.iterations, initial=self.iteration, desc="ppo", disable=not loop.progress, mininterval=1.0
        )
        while self.iteration < loop.iterations:
            started = time.perf_counter()
            seeds = [int(self.cfg.seed) * 1_000_003 + self.iteration * loop.num_envs + i for i in range(loop.num_envs)]
            obs, _ = self.env.reset(seed=seeds)
            rollout, _ = self.ppo.collect(self.env, obs, self.agent_steps)
            collected = time.perf_counter()
            metrics = self.ppo.update(rollout)
            self.iteration += 1
            self.env_steps += rollout.env_steps
            episodes = rollout.episodes
            if episodes:
                metrics["train/episode_return"] = float(np.mean([e["return"] for e in episodes]))
                if "success" in episodes[0]:
                    metrics["train/success_rate"] = float(np.mean([e["success"] for e in episodes]))
            metrics.update(
                {
                    "phase": "ppo",
                    "iteration": self.iteration,
                    "time/rollout_s": collected - started,
                    "time/update_s": time.perf_counter() - collected,
                    "time/env_steps_per_s": rollout.env_steps / max(collected - started, 1e-9),
                }
            )
            self.logger.log(self.env_steps, metrics)
            bar.update(1)
            if self.iteration % loop.eval_every == 0 or self.iteration == loop.iterations:
                result = self._evaluate("ppo")
                bar.set_postfix(score=f"{result.normalized_score:.1f}")
            if self.iteration % loop.checkpoint_every == 0 or self.iteration == loop.iterations:
                self._checkpoint()
        bar.close()

    def _write_eval_json(self, done: bool = False) -> None:
        bc = [r for r in self.eval_history if r["phase"] == "bc"]
        ppo = [r for r in self.eval_history if r["phase"] == "ppo"]
        out = {
            "task": self.task.name,
            "method": self.cfg.method.name,
            "dataset": self.dataset.summary(),
            "seed": int(self.cfg.seed),
            "bc": bc[-1] if bc else None,
            "final": ppo[-1] if (done and ppo) else None,
            "env_steps": self.env_steps,
            "history": self.eval_history,
        }
        write_eval_json(self.run_dir, out)
