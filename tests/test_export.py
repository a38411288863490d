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

from conftest import SHIPPED_HOPPER_MEDIUM
from rlft.deploy import DeployedPolicy
from rlft.envs.factory import make_task_env, resolve_task
from rlft.export.artifact import TOLERANCE, ExportError, export_run, load_runner, exportable
from rlft.runtime.experiment import Experiment


def o2o_run(folder: Path, agent: str) -> Path:
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", ["experiment=smoke", f"agent={agent}", f"dataset.source={SHIPPED_HOPPER_MEDIUM}",
                                 "agent.hidden=[32,32]", "trainer.offline_steps=100", "trainer.online_steps=100",
                                 "trainer.pretrain_steps.vae=20", "trainer.eval_every=100"])
    Experiment(cfg, folder).run()
    return folder


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
    golden = np.load(sac_export / "golden.npz")
    policy = DeployedPolicy(sac_export)
    for obs, expected in zip(golden["observation"][:20], golden["action"][:20]):
        policy.reset()
        assert np.abs(policy.act(obs) - expected).max() <= TOLERANCE


def test_the_deployed_policy_reproduces_the_pytorch_episodes(sac_export: Path) -> None:
    runner, _ = load_runner(sac_export.parent)
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


def test_a_run_of_another_pipeline_is_refused_naming_it(tmp_path: Path) -> None:
    from rlft.runtime.text_train import TextExperiment
    from test_text_train import llm_config

    TextExperiment(llm_config("loop.iterations=1"), tmp_path).run()
    with pytest.raises(ExportError, match="'llm' pipeline"):
        export_run(tmp_path)


def test_a_chunked_gaussian_ppo_policy_with_history_deploys_like_the_pytorch_evaluator(tmp_path: Path) -> None:
    from rlft.export.artifact import raw_env
    from rlft.offline.demos import DemoConfig, collect_demos
    from rlft.runtime.finetune import FinetuneExperiment
    from test_finetune import finetune_config

    demos = Path(collect_demos(DemoConfig(task="mw-reach", episodes=2, noise=0.1, seed=0), tmp_path / "demos")["path"])
    cfg = finetune_config(demos, "method=gaussian", "method.policy.horizon=2", "method.policy.act_steps=2",
                          "method.policy.obs_history=2", "loop.iterations=1")
    FinetuneExperiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["control"] == {"chunk": 2, "executed_steps": 2, "obs_history": 2}
    assert metadata["observation"]["shape"] == [78] and metadata["action"]["shape"] == [8]
    runner, _ = load_runner(tmp_path / "run")
    expected = runner.evaluate_policy("ppo")  # the PyTorch evaluator: chunking and history wrappers
    deployed, env = DeployedPolicy(out), raw_env(cfg.task.env_cfg)
    returns = []
    for i in range(len(expected.returns)):
        obs, _ = env.reset(seed=cfg.loop.eval_seed + i)
        deployed.reset()
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(deployed.act(obs))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    assert returns == pytest.approx(expected.returns, rel=1e-5)


def test_a_world_model_run_exports_its_policy_prior_and_says_the_planner_stays(tmp_path: Path) -> None:
    from test_world_model import wm_config

    cfg = wm_config(SHIPPED_HOPPER_MEDIUM, "trainer.offline_steps=30", "trainer.online_steps=0")
    Experiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["family"].endswith("policy-prior") and "MPPI" in metadata["notes"][0]
    assert max(metadata["parity"]["max_abs_error"].values()) <= TOLERANCE


def test_dppo_exports_with_its_sampling_noise_as_an_input(tmp_path: Path) -> None:
    from rlft.export.artifact import raw_env
    from rlft.offline.demos import DemoConfig, collect_demos
    from rlft.runtime.finetune import FinetuneExperiment
    from test_finetune import finetune_config

    demos = Path(collect_demos(DemoConfig(task="mw-reach", episodes=2, noise=0.1, seed=0), tmp_path / "demos")["path"])
    cfg = finetune_config(demos, "method=dppo", "loop.iterations=1")
    FinetuneExperiment(cfg, tmp_path / "run").run()
    out = export_run(tmp_path / "run")
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["noise"]["shape"] == [7, 16] and max(metadata["parity"]["max_abs_error"].values()) <= TOLERANCE
    graph = exportable(load_runner(tmp_path / "run")[0]).graph
    env, returns = raw_env(cfg.task.env_cfg), {}
    for name in ("torch", "onnx"):
        deployed, rng = DeployedPolicy(out, seed=3), np.random.default_rng(3)
        obs, _ = env.reset(seed=0)
        done, total, queue = False, 0.0, []
        while not done:
            if name == "onnx":
                action = deployed.act(obs)
            else:  # the same policy queries in PyTorch, with the runner's noise stream
                if not queue:
                    noise = torch.as_tensor(rng.standard_normal((1, 7, 16)).astype(np.float32))
                    queue = list(graph(torch.as_tensor(obs, dtype=torch.float32)[None], noise)[0].detach().numpy()
                                 .reshape(metadata["control"]["chunk"], -1))
                action = queue.pop(0)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns[name] = total
    assert returns["onnx"] == pytest.approx(returns["torch"], rel=1e-5)
