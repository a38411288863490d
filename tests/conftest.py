"""Shared fixtures: tiny datasets written by the project's own code, no downloads."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlft.offline.dataset import TransitionDataset
from rlft.offline.loaders import save_native
from rlft.runtime.checkpoint import latest_checkpoint, load_checkpoint
from rlft.runtime.experiment import Experiment
from rlft.runtime.runner import Runner

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_HOPPER_WEAK = REPO_ROOT / "data" / "minari" / "rlft" / "hopper" / "medium-weak-v0"
SHIPPED_MAZE = REPO_ROOT / "data" / "minari" / "rlft" / "pointmaze_umaze" / "noisy-v0"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fixed seeds, one torch thread, and a private Minari root for every test."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari_root"))
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)


def rollout_episodes(env_id: str, steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random-policy episodes (Minari layout: T+1 observations per T steps); the last one is cut."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    episodes, obs = [], env.reset(seed=seed)[0]
    current: dict[str, list] = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    for t in range(steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, _ = env.step(action)
        last = t == steps - 1
        current["observations"].append(obs)
        current["actions"].append(action)
        current["rewards"].append(reward)
        current["terminations"].append(terminated)
        current["truncations"].append(truncated or (last and not terminated))
        if terminated or truncated or last:
            episodes.append({k: np.asarray(v) for k, v in current.items()})
            obs = env.reset()[0]
            current = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    return episodes


def episodes_to_dataset(episodes: list[dict[str, np.ndarray]], source: str = "<test>") -> TransitionDataset:
    """Flatten Minari-layout episodes into a TransitionDataset."""
    cat = lambda key: np.concatenate([e[key] for e in episodes])  # noqa: E731
    return TransitionDataset(
        observations=np.concatenate([e["observations"][:-1] for e in episodes]),
        actions=cat("actions"),
        rewards=cat("rewards"),
        terminals=cat("terminations"),
        timeouts=cat("truncations"),
        next_observations=np.concatenate([e["observations"][1:] for e in episodes]),
        source=source,
    )


@pytest.fixture(scope="session")
def hopper_episodes() -> list[dict[str, np.ndarray]]:
    return rollout_episodes("Hopper-v5", 400, seed=3)


@pytest.fixture
def hopper_dataset(hopper_episodes) -> TransitionDataset:
    return episodes_to_dataset(hopper_episodes, "hopper-random")


@pytest.fixture
def native_hopper(tmp_path, hopper_dataset) -> Path:
    """The random-policy hopper dataset saved in rlft's native HDF5 format."""
    hopper_dataset.env_id = "Hopper-v5"
    return save_native(hopper_dataset, tmp_path / "hopper-random.h5")


def run_interrupted(cfg, run_dir: Path, monkeypatch: pytest.MonkeyPatch, after_saves: int) -> dict:
    """Run an ``rlft`` experiment that crashes right after its ``after_saves``-th checkpoint
    save (as a killed process would); returns the state of the checkpoint it left."""
    saves = {"n": 0}
    original = Runner.checkpoint

    def crashing_checkpoint(self):
        path = original(self)
        saves["n"] += 1
        if saves["n"] == after_saves:
            raise KeyboardInterrupt
        return path

    with monkeypatch.context() as patch:
        patch.setattr(Runner, "checkpoint", crashing_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            Experiment(cfg, run_dir).run()
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))


def assert_log_probs_recomputed(policy, batch) -> torch.Tensor:
    """The log-probability of every sampled token, as recorded while sampling, equals the training
    recomputation over the batch's sequences (with their images); returns the recomputation."""
    recomputed = policy.token_log_probs([s.tokens for s in batch.samples], [s.image for s in batch.samples])
    for row, sample in enumerate(batch.samples):
        mask = torch.tensor(sample.model_mask)
        assert torch.allclose(recomputed[row, : len(sample.tokens)][mask],
                              torch.tensor(sample.sampled_log_probs)[mask], atol=1e-5)
    return recomputed
