"""The Python API and ``rlft-eval``: ``train`` runs what the command runs (the same eval.json),
``load_policy`` acts from a checkpoint without the run's dataset or buffer, ``evaluate`` reproduces
the run's own evaluations and records episodes as MP4 files of the episode's frame count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlft.api import evaluate, load_policy, train
from rlft.offline.loaders import save_native
from rlft.runtime.experiment import Experiment

from conftest import episodes_to_dataset, rollout_episodes

TINY = ["agent.vae_hidden=32", "agent.hidden=[32,32]", "trainer.offline_steps=40", "trainer.pretrain_steps.vae=20",
        "trainer.online_steps=60", "trainer.eval_every=20", "trainer.log_every=20", "trainer.checkpoint_every=20",
        "trainer.eval_episodes=3", "trainer.eval_envs=2"]


def test_train_load_and_evaluate_round_trip_equals_the_commands_eval_json(tmp_path, native_hopper, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, f"dataset.source={native_hopper}", "progress=false"]
    run = train("smoke", overrides)
    assert run.run_dir.parent == Path("runs") / "smoke" and run.results["done"]
    assert json.loads((run.run_dir / "run.json").read_text())["started"]["command"] == ["rlft.api.train", "smoke",
                                                                                      *overrides]
    cli = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", "experiment=smoke", *overrides,
                           f"hydra.run.dir={cli}"], cwd=tmp_path, env=os.environ, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((cli / "eval.json").read_text())["history"] == run.results["history"]

    after, before = evaluate(run.run_dir), evaluate(run.run_dir, "pretrained")
    assert after["returns"] == run.results["after"]["returns"]
    assert before["returns"] == run.results["before"]["returns"]
    assert (run.run_dir / "evals" / f"{after['checkpoint']}_seed1000000_3ep.json").is_file()
    noisy = evaluate(run.run_dir, deterministic=False)  # exploration noise, from the run's eval noise seed
    assert noisy["returns"] == evaluate(run.run_dir, deterministic=False)["returns"] != after["returns"]
    assert not noisy["deterministic"]

    # the dataset loader must not run: load_policy builds from the config and checkpoint alone
    monkeypatch.setattr(Experiment, "load_dataset", lambda *a, **k: pytest.fail("load_policy read the dataset"))
    policy = load_policy(run.run_dir)
    env = policy.make_env()
    obs, _ = env.reset(seed=1_000_000)  # the run's first evaluation episode
    policy.reset()
    total, done = 0.0, False
    while not done:
        action = policy.act(obs)
        assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1.0)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done = total + float(reward), terminated or truncated
    assert total == pytest.approx(run.results["after"]["returns"][0], rel=1e-6)
    assert policy.act(np.stack([obs, obs])).shape == (2, *env.action_space.shape)


@pytest.fixture
def pendulum_data(tmp_path) -> Path:
    data = episodes_to_dataset(rollout_episodes("Pendulum-v1", 400, seed=2))
    data.env_id = "Pendulum-v1"
    data.metadata["action_bounds"] = [[-2.0], [2.0]]  # recorded in the env's native units
    return save_native(data, tmp_path / "pendulum.h5")


def test_rlft_eval_writes_one_video_per_episode_with_its_frames(tmp_path, pendulum_data):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    run_dir = tmp_path / "run"
    train("smoke", [*TINY, "env.task=pendulum", f"dataset.source={pendulum_data}", "progress=false",
                    "trainer.eval_episodes=2"], run_dir)
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.evaluate", str(run_dir), "--episodes", "2", "--video"],
                          cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 episodes from seed 1000000" in proc.stdout and proc.stdout.count("video: ") == 2
    (written,) = (run_dir / "evals").glob("step_*_seed1000000_2ep.json")
    record = json.loads(written.read_text())
    assert record["returns"] == json.loads((run_dir / "eval.json").read_text())["after"]["returns"]
    for video, length in zip(record["videos"], record["lengths"]):
        reader = imageio.get_reader(run_dir / video)
        assert reader.count_frames() == length + 1  # the reset frame, then one per step
        assert reader.get_data(0).shape == (500, 500, 3)


def test_a_bad_checkpoint_name_lists_the_kept_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.evaluate", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "cannot load its policy" in proc.stderr and "Traceback" not in proc.stderr


FINETUNE = ["method.bc.steps=20", "method.bc.log_every=10", "loop.iterations=2", "loop.num_envs=2", "loop.eval_every=1",
            "loop.eval_episodes=2", "loop.eval_envs=2", "loop.rollout_env_steps=20", "method.policy.hidden=[32,32]",
            "method.ppo.critic_hidden=[32,32]", "method.ppo.minibatch_size=8", "progress=false"]


@pytest.mark.parametrize("family", ["dppo", "gaussian"])
def test_a_finetune_runs_checkpoints_evaluate_without_its_demonstrations(tmp_path, monkeypatch, family):
    from rlft.runtime.finetune import FinetuneExperiment

    run = train(f"finetune/{family}/mw-push", FINETUNE, tmp_path / "run")
    monkeypatch.setattr(FinetuneExperiment, "load_dataset", lambda *a, **k: pytest.fail("read the demonstrations"))
    assert evaluate(run.run_dir)["returns"] == run.results["after"]["returns"]
    assert evaluate(run.run_dir, "pretrained")["returns"] == run.results["before"]["returns"]
    policy = load_policy(run.run_dir)
    env = policy.make_env()
    obs, _ = env.reset(seed=0)
    policy.reset()
    assert policy.act(obs).shape == env.action_space.shape
