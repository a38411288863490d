"""rlft from Python: train an experiment, load a run's policy to act, evaluate a run.

    from rlft.api import evaluate, load_policy, train

    run = train("smoke", ["trainer.online_steps=300"])     # what `rlft experiment=smoke ...` runs
    run.run_dir, run.results["after"]["normalized_score"]  # the run folder and its eval.json

    policy = load_policy(run.run_dir)                      # no dataset, no replay buffer
    env = policy.make_env()                                # the env as the policy sees it
    obs, _ = env.reset(seed=0)
    policy.reset()                                         # at each episode start (chunked or planning agents)
    action = policy.act(obs)                               # numpy in, numpy out (one observation or a batch)

    record = evaluate(run.run_dir, episodes=10, video=True)  # <run>/evals/*.json, MP4s in evals/videos/
    evaluate(run.run_dir / "export")                       # the rlft-export artifact, as a robot runs it

``train`` builds the runner with the same function the ``rlft`` command uses
(:func:`rlft.runtime.launch.build`) and records the call in the run's ``run.json``. ``load_policy``
and ``evaluate`` take a checkpoint by name: ``"latest"`` (default), ``"pretrained"``, ``step_<n>``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_data:} and ${rlft_or:}
from rlft.runtime.acting import evaluate_export, evaluate_run, is_export, load_acting
from rlft.runtime.evaluation import Acting
from rlft.runtime.launch import build
from rlft.runtime.run_folder import remove_unstarted
from rlft.runtime.run_identity import RunOrigin

__all__ = ["TrainedRun", "Policy", "train", "load_policy", "evaluate"]


@dataclass
class TrainedRun:
    """A finished run: its folder and the content of its ``eval.json``."""

    run_dir: Path
    results: dict[str, Any]


def train(experiment: str = "demo", overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> TrainedRun:
    """Run ``experiment`` with Hydra ``overrides`` in ``run_dir`` (default
    ``runs/<experiment>/<time>``, as the command names it). Bad input raises the error the command
    prints as its one line; a run refused before its first metric row leaves no folder."""
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}", *overrides], return_hydra_config=True)
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
    if cfg.get("resume"):
        raise ValueError("train() starts runs; continue one with the command `rlft resume=<run dir>`")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    folder = Path(run_dir) if run_dir is not None else Path("runs") / experiment / stamp
    origin = RunOrigin(experiment=experiment, choices=choices, overrides=tuple(overrides),
                       command=("rlft.api.train", experiment, *overrides))
    runner, folder = build(cfg, folder, origin)
    try:
        results = runner.run()
    except (ValueError, TypeError, FileNotFoundError, FileExistsError):
        remove_unstarted(folder, claimed=runner.claimed)
        raise
    return TrainedRun(folder, results)


class Policy:
    """A run's trained policy: :meth:`act` on observations of :meth:`make_env`'s env."""

    def __init__(self, acting: Acting, checkpoint: Path):
        self._acting, self.checkpoint = acting, checkpoint

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """One env as the policy sees it: the run's task and wrappers, observations normalised
        with the run's statistics, actions in ``[-1, 1]``."""
        return self._acting.make_env(render_mode, None)

    def reset(self) -> None:
        """Start a new episode (agents that act in chunks or plan keep state between steps)."""
        if hasattr(self._acting.actor, "reset"):
            self._acting.actor.reset(1)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action for one observation (``[obs_dim]``) or a batch (``[n, obs_dim]``)."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim == 1:
            return np.asarray(self._acting.actor(obs[None]))[0]
        return np.asarray(self._acting.actor(obs))


def load_policy(run_dir: str | Path, checkpoint: str | None = None, device: str = "cpu") -> Policy:
    """The policy of a run folder's ``checkpoint`` (``"latest"``, ``"pretrained"``, ``step_<n>``),
    built from its config and checkpoint alone (o2o runs; finetune runs of the gaussian and dppo
    families)."""
    acting, path = load_acting(run_dir, checkpoint, device)
    return Policy(acting, path)


def evaluate(run_dir: str | Path, checkpoint: str | None = None, episodes: int | None = None,
             seed: int | None = None, video: bool = False, device: str = "cpu",
             deterministic: bool = True) -> dict[str, Any]:
    """Evaluate a run folder's checkpoint as the run evaluated itself (default episodes and seed:
    the run's own; the latest checkpoint reproduces ``eval.json``'s last record), or an
    ``rlft-export`` folder as a robot runs it (ONNX Runtime in the raw env); ``video`` writes each
    episode as an MP4; ``deterministic=False`` samples the policy's exploration (seeded: it
    repeats). The record is also written to the folder's ``evals/``."""
    if is_export(run_dir):
        if checkpoint not in (None, "latest") or not deterministic:
            raise ValueError("an export holds one checkpoint's deterministic policy: choose no checkpoint, "
                             "deterministic")
        return evaluate_export(run_dir, episodes, seed, video)
    return evaluate_run(run_dir, checkpoint, episodes, seed, video, device, deterministic)
