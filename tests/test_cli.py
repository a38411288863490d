"""The one ``rlft`` command end to end: every pipeline's default experiment through it with one
``eval.json`` schema, resume, sweeps, --list/--help, and what a user sees on bad input or Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from rlft.offline.loaders import save_native
from rlft.runtime.checkpoint import latest_checkpoint
from rlft.runtime.runner import EVAL_KEYS
from rlft.scripts import catalog

from conftest import REPO_ROOT

SMOKE = ["experiment=smoke", "agent.vae_hidden=32", "agent.hidden=[32,32]", "trainer.online_steps=100"]
RECORD_KEYS = {"step", "phase", "phase_step", "returns", "lengths", "return_mean", "return_std", "normalized_score",
               "normalized_score_std", "successes", "success_rate", "success_rate_std"}
# each pipeline's default experiment at a budget of seconds
TINY = {
    "demo": ["trainer.pretrain_steps.vae=20", "trainer.offline_steps=40", "trainer.online_steps=40",
             "trainer.eval_every=20", "trainer.eval_episodes=1", "trainer.eval_envs=1", "trainer.log_every=20",
             "agent.vae_hidden=32", "agent.hidden=[32,32]", "env.max_episode_steps=30"],
    "finetune/dppo/mw-push": ["method.bc.steps=20", "method.bc.log_every=10", "loop.iterations=2", "loop.num_envs=2",
                              "loop.eval_every=1", "loop.eval_episodes=1", "loop.eval_envs=1",
                              "loop.rollout_env_steps=20", "method.policy.hidden=[32,32]",
                              "method.ppo.critic_hidden=[32,32]", "method.ppo.minibatch_size=8"],
    "llm/ppo/numberline": ["model.tiny={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}",
                           "sft.episodes=8", "sft.steps=3", "loop.num_envs=2", "loop.waves=1", "loop.iterations=2",
                           "loop.eval_every=1", "loop.eval_episodes=2", "loop.eval_envs=2",
                           "generation.max_new_tokens=3"],
}


def rlft(*args: str, cwd: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlft.scripts.main", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=os.environ, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture
def dataset_file(tmp_path, hopper_dataset) -> Path:
    hopper_dataset.env_id = "Hopper-v5"
    return save_native(hopper_dataset, tmp_path / "hopper.h5")


@pytest.mark.parametrize("experiment", list(TINY))
def test_every_pipeline_runs_through_one_command_with_one_eval_schema(tmp_path, experiment):
    run_dir = tmp_path / "run"
    out = rlft(f"experiment={experiment}", *TINY[experiment], "progress=false", f"hydra.run.dir={run_dir}",
               cwd=tmp_path).stdout
    assert "before fine-tuning" in out and "after fine-tuning" in out
    assert "run folder: run\n" in out  # shown relative to the working directory
    for name in ("config.yaml", "metrics.csv", "eval.json", "learning_curve.png", "checkpoints",
                 "pretrained_checkpoint"):
        assert (run_dir / name).exists(), name
    assert not list(run_dir.glob("*.log")), "no empty log files in the run folder"
    results = json.loads((run_dir / "eval.json").read_text())
    assert tuple(results) == EVAL_KEYS
    assert results["pipeline"] == catalog.experiment_pipeline(catalog.CONFIG_DIR / "experiment" / f"{experiment}.yaml")
    assert results["done"] and results["before"] is not None and results["after"] is not None
    for record in results["history"]:
        assert set(record) == RECORD_KEYS
    assert results["after"]["step"] == results["step"] >= results["before"]["step"] >= 0


def test_run_then_resume(tmp_path, dataset_file):
    run_dir = tmp_path / "runs" / "one"
    out = rlft(*SMOKE, f"dataset.source={dataset_file}", f"hydra.run.dir={run_dir}", cwd=tmp_path).stdout
    assert "before fine-tuning (offline)" in out and "after fine-tuning (online)" in out
    first = json.loads((run_dir / "eval.json").read_text())

    again = rlft(f"resume={run_dir}", cwd=tmp_path).stdout
    assert "resumed from" in again
    assert json.loads((run_dir / "eval.json").read_text())["history"] == first["history"]


LAUNCHERS = {"basic": [], "slurm preset, local executor": ["+launcher=slurm", "hydra/launcher=submitit_local"]}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_multirun_sweeps_seeds(tmp_path, dataset_file, launcher):
    """Sweeps write one normal run folder per job, with Hydra's basic launcher and with the SLURM
    preset's jobs run by submitit's local executor (what a cluster would run, without one)."""
    if launcher != "basic":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    rlft("-m", *SMOKE, *LAUNCHERS[launcher], f"dataset.source={dataset_file}", "seed=0,1", f"hydra.sweep.dir={sweep}",
         cwd=tmp_path)
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "eval.json").exists())
    assert [p.name for p in runs] == ["0_seed0", "1_seed1"]
    seeds = [json.loads((p / "eval.json").read_text())["seed"] for p in runs]
    assert seeds == [0, 1]
    assert all((p / name).exists() for p in runs for name in ("config.yaml", "metrics.csv", "checkpoints"))


def test_missing_dataset_prints_its_collection_command_and_leaves_no_run_folder(tmp_path):
    proc = rlft("experiment=o2o/iql/halfcheetah-medium-local", f"dataset.source={tmp_path / 'nowhere'}",
                f"hydra.run.dir={tmp_path / 'runs' / 'x' / 'y'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "dataset folder not found" in proc.stderr and "nowhere" in proc.stderr
    assert "python -m rlft.scripts.collect_datasets --tasks halfcheetah" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 5
    assert not (tmp_path / "runs" / "x").exists()


def test_group_of_another_pipeline_is_named_without_a_plus_hint(tmp_path):
    proc = rlft("task=pusht", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "'task' is not a group of experiment 'demo'" in proc.stderr and "finetune pipeline" in proc.stderr
    assert "+task" not in proc.stderr
    assert rlft("experiment=finetune/dppo/mw-push", "task=pusht", "--cfg", "job", cwd=tmp_path).returncode == 0


def test_list_and_help_show_pipelines_and_the_chosen_experiments_groups(tmp_path):
    listing = rlft("--list", cwd=tmp_path).stdout
    for pipeline, name in (("o2o", "o2o/wsrl/hopper-weak"), ("finetune", "finetune/dppo/mw-push"),
                           ("llm", "llm/ppo/numberline"), ("o2o", "wm/hopper-weak")):
        assert name in listing.split(f"\n{pipeline}:")[1].split("\n\n")[0], (pipeline, name)
    text = rlft("experiment=finetune/residual/mw-push", "--help", cwd=tmp_path).stdout
    assert "pipeline finetune" in text and "  method: dppo, dppo_gym, gaussian, *residual" in text
    assert "  dataset:" not in text and "text_task" not in text


def test_every_experiment_composes_to_the_pipeline_it_is_listed_under():
    for pipeline, entries in catalog.experiments().items():
        for name, _ in entries:
            assert catalog.choices(name)[0] == pipeline, name


def test_ctrl_c_prints_one_line_with_the_resume_command(tmp_path, dataset_file):
    run_dir = tmp_path / "run"
    # -X faulthandler: if the child hangs, SIGABRT makes it print every thread's stack
    cmd = [sys.executable, "-X", "faulthandler", "-m", "rlft.scripts.main", *SMOKE, f"dataset.source={dataset_file}",
           "trainer.online_steps=100000", "trainer.checkpoint_every=50", f"hydra.run.dir={run_dir}"]
    # a shell's background job (nohup, `make test &`) starts with SIGINT ignored, and Python then keeps
    # ignoring it: give the child the default action, as a terminal's foreground job has
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while latest_checkpoint(run_dir / "checkpoints") is None and time.time() < deadline:  # a complete one
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        raise AssertionError(f"no exit 60 s after Ctrl-C; stderr: {proc.communicate()[1][-6000:]}") from None
    assert proc.returncode == 130
    assert "rlft resume=run`" in err and "Traceback" not in err


def test_every_config_folder_is_an_installed_package():
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"rlft." + p.relative_to(REPO_ROOT).as_posix().replace("/", ".")
               for p in (REPO_ROOT / "configs").rglob("*") if p.is_dir() and not p.name.startswith("__")}
    assert folders <= listed, sorted(folders - listed)


def test_an_optuna_study_of_two_trials_maximises_the_runs_final_scores(tmp_path, dataset_file):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "study"
    rlft("-m", "+sweeper=optuna", *SMOKE, "trainer.offline_steps=20", "trainer.pretrain_steps.vae=20",
         "trainer.online_steps=40", "trainer.eval_every=20", f"dataset.source={dataset_file}", "progress=false",
         "agent.lambd=interval(0.01,1.0)", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    trials = sorted(p for p in sweep.iterdir() if (p / "eval.json").exists())
    assert len(trials) == 2
    scores = [json.loads((p / "eval.json").read_text())["after"]["normalized_score"] for p in trials]
    lambdas = [json.loads((p / "run.json").read_text())["overrides"][0] for p in trials]
    assert all(text.startswith("agent.lambd=") for text in lambdas) and lambdas[0] != lambdas[1]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(scores))
    assert f"agent.lambd={best['best_params']['agent.lambd']}" == lambdas[scores.index(max(scores))]


def test_a_resume_may_raise_the_fine_tuning_budget_and_nothing_else(tmp_path, dataset_file):
    run_dir = tmp_path / "run"
    rlft(*SMOKE, f"dataset.source={dataset_file}", "trainer.online_steps=60", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    first = json.loads((run_dir / "eval.json").read_text())
    refused = rlft(f"resume={run_dir}", "agent.lambd=0.5", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "resume: agent.lambd=0.5 would change the run's config" in refused.stderr
    out = rlft(f"resume={run_dir}", "trainer.online_steps=100", *SMOKE[:1], cwd=tmp_path).stdout  # as suites resume
    assert "extending the run: trainer.online_steps 60 -> 100" in out
    extended = json.loads((run_dir / "eval.json").read_text())
    assert extended["done"] and extended["step"] == first["step"] + 40
    assert extended["history"][: len(first["history"])] == first["history"]
    assert "online_steps: 100" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "run.json").read_text())["resumes"][0]["command"][-2] == "trainer.online_steps=100"
