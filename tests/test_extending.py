"""docs/extending.md stays true: its example files are written out of the page and run (a user's
env and learner through the smoke experiment, a policy family through behaviour cloning and PPO),
and their runs load and evaluate through the Python API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.api import evaluate, load_policy
from rlft.offline.loaders import save_native

from conftest import REPO_ROOT

SMOKE = ["experiment=smoke", "agent.hidden=[32,32]", "trainer.offline_steps=40", "trainer.online_steps=60",
         "trainer.eval_every=20", "trainer.log_every=20", "trainer.checkpoint_every=20", "progress=false"]


@pytest.fixture
def user_code(tmp_path, monkeypatch) -> Path:
    """The page's ```python file=...``` blocks as modules on the import path."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    page = (REPO_ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python file=(\S+)\n(.*?)```", page, re.S)
    assert {name for name, _ in blocks} == {"my_envs.py", "my_agents.py", "my_families.py"}
    for name, code in blocks:
        (folder / name).write_text(code)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    return folder


def rlft(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", *args], cwd=cwd, env=os.environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_pages_env_runs_the_smoke_experiment(tmp_path, user_code, hopper_dataset):
    hopper_dataset.env_id = "my_envs.TallHopper"  # what a dataset collected in the env records
    data = save_native(hopper_dataset, tmp_path / "tall_hopper.h5")
    out = rlft(*SMOKE, "agent.vae_hidden=32", "trainer.pretrain_steps.vae=20", "env.task=my_envs:TallHopper",
               f"dataset.source={data}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "after fine-tuning (online)" in out
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert results["done"] and results["details"]["env_id"] == "my_envs.TallHopper"
    assert results["metric"] == "return_mean"  # no reference returns: the return is the score


def test_the_pages_learner_runs_resumes_and_loads(tmp_path, user_code, native_hopper):
    run_dir = tmp_path / "run"
    out = rlft(*SMOKE, "agent=custom", "agent.name=my_agents:TD3BC", "+agent.alpha=2.5",
               f"dataset.source={native_hopper}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "after fine-tuning (online)" in out
    metrics = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "bc_loss" in metrics  # the page's actor loss ran
    config = (run_dir / "config.yaml").read_text()
    assert "name: my_agents:TD3BC" in config and "alpha: 2.5" in config
    results = json.loads((run_dir / "eval.json").read_text())
    assert evaluate(run_dir)["returns"] == results["after"]["returns"]
    assert load_policy(run_dir).act(np_zeros(11)).shape == (3,)


def np_zeros(n: int):
    import numpy as np

    return np.zeros(n, dtype=np.float32)


def test_custom_agent_without_a_name_or_with_a_wrong_class_is_one_line(tmp_path, user_code):
    for args, said in ((["agent=custom"], "agent=custom needs agent.name=<module>:<Class>"),
                       (["agent=custom", "agent.name=my_envs:TallHopper"], "is not a rlft Learner subclass")):
        proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", *args], cwd=tmp_path, env=os.environ,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "runs").exists()


def test_the_pages_policy_family_clones_and_fine_tunes(tmp_path, user_code):
    from rlft.api import train

    run = train("finetune/gaussian/mw-push", ["method.policy.family=my_families:BetaFamily", "method.bc.steps=60",
                                             "method.bc.log_every=20", "loop.iterations=2", "loop.num_envs=2",
                                             "loop.eval_every=1", "loop.eval_episodes=2", "loop.eval_envs=2",
                                             "loop.rollout_env_steps=20", "method.policy.hidden=[32,32]",
                                             "method.ppo.critic_hidden=[32,32]", "method.ppo.minibatch_size=8",
                                             "progress=false"], tmp_path / "run")
    assert run.results["done"] and run.results["before"]["phase"] == "bc" and run.results["after"]["phase"] == "ppo"
    rows = (run.run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    bc = [float(r.split(",")[header.index("bc/loss")]) for r in rows[1:] if r.split(",")[header.index("bc/loss")]]
    assert len(bc) == 3 and bc[-1] < bc[0]  # the Beta policy's likelihood of the demonstrations rises
    assert evaluate(run.run_dir)["returns"] == run.results["after"]["returns"]


def test_a_family_that_is_not_one_is_named(user_code):
    from rlft.agents.families import FamilyConfig

    with pytest.raises(ValueError, match="'BetaPolicy' in my_families lacks build_base, build_actor"):
        FamilyConfig(family="my_families:BetaPolicy", horizon=4, act_steps=4)

