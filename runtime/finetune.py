"""The BC -> PPO pipeline (``pipeline: finetune``): behaviour cloning on demonstrations, then PPO
in vectorised envs.

Phases: ``bc`` (clone the base policy from the dataset; ``init_from`` takes another run's
instead), an evaluation of the cloned policy, then ``ppo``: ``iterations`` PPO iterations of
``rollout_env_steps`` simulator steps in each of ``num_envs`` envs. Every iteration starts from
freshly reset envs (seeds derived from the run seed and the iteration), so a checkpoint at an
iteration boundary holds the whole state and ``resume`` continues bit for bit. The run folder,
checkpoints (``checkpoints/step_<iteration>``), ``eval.json`` and the learning curve (against
environment steps) come from :class:`rlft.runtime.runner.Runner`.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rlft.agents.families import FamilyConfig, build_actor, build_base, build_critic_encoder, wrap_env
from rlft.agents.ppo import PPO, PPOConfig, RunningMeanStd, normalize_observations
from rlft.common.typed_config import ConfigError, config_from_mapping
from rlft.envs.factory import make_env, make_vector_env, resolve_task
from rlft.agents.bc import BCConfig, train_bc
from rlft.offline.demos import chunk_windows
from rlft.runtime.evaluation import Acting, EvalResult, evaluate
from rlft.common.progress import Progress
from rlft.runtime.ray_evaluation import cpu_copy, evaluate_on_workers
from rlft.runtime.rollout_workers import RayRollouts, RolloutConfig
from rlft.runtime.runner import DatasetRunner, Phase


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


@dataclass
class RolloutEnvs:
    """Builds the vector env PPO acts in (chunked, or hiding the residual family's base): a plain,
    picklable object, so that Ray rollout workers build the same envs as the learner."""

    env_cfg: dict[str, Any]
    family: FamilyConfig
    base: torch.nn.Module | None  # the residual family's frozen base (None: only bare envs are built)
    obs_stats: tuple[np.ndarray, np.ndarray] | None = None
    asynchronous: bool = False
    device: str = "cpu"

    def __call__(self, num_envs: int, chunk: int | None = None):
        """``num_envs`` sub-envs; with ``chunk``, the bare env executing chunks of that many actions."""
        env = make_vector_env(self.env_cfg, num_envs, self.obs_stats, self.asynchronous,
                              chunk or self.family.env_chunk, self.family.obs_history)
        return env if chunk is not None else wrap_env(self.family, env, self.base, self.device)


@dataclass
class ArrayActor:
    """A policy as the evaluator calls it: numpy observations in (standardised by PPO's running
    statistics when it keeps them), numpy actions out (deterministic unless told). Picklable, for Ray workers."""

    policy: torch.nn.Module  # has act(obs, deterministic)
    obs_stats: RunningMeanStd | None
    obs_clip: float
    device: torch.device
    deterministic: bool = True  # False: the policy's own exploration (rlft-eval --stochastic)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = normalize_observations(obs, self.obs_stats, self.obs_clip)
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.policy.act(obs_t, deterministic=self.deterministic).cpu().numpy()


class FinetuneExperiment(DatasetRunner):
    """The BC -> PPO pipeline: builds the dataset, policy, envs and PPO from a resolved config."""

    pipeline = "finetune"
    budget_key = "loop.iterations"  # the fine-tuning budget, which a resume may raise
    axis = "environment steps"
    method_key = "method"
    reference_label = "demonstrations"

    @classmethod
    def settings(cls, cfg: DictConfig) -> dict[str, Any]:
        policy = {**cfg.method.policy, **cfg.task.get("policy", {})}  # the task's pixel layout joins the policy
        return {"loop": config_from_mapping(LoopConfig, cfg.loop, "loop"),
                "family": config_from_mapping(FamilyConfig, policy, "method.policy"),  # (or task.policy)
                "bc": config_from_mapping(BCConfig, cfg.method.bc, "method.bc"),
                "ppo": config_from_mapping(PPOConfig, cfg.method.ppo, "method.ppo"),
                "rollout": config_from_mapping(RolloutConfig, cfg.get("rollout") or {}, "rollout")}

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        settings = self.settings(cfg)
        self.loop: LoopConfig = settings["loop"]
        self.keep_checkpoints = self.loop.keep_checkpoints
        self.family: FamilyConfig = settings["family"]
        self.bc_cfg: BCConfig = settings["bc"]
        self.ppo_cfg: PPOConfig = settings["ppo"]
        self.rollout: RolloutConfig = settings["rollout"]
        try:
            self.num_envs = self.rollout.total_envs(self.loop.num_envs)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self.rollouts: RayRollouts | None = None
        self.clones = self.family.family != "gaussian" or self.family.bc_init  # a Gaussian may start from scratch
        if self.loop.normalize_obs and self.ppo_cfg.obs_norm_running:
            raise ConfigError("method.ppo.obs_norm_running=true normalises observations by running statistics; "
                              "set loop.normalize_obs=false (dataset statistics) to use it")
        self.check_budget({"method.bc.steps": self.bc_cfg.steps if self.clones else 0},
                          {"loop.iterations": self.loop.iterations})
        self.task = resolve_task(cfg.task.env_cfg.task)
        self.dataset = self.load_dataset(cfg.task.dataset, cfg.task.env_cfg)
        self.obs_stats = self._observation_stats() if self.loop.normalize_obs else None
        obs_dim, action_dim = self.dataset.obs_dim, self.dataset.action_dim
        self.base = build_base(self.family, obs_dim, action_dim).to(self.device)
        self.phases = [
            Phase("bc", self._behaviour_cloning, self.bc_cfg.steps, pretraining=True, on_axis=False,
                  evaluate_at_end=True),
            Phase("ppo", self._iterate, self.loop.iterations),
        ]

    # ------------------------------------------------------------------ setup
    def _observation_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Dataset mean/std per observation entry; pixel entries are only scaled to ``[0, 1]``
        (per-pixel statistics of a mostly static background would blow up rare changes)."""
        mean, std = self.dataset.observation_stats()
        if self.family.image_shape is not None:
            mean[self.family.state_dim :], std[self.family.state_dim :] = 0.0, 255.0
        return mean, std

    def _envs(self, device: str | torch.device) -> RolloutEnvs:
        """The env builder on ``device`` (rollout workers: a CPU copy of the base)."""
        same = torch.device(device) == self.device
        return RolloutEnvs(OmegaConf.to_container(self.cfg.task.env_cfg, resolve=True), self.family,
                           self.base if same else copy.deepcopy(self.base).cpu(), self.obs_stats,
                           self.loop.asynchronous, str(device))

    @property
    def base_chunk(self) -> int | None:
        """The cloned base's env chunk where its eval env differs from PPO's (the residual family's
        PPO env hides the base); None: the same env."""
        return self.family.act_steps if self.family.family == "residual" else None

    def finish(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()

    def _build_learner(self) -> None:
        obs_dim, action_dim = self.dataset.obs_dim, self.dataset.action_dim
        self.actor = build_actor(self.family, self.base, obs_dim, action_dim).to(self.device)
        envs = self._envs(self.device)
        self.eval_env = envs(min(self.loop.eval_envs, self.loop.eval_episodes))
        # the cloned base alone acts in chunks; only the residual family's PPO env differs (it hides the base)
        self.base_eval_env = self.eval_env
        if self.base_chunk is not None:
            self.base_eval_env = envs(self.eval_env.num_envs, chunk=self.base_chunk)
        critic_encoder = build_critic_encoder(self.family, self.dataset.action_dim)
        obs_dim = self.eval_env.single_observation_space.shape[0]
        self.ppo = PPO(self.actor, obs_dim, self.ppo_cfg, self.num_envs, self.device, critic_encoder)
        if self.rollout.backend == "ray":
            self.env = None
            if self.rollouts is not None:
                self.rollouts.close()
            cpu_envs, n = self._envs("cpu"), self.eval_env.num_envs
            eval_envs = {"ppo": functools.partial(cpu_envs, n), "bc": functools.partial(cpu_envs, n, self.base_chunk)}
            self.rollouts = RayRollouts(self.rollout, cpu_envs, self.ppo, self.num_envs, int(self.cfg.seed), eval_envs)
        else:
            self.env = envs(self.num_envs)

    # ---------------------------------------------------------------- phases
    def _behaviour_cloning(self) -> None:
        """Clone the base policy (unless it is a Gaussian trained from scratch), then build PPO over it."""
        if self.clones:
            cond, chunks = chunk_windows(self.dataset, self.family.horizon, self.family.obs_history, self.obs_stats)
            log = lambda step, m: self.log(m, phase_step=step)  # noqa: E731
            train_bc(self.base, cond, chunks, self.bc_cfg, self.device, log, self.show_progress)
        self._build_learner()

    def load_pretrained(self, state: Mapping[str, Any], config: DictConfig, path: Path) -> None:
        """Another run's cloned base (of the same kind), then PPO over it."""
        if state["family_base"] != type(self.base).__name__:
            raise ValueError(
                f"init_from {path}: holds a {state['family_base']}, this run needs a {type(self.base).__name__}"
            )
        self.base.load_state_dict(state["base"])
        self._build_learner()

    def evaluate_policy(self, phase: str) -> EvalResult:
        """The cloned base (phase ``bc``) or PPO's actor, deterministic, here or on the rollout workers."""
        policy, env = (self.base, self.base_eval_env) if phase == "bc" else (self.actor, self.eval_env)
        stats = None if phase == "bc" else self.ppo.obs_stats  # PPO's running statistics, if it keeps them
        loop, refs = self.loop, (self.dataset.ref_min_score, self.dataset.ref_max_score)
        # sampling noise of stochastic samplers (DDPM) from its own seed: the same policy always scores the
        # same, and evaluating never shifts the training run's random stream
        if self.rollouts is not None:
            act = ArrayActor(cpu_copy(policy), copy.deepcopy(stats), self.ppo_cfg.obs_clip, torch.device("cpu"))
            return evaluate_on_workers(self.rollouts.pool, act, "bc" if phase == "bc" else "ppo", loop.eval_episodes,
                                       loop.eval_seed, *refs, rng_seed=loop.eval_seed, version=self.phase_step)
        act = ArrayActor(policy, stats, self.ppo_cfg.obs_clip, self.device)
        return evaluate(act, env, loop.eval_episodes, loop.eval_seed, *refs, self.show_progress,
                        rng_seed=loop.eval_seed)

    # ------------------------------------------------------------ checkpoints
    def pipeline_state(self) -> dict[str, Any]:
        stats = [torch.as_tensor(x) for x in self.obs_stats] if self.obs_stats is not None else None
        return {"base": self.base.state_dict(), "family_base": type(self.base).__name__, "ppo": self.ppo.state_dict(),
                "obs_stats": stats,  # the env's normalisation, for acting() without the dataset
                "ref_scores": [self.dataset.ref_min_score, self.dataset.ref_max_score]}

    @classmethod
    def acting(cls, cfg: DictConfig, saved: Mapping[str, Any], device: str, deterministic: bool = True) -> Acting:
        """The cloned base (a checkpoint at the end of behaviour cloning) or PPO's actor, rebuilt
        from the config and the env's shapes, with the dataset statistics the checkpoint holds
        (checkpoints from before 2026-12-08 hold none: export or resume those). Not for the
        residual family, whose env hides its base (``rlft-export`` covers it)."""
        state, counters = saved["state"], saved["counters"]
        settings = cls.settings(cfg)
        family: FamilyConfig = settings["family"]
        loop: LoopConfig = settings["loop"]
        if "obs_stats" not in state:
            raise ValueError("this checkpoint predates dataset-free loading (it holds no observation statistics); "
                             "rlft-export exports it, or resume the run once to write a newer checkpoint")
        if family.family == "residual":
            raise ValueError("the residual family acts through a base hidden in its env: load_policy and rlft-eval "
                             "take gaussian and dppo runs; rlft-export covers residual ones")
        obs_stats = tuple(x.cpu().numpy() for x in state["obs_stats"]) if state["obs_stats"] is not None else None
        env_cfg = OmegaConf.to_container(cfg.task.env_cfg, resolve=True)
        probe = make_env(env_cfg)
        try:
            obs_dim, action_dim = gym.spaces.flatdim(probe.observation_space), probe.action_space.shape[0]
        finally:
            probe.close()
        base = build_base(family, obs_dim, action_dim).to(device)
        base.load_state_dict(state["base"])
        actor = build_actor(family, base, obs_dim, action_dim).to(device)
        cloned_only = counters["phase_index"] == 0 or (counters["phase_index"] == 1 and counters["phase_step"] == 0)
        policy, stats = base, None
        if not cloned_only:  # PPO's actor, with its running statistics when it keeps them
            envs = RolloutEnvs(env_cfg, family, None, obs_stats)
            probe_envs = envs(1, chunk=family.env_chunk)
            ppo_obs_dim = probe_envs.single_observation_space.shape[0]
            probe_envs.close()
            ppo = PPO(actor, ppo_obs_dim, settings["ppo"], 1, device, build_critic_encoder(family, action_dim))
            ppo.load_state_dict(state["ppo"])
            policy, stats = actor, ppo.obs_stats

        def one_env(render_mode: str | None, inner: Callable[[gym.Env], gym.Env] | None = None) -> gym.Env:
            kwargs = {**env_cfg.get("env_kwargs", {}), **({"render_mode": render_mode} if render_mode else {})}
            return make_env({**env_cfg, "env_kwargs": kwargs}, obs_stats, action_chunk=family.env_chunk,
                            obs_history=family.obs_history, inner=inner)

        refs = tuple(None if r is None else float(r) for r in state["ref_scores"])
        return Acting(ArrayActor(policy, stats, settings["ppo"].obs_clip, torch.device(device), deterministic), one_env,
                      loop.eval_episodes, loop.eval_envs, loop.eval_seed, refs, cls.plot_metric)

    def load_pipeline_state(self, state: Mapping[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self._build_learner()
        self.ppo.load_state_dict(state["ppo"])

    # ------------------------------------------------------------------- run
    @property
    def agent_steps(self) -> int:
        """Agent steps per env per iteration (chunks for chunked families)."""
        return -(-self.loop.rollout_env_steps // self.family.env_chunk)

    def _iterate(self) -> None:
        loop = self.loop
        bar = Progress(loop.iterations, "ppo", initial=self.phase_step, enabled=self.show_progress)
        while self.phase_step < loop.iterations:
            started = time.perf_counter()
            seeds = [int(self.cfg.seed) * 1_000_003 + self.phase_step * self.num_envs + i for i in range(self.num_envs)]
            if self.rollouts is not None:
                rollout = self.rollouts.collect(self.ppo, seeds, self.agent_steps, version=self.phase_step)
            else:
                obs, _ = self.env.reset(seed=seeds)
                rollout, _ = self.ppo.collect(self.env, obs, self.agent_steps)
            collected = time.perf_counter()
            metrics = self.check_update(self.ppo.update(rollout))
            self.phase_step += 1
            self.work += 1
            self.step += rollout.env_steps
            episodes = rollout.episodes
            if episodes:
                metrics["train/episode_return"] = float(np.mean([e["return"] for e in episodes]))
                if "success" in episodes[0]:
                    metrics["train/success_rate"] = float(np.mean([e["success"] for e in episodes]))
            metrics.update(
                {
                    "iteration": self.phase_step,
                    "time/rollout_s": collected - started,
                    "time/update_s": time.perf_counter() - collected,
                    "time/env_steps_per_s": rollout.env_steps / max(collected - started, 1e-9),
                }
            )
            self.log(metrics)
            bar.update(1)
            if self.phase_step % loop.eval_every == 0 or self.phase_step == loop.iterations:
                bar.set_postfix(score=f"{self.evaluate().normalized_score:.1f}")
            if self.phase_step % loop.checkpoint_every == 0 and self.phase_step < loop.iterations:
                self.checkpoint()
        bar.close()
