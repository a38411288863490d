"""Fine-tuning runs end to end: scripted demonstrations -> behaviour cloning -> PPO, run
folder contents, exact resume, init_from, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rlft.agents.ppo import PPO
from rlft.offline.dataset import DatasetError
from rlft.offline.demos import DemoConfig, collect_demos
from rlft.offline.loaders import load_dataset
from rlft.runtime.checkpoint import list_checkpoints, load_checkpoint
from rlft.runtime.finetune import FinetuneExperiment
from rlft.common.typed_config import ConfigError


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory) -> Path:
    """Four noisy scripted-expert demonstrations of Meta-World reach."""
    out = tmp_path_factory.mktemp("demos")
    info = collect_demos(DemoConfig(task="mw-reach", episodes=4, noise=0.1, seed=0), out)
    assert info["episodes"] == 4 and info["return_mean"] == 1.0  # sparse success reward, all successful
    return Path(info["path"])


def finetune_config(demos: Path, *overrides: str) -> DictConfig:
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose(
            "config",
            [
                "experiment=finetune/dppo/mw-push",
                "task.name=mw-reach",
                "task.env_cfg.task=mw-reach",
                f"task.dataset.source={demos}",
                "task.episode_steps=40",
                "loop.num_envs=2",
                "loop.iterations=3",
                "loop.eval_every=1",
                "loop.eval_episodes=2",
                "loop.eval_envs=2",
                "loop.checkpoint_every=1",
                "loop.keep_checkpoints=10",
                "progress=false",
                "method.bc.steps=40",
                "method.bc.log_every=20",
                "method.policy.hidden=[32,32]",
                "++method.policy.denoising_steps=6",
                "++method.policy.ft_steps=2",
                "method.ppo.critic_hidden=[32,32]",
                "method.ppo.minibatch_size=8",
                "method.ppo.update_epochs=2",
                *overrides,
            ],
        )


def test_demos_are_a_minari_dataset_with_the_task_kwargs(reach_demos):
    dataset = load_dataset(str(reach_demos))
    assert dataset.env_id == "rlft/MetaWorld-v3" and dataset.metadata["env_kwargs"]["env_name"] == "reach-v3"
    assert dataset.obs_dim == 39 and dataset.action_dim == 4
    assert len(dataset.episode_ends) == 4 and dataset.terminals.sum() == 4  # each demo ends on success


@pytest.mark.parametrize("method", ["dppo", "residual", "gaussian"])
def test_run_folder_and_scores(tmp_path, reach_demos, method):
    run_dir = tmp_path / method
    results = FinetuneExperiment(finetune_config(reach_demos, f"method={method}"), run_dir).run()
    for name in ("config.yaml", "metrics.csv", "eval.json", "learning_curve.png", "pretrained_checkpoint"):
        assert (run_dir / name).exists(), name
    assert results["before"]["step"] == 0 and results["after"]["phase_step"] == 3
    # 3 iterations x 2 envs x 40 simulator steps; a chunk cut short by a success counts only its executed steps
    assert results["step"] == 240 if method == "residual" else 0 < results["step"] <= 240
    assert len([r for r in results["history"] if r["phase"] == "ppo"]) == 3
    assert len(list_checkpoints(run_dir / "checkpoints")) == 4  # after BC, then every iteration


def test_resume_continues_bit_for_bit(tmp_path, reach_demos, monkeypatch):
    cfg = finetune_config(reach_demos)
    full = FinetuneExperiment(cfg, tmp_path / "full")
    full_results = full.run()

    calls = {"n": 0}
    original = PPO.collect

    def crash_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PPO, "collect", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        FinetuneExperiment(cfg, tmp_path / "cut").run()
    monkeypatch.setattr(PPO, "collect", original)
    resumed = FinetuneExperiment(cfg, tmp_path / "cut")
    assert resumed.resume() and resumed.phase_step == 2
    resumed_results = resumed.run()

    assert resumed_results["history"] == full_results["history"]
    a = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])["state"]["ppo"]
    b = load_checkpoint(list_checkpoints(tmp_path / "cut" / "checkpoints")[-1])["state"]["ppo"]
    for key in a["actor"]:
        assert torch.equal(a["actor"][key], b["actor"][key]), key
    with pytest.raises(FileExistsError, match="resume"):
        FinetuneExperiment(cfg, tmp_path / "full").run()


def test_init_from_reuses_the_cloned_base_and_checks_its_kind(tmp_path, reach_demos):
    dppo_dir = tmp_path / "dppo"
    FinetuneExperiment(finetune_config(reach_demos, "loop.iterations=1"), dppo_dir).run()
    residual = FinetuneExperiment(
        finetune_config(reach_demos, "method=residual", "loop.iterations=1", f"init_from={dppo_dir}"), tmp_path / "res"
    )
    results = residual.run()
    cloned = load_checkpoint(dppo_dir / "pretrained_checkpoint")["state"]["base"]
    for key, value in residual.base.state_dict().items():
        assert torch.equal(value, cloned[key]), key
    # evaluation has its own random stream: the same cloned policy scores exactly the same in both runs
    assert json.loads((dppo_dir / "eval.json").read_text())["before"]["returns"] == results["before"]["returns"]
    with pytest.raises(ValueError, match="GaussianPPOPolicy"):
        FinetuneExperiment(
            finetune_config(reach_demos, "method=gaussian", f"init_from={dppo_dir}"), tmp_path / "g"
        ).run()


def test_dataset_of_another_task_is_refused(tmp_path, reach_demos):
    cfg = finetune_config(reach_demos, "task.env_cfg.task=mw-push")
    with pytest.raises(DatasetError, match="collected with env_name='reach-v3' but the run's rlft/MetaWorld-v3 uses env_name='push-v3'"):
        FinetuneExperiment(cfg, tmp_path / "x")


def test_two_observation_normalisations_are_refused(tmp_path, reach_demos):
    cfg = finetune_config(reach_demos, "method=gaussian", "method.ppo.obs_norm_running=true")  # loop.normalize_obs too
    with pytest.raises(ConfigError, match="set loop.normalize_obs=false"):
        FinetuneExperiment(cfg, tmp_path / "x")


def pusht_config(demos: str | Path, *overrides: str) -> DictConfig:
    """DPPO on Push-T from 64x64 images, tiny: 24-step episodes, one PPO iteration."""
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose(
            "config",
            [
                "experiment=finetune/dppo/pusht",
                f"task.dataset.source={demos}",
                "+task.env_cfg.max_episode_steps=24",
                "task.episode_steps=24",
                "task.policy.image_features=16",
                "loop.num_envs=2",
                "loop.iterations=1",
                "loop.eval_episodes=2",
                "loop.eval_envs=2",
                "progress=false",
                "method.bc.steps=20",
                "method.policy.hidden=[32,32]",
                "method.policy.denoising_steps=4",
                "method.policy.ft_steps=2",
                "method.ppo.critic_hidden=[32,32]",
                "method.ppo.minibatch_size=4",
                *overrides,
            ],
        )


def test_pixel_policies_fine_tune_on_pusht(tmp_path):
    """Push-T from 64x64 images: scripted demonstrations, a CNN-conditioned diffusion policy, DPPO."""
    info = collect_demos(DemoConfig(task="pusht", episodes=1, noise=0.0, seed=0), tmp_path / "demos")
    dataset = load_dataset(info["path"])
    assert dataset.obs_dim == 2 + 64 * 64 * 3 and dataset.observations[:, 2:].max() <= 255
    cfg = pusht_config(info["path"])
    experiment = FinetuneExperiment(cfg, tmp_path / "run")
    results = experiment.run()
    assert experiment.obs_stats[1][2:].min() == 255.0  # pixels scaled to [0, 1], not standardised
    assert results["after"] is not None and results["step"] <= 2 * 24
    assert experiment.ppo.critic[0].in_dim == dataset.obs_dim  # the critic has its own image encoder


def test_demonstrations_that_do_not_fit_the_env_are_refused(tmp_path, reach_demos):
    cfg = finetune_config(reach_demos, "task.env_cfg.task=hopper")
    with pytest.raises(DatasetError, match="collected in rlft/MetaWorld-v3"):
        FinetuneExperiment(cfg, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not found"):
        FinetuneExperiment(finetune_config(tmp_path / "missing"), tmp_path / "y")
