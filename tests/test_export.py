"""Robot-deployment export: a run's policy as an ONNX artifact whose actions equal PyTorch's, run by
``rlft.deploy`` without torch, and clear refusals of what cannot be exported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from conftest import SHIPPED_HOPPER_WEAK
from rlft.deploy import DeployedPolicy
from rlft.envs.factory import make_task_env, resolve_task
from rlft.export.artifact import TOLERANCE, ExportError, export_run, load_runner, exportable
from rlft.runtime.experiment import Experiment


def o2o_run(folder: Path, agent: str) -> Path:
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", ["experiment=smoke", f"agent={agent}", f"dataset.source={SHIPPED_HOPPER_WEAK}",
                                 "agent.hidden=[32,32]", "trainer.offline_steps=100", "trainer.online_steps=100",
                                 "trainer.pretrain_steps.vae=20", "trainer.eval_every=100"])
    Experiment(cfg, folder).run()
    return folder


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two noisy scripted-expert demonstrations of Meta-World reach."""
    from rlft.offline.demos import DemoConfig, collect_demos

    out = tmp_path_factory.mktemp("demos")
    return Path(collect_demos(DemoConfig(task="mw-reach", episodes=2, noise=0.1, seed=0), out)["path"])


@pytest.fixture(scope="module")
def sac_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = o2o_run(tmp_path_factory.mktemp("sac"), "sac")
    return export_run(run, run / "export")


def test_the_artifact_matches_pytorch_and_says_what_a_caller_needs(sac_export: Path) -> None:
    metadata = json.loads((sac_export / "metadata.json").read_text())
    assert {p.name for p in sac_export.iterdir()} >= {"policy.onnx", "metadata.json", "golden.npz", "report.md"}
    assert max(metadata["parity"]["max_abs_error"].values()) <= TOLERANCE
    assert metadata["observation"]["shape"] == [11] and metadata["action"]["shape"] == [3]
    assert metadata["action"]["low"] == [-1.0] * 3 and metadata["control"] == {"chunk": 1, "executed_steps": 1,
                                                                                  "obs_history": 1}
    assert metadata["observation"]["normalisation"] is None or len(metadata["observation"]["normalisation"]["mean"]) == 11
    assert metadata["source"]["checkpoint"].startswith("step_") and len(metadata["source"]["config_sha256"]) == 64
    assert metadata["source"]["run"] == ".."  # relative to the export folder: the two travel together
    assert metadata["env"] == {"task": "hopper", "id": "Hopper-v5", "control_period_s": 0.008, "max_episode_steps": 1000,
                               "observation": "a flat vector of 11 (the env names no entries)"}
    after = json.loads((sac_export.parent / "eval.json").read_text())["after"]
    assert metadata["evaluation"]["return_mean"] == after["return_mean"] and metadata["evaluation"]["step"] == after["step"]
    assert {"gymnasium", "mujoco", "torch", "onnxruntime"} <= set(metadata["versions"])
    assert metadata["latency_ms"]["cpu"] and "golden.npz" in (sac_export / "report.md").read_text()
    golden = np.load(sac_export / "golden.npz")
    policy = DeployedPolicy(sac_export)
    for obs, expected in zip(golden["observation"][:20], golden["action"][:20]):
        policy.reset()
        assert np.abs(policy.act(obs) - expected).max() <= TOLERANCE


def test_the_deployed_policy_reproduces_the_pytorch_episodes(sac_export: Path) -> None:
    runner, _, _ = load_runner(sac_export.parent)
    graph = exportable(runner).graph
    deployed = DeployedPolicy(sac_export)
    env = make_task_env(resolve_task("hopper"))
    returns = {}
    for name, act in (("torch", lambda o: graph(torch.as_tensor(o, dtype=torch.float32)[None])[0].detach().numpy()),
                      ("onnx", deployed.act)):
        total = []
        for seed in (0, 1):
            obs, _ = env.reset(seed=seed)
            deployed.reset()
            done, episode = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                episode, done = episode + float(reward), terminated or truncated
            total.append(episode)
        returns[name] = total
    # the same episodes: ONNX Runtime's kernels round differently from torch's (actions agree to ~1e-7),
    # so returns agree to 1e-6 relative, not to the last bit
    assert returns["onnx"] == pytest.approx(returns["torch"], rel=1e-6)


def test_importing_the_runner_does_not_import_torch() -> None:
    code = "import sys, rlft.deploy; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_what_cannot_be_exported_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no config.yaml"):
        export_run(tmp_path)
    (tmp_path / "config.yaml").write_text("pipeline: {runner: rlft.runtime.experiment.Experiment}\n")
    with pytest.raises(ExportError, match="no checkpoint"):
        export_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        DeployedPolicy(tmp_path)


def test_a_language_policy_on_a_text_task_is_refused_naming_what_it_exports_as(tmp_path: Path) -> None:
    from rlft.runtime.text_train import TextExperiment
    from test_text_train import llm_config

    TextExperiment(llm_config("loop.iterations=1"), tmp_path).run()
    with pytest.raises(ExportError, match="is a text task: its policy exports as the run's save_pretrained model/"):
        export_run(tmp_path)


@pytest.mark.parametrize("experiment", ["vla/ppo/babyai-gotoobj", "vla/ppo/pusht"])
def test_a_vla_exports_one_greedy_action_decode_that_acts_like_the_pytorch_policy(tmp_path: Path,
                                                                                  experiment: str) -> None:
    from rlft.deploy import DeployedVLA
    from rlft.envs.factory import make_env
    from rlft.runtime.text_train import TextExperiment, evaluate_saved
    from test_vla import vla_config

    cfg = vla_config(experiment, "loop.iterations=0", "loop.eval_episodes=2", "loop.eval_envs=2")
    TextExperiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    discrete = experiment.endswith("gotoobj")
    assert metadata["family"] == "llm/vla" and metadata["parity"]["tokens_equal"]
    assert metadata["action"]["reply_length"] == (1 if discrete else 2) and (out / "model" / "tokenizer.json").is_file()
    code = "import sys, rlft.deploy; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    # greedy episodes: the deployed graph, prompted by the torch-free runner, against rlft's greedy evaluator
    env_cfg = {"task": cfg.text_task.env_cfg.task}
    expected = evaluate_saved(tmp_path / "run" / "model", env_cfg, 2, seed=7, num_envs=1)
    deployed, env, returns = DeployedVLA(out), make_env(env_cfg), []
    for i in range(2):
        obs, _ = env.reset(seed=7 + i)
        done, total = False, 0.0
        while not done:
            indices, actions = deployed.query(obs)
            assert actions.shape[0] == metadata["action"]["chunk"]
            obs, reward, terminated, truncated, _ = env.step(deployed.reply(indices))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    assert returns == expected.returns
    with pytest.raises(ValueError, match="run it with rlft.deploy.DeployedPolicy"):
        DeployedVLA(_write_control_metadata(tmp_path / "control"))


def _write_control_metadata(folder: Path) -> Path:
    folder.mkdir()
    (folder / "metadata.json").write_text(json.dumps({"family": "o2o/sac", "file": "policy.onnx"}))
    return folder


def test_a_chunked_gaussian_ppo_policy_with_history_deploys_like_the_pytorch_evaluator(
        tmp_path: Path, reach_demos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlft.runtime.finetune import FinetuneExperiment
    from test_finetune import finetune_config

    cfg = finetune_config(reach_demos, "method=gaussian", "method.policy.horizon=2", "method.policy.act_steps=2",
                          "method.policy.obs_history=2", "loop.iterations=1")
    FinetuneExperiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["control"] == {"chunk": 2, "executed_steps": 2, "obs_history": 2}
    assert metadata["observation"]["shape"] == [78] and metadata["action"]["shape"] == [8]
    runner, _, _ = load_runner(tmp_path / "run")
    _assert_deploys_like_the_evaluator(runner, DeployedPolicy(out), monkeypatch)


def test_a_world_model_run_exports_its_policy_prior_and_says_the_planner_stays(tmp_path: Path) -> None:
    from test_world_model import wm_config

    cfg = wm_config(SHIPPED_HOPPER_WEAK, "trainer.offline_steps=30", "trainer.online_steps=0")
    Experiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["family"].endswith("policy-prior") and "MPPI" in metadata["notes"][0]
    assert max(metadata["parity"]["max_abs_error"].values()) <= TOLERANCE


def _evaluator_episode(runner, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list]:
    """One episode of the PyTorch evaluator (its env wrappers: chunks, observation history, the
    residual family's base; PPO's normalisation; the deterministic actor): the raw env's
    observation before each step and the native action the raw env received."""
    import gymnasium as gym

    from rlft.envs import factory

    log: dict[str, list] = {"obs": [], "actions": []}

    class Recorder(gym.Wrapper):
        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            log["obs"].append(obs)
            return obs, info

        def step(self, action):
            log["actions"].append(np.asarray(action, dtype=np.float32))
            out = self.env.step(action)
            log["obs"].append(out[0])
            return out

    original = factory.make_task_env
    monkeypatch.setattr(factory, "make_task_env", lambda *a, **k: Recorder(original(*a, **k)))
    env = runner._envs(runner.device)(1)
    monkeypatch.setattr(factory, "make_task_env", original)
    obs, _ = env.reset(seed=[seed])
    done = False
    while not done:
        action = runner.actor.act(torch.as_tensor(runner.ppo.normalize(obs), dtype=torch.float32), deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action.numpy())
        done = bool(terminated[0] or truncated[0])
    return log["obs"][: len(log["actions"])], log["actions"]


def _assert_deploys_like_the_evaluator(runner, deployed: DeployedPolicy, monkeypatch: pytest.MonkeyPatch,
                                       seeds=(0, 1)) -> None:
    """Fed the evaluator's observations, rlft.deploy returns the actions the evaluator executed
    (open loop: closed loop, ONNX Runtime's 1e-7 rounding differences grow in a contact-rich sim)."""
    for seed in seeds:
        observations, expected = _evaluator_episode(runner, seed, monkeypatch)
        deployed.reset()
        got = np.stack([deployed.act(obs) for obs in observations])
        action = deployed.metadata["action"]
        half_range = (np.asarray(action["high"]) - np.asarray(action["low"])) / 2
        assert (np.abs(got - np.stack(expected)) / half_range).max() <= 1e-5, seed


def _episode_return(env, policy: DeployedPolicy, seed: int) -> float:
    obs, _ = env.reset(seed=seed)
    policy.reset()
    done, total = False, 0.0
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
        total, done = total + float(reward), terminated or truncated
    return total


def test_dppo_exports_with_its_sampling_noise_as_an_input(tmp_path: Path, reach_demos: Path) -> None:
    from rlft.export.artifact import raw_env
    from rlft.runtime.finetune import FinetuneExperiment
    from test_finetune import finetune_config

    cfg = finetune_config(reach_demos, "method=dppo", "loop.iterations=1")
    FinetuneExperiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["inputs"] == [{"name": "noise", "kind": "noise", "shape": [7, 16], "dtype": "float32",
                                   "distribution": "standard normal"}]
    assert max(metadata["parity"]["max_abs_error"].values()) <= TOLERANCE
    # the same runner and noise stream over PyTorch and over ONNX Runtime: the same episode
    item, env = exportable(load_runner(tmp_path / "run")[0]), raw_env(cfg.task.env_cfg)
    torch_return = _episode_return(env, DeployedPolicy.over(metadata, item.torch_session(), seed=3), seed=0)
    assert _episode_return(env, DeployedPolicy(out, seed=3), seed=0) == pytest.approx(torch_return, rel=1e-5)


def _noise_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """Diffusion sampling in PyTorch with zeros for its noise draws (the graph then gets zeros too)."""
    from rlft.policies import diffusion, dppo

    zeros = lambda noise, step, shape, device: torch.zeros(shape)  # noqa: E731
    monkeypatch.setattr(diffusion, "draw", zeros)
    monkeypatch.setattr(dppo, "draw", zeros)


class _ZeroNoise:
    """A session that feeds zeros as the sampling noise (the evaluator's draws, patched to zeros)."""

    def __init__(self, session):
        self.session = session

    def run(self, names, feed):
        return self.session.run(names, {k: np.zeros_like(v) if k == "noise" else v for k, v in feed.items()})


def test_the_residual_policy_deploys_base_and_residual_like_the_pytorch_evaluator(
        tmp_path: Path, reach_demos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlft.runtime.finetune import FinetuneExperiment
    from test_finetune import finetune_config

    cfg = finetune_config(reach_demos, "method=residual", "loop.iterations=1", "++method.ppo.obs_norm_running=true",
                          "loop.normalize_obs=false")
    FinetuneExperiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["control"] == {"chunk": 1, "executed_steps": 1, "obs_history": 1}
    assert [(i["name"], i["kind"], i["shape"]) for i in metadata["inputs"]] == [
        ("noise", "noise", [7, 16]), ("base_chunk", "state", [16]), ("chunk_step", "state", [])]
    assert max(metadata["parity"]["max_abs_error"].values()) <= TOLERANCE
    # a noise-free base in both: the evaluator's ResidualVectorEnv (chunk queue, residual on [obs, a_base],
    # PPO's running statistics) and the graph with its chunk and step fed back by rlft.deploy
    _noise_free(monkeypatch)
    runner, _, _ = load_runner(tmp_path / "run")
    assert runner.ppo.obs_stats is not None and runner.actor.net[-1].weight.abs().max() > 0  # a residual
    deployed = DeployedPolicy(out)
    deployed = DeployedPolicy.over(deployed.metadata, _ZeroNoise(deployed.session))
    _assert_deploys_like_the_evaluator(runner, deployed, monkeypatch)


def test_a_pixel_policy_deploys_from_the_dict_observation_with_image_scaling_inside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlft.offline.demos import DemoConfig, collect_demos
    from rlft.runtime.finetune import FinetuneExperiment
    from test_finetune import pusht_config

    info = collect_demos(DemoConfig(task="pusht", episodes=1, noise=0.0, seed=0), tmp_path / "demos")
    FinetuneExperiment(pusht_config(info["path"], "method.policy.act_steps=2"), tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["observation"]["layout"] == [{"key": "agent_pos", "shape": [2], "dtype": "float64"},
                                                 {"key": "pixels", "shape": [64, 64, 3], "dtype": "uint8"}]
    stats = metadata["observation"]["normalisation"]
    assert stats["std"][2:] == [255.0] * (64 * 64 * 3) and stats["mean"][2:] == [0.0] * (64 * 64 * 3)
    assert max(metadata["parity"]["max_abs_error"].values()) <= TOLERANCE
    deployed = DeployedPolicy(out)
    with pytest.raises(KeyError, match="no 'pixels'"):
        deployed.act({"agent_pos": np.zeros(2)})
    _noise_free(monkeypatch)
    runner, _, _ = load_runner(tmp_path / "run")
    deployed = DeployedPolicy.over(deployed.metadata, _ZeroNoise(deployed.session))
    _assert_deploys_like_the_evaluator(runner, deployed, monkeypatch, seeds=(0,))


def test_the_export_command_takes_a_checkpoint_and_prints_no_exporter_noise(sac_export: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "pretrained"
    proc = subprocess.run([sys.executable, "-m", "rlft.export.cli", str(sac_export.parent), "--checkpoint", "pretrained",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchvision" not in proc.stderr and "[torch.onnx]" not in proc.stdout + proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    metadata = json.loads((out / "metadata.json").read_text())
    before = json.loads((sac_export.parent / "eval.json").read_text())["before"]
    assert metadata["source"]["checkpoint"] == "pretrained_checkpoint"
    assert metadata["evaluation"]["return_mean"] == before["return_mean"] and metadata["evaluation"]["phase"] == "offline"
    bad = subprocess.run([sys.executable, "-m", "rlft.export.cli", str(sac_export.parent), "--checkpoint", "step_7"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no checkpoint 'step_7'" in bad.stderr and "kept: step_" in bad.stderr


def test_rlft_eval_runs_the_export_as_a_robot_would_and_scores_as_the_run(sac_export: Path) -> None:
    from rlft.api import evaluate

    record = evaluate(sac_export)  # ONNX Runtime in the raw env, the run's episodes and seeds
    after = json.loads((sac_export.parent / "eval.json").read_text())["after"]
    assert record["episodes"] == len(after["returns"]) and record["seed"] == 1_000_000
    assert record["returns"] == pytest.approx(after["returns"], rel=1e-3)
    assert (sac_export / "evals" / f"export_seed{record['seed']}_{record['episodes']}ep.json").is_file()
