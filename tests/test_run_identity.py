"""A run folder says what made it (``run.json``: experiment, group choices, overrides, command
line, git commit, library versions; a resume appends itself), default folders are named by
experiment, a recipe refuses an agent it is not written for unless told, and a user's env plugs in
by module path (``env.task=<module>:<EnvClass>``; the smoke run of one: tests/test_extending.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from rlft.common.typed_config import ConfigError
from rlft.envs.factory import make_env, resolve_task
from rlft.runtime.launch import check_recipe
from rlft.runtime.run_identity import RUN_FILE

from conftest import REPO_ROOT

SMOKE = ["experiment=smoke", "agent.vae_hidden=32", "agent.hidden=[32,32]", "trainer.online_steps=60",
         "trainer.offline_steps=40", "trainer.pretrain_steps.vae=20", "trainer.eval_every=20", "trainer.log_every=20",
         "trainer.checkpoint_every=20"]
MY_ENVS = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.mujoco.hopper_v5 import HopperEnv


    class TiltedHopper(HopperEnv):
        """Hopper rewarded for height as well (a user's variant of a task)."""

        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward + 0.1 * float(obs[0]), terminated, truncated, info


    class WrongShape(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            return np.zeros(4, np.float32), {}


    gym.register("TiltedHopper-v0", entry_point=f"{__name__}:TiltedHopper")
''')


def rlft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", *args], cwd=cwd, env=os.environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def my_envs(tmp_path, monkeypatch) -> Path:
    """A user's module of envs on the import path (this process's and the subprocesses')."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_envs.py").write_text(MY_ENVS)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_run_records_what_made_it_in_a_folder_named_by_its_experiment(tmp_path, native_hopper):
    out = rlft(*SMOKE, f"dataset.source={native_hopper}", "progress=false", cwd=tmp_path).stdout
    (run_dir,) = (tmp_path / "runs" / "smoke").iterdir()
    assert f"run folder: runs/smoke/{run_dir.name}" in out
    record = json.loads((run_dir / RUN_FILE).read_text())
    assert record["experiment"] == "smoke"
    assert record["choices"]["agent"] == "spot_small" and record["choices"]["pipeline"] == "o2o"
    assert record["overrides"] == [*SMOKE, f"dataset.source={native_hopper}", "progress=false"]
    started = record["started"]
    assert started["command"][1:] == record["overrides"]
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert started["git"]["commit"] == head.stdout.strip() and isinstance(started["git"]["dirty"], bool)
    assert {"python", "rlft", "torch", "numpy", "gymnasium", "hydra-core"} <= set(started["versions"])
    assert record["resumes"] == []

    rlft(f"resume={run_dir}", cwd=tmp_path)
    resumed = json.loads((run_dir / RUN_FILE).read_text())
    assert resumed["started"] == started and len(resumed["resumes"]) == 1
    assert resumed["resumes"][0]["command"][1:] == [f"resume={run_dir}"]


def _composed(*overrides: str):
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", list(overrides))


def test_a_recipe_refuses_an_agent_it_is_not_written_for_unless_allowed():
    cfg = _composed("experiment=o2o/wsrl/hopper-medium-local")
    with pytest.raises(ConfigError, match="agent=iql: experiment 'o2o/wsrl/hopper-medium-local' uses recipe 'wsrl'"):
        check_recipe(cfg, {"experiment": "o2o/wsrl/hopper-medium-local", "agent": "iql"})
    check_recipe(cfg, {"experiment": "o2o/wsrl/hopper-medium-local", "agent": "wsrl"})
    check_recipe(_composed("experiment=o2o/calql/hopper-medium-local"), {"agent": "cql"})  # declared: Cal-QL's CQL
    check_recipe(_composed("experiment=o2o/wsrl/hopper-medium-local", "recipe.allow_other_agents=true"),
                 {"agent": "iql"})


def test_every_recipe_declares_the_agent_its_experiments_choose():
    for path in sorted((REPO_ROOT / "configs" / "experiment" / "o2o").rglob("*.yaml")):
        name = path.relative_to(REPO_ROOT / "configs" / "experiment").with_suffix("").as_posix()
        with initialize_config_module("rlft.configs", version_base="1.3"):
            cfg = compose("config", [f"experiment={name}"], return_hydra_config=True)
        if "recipe" in cfg:
            assert cfg.hydra.runtime.choices.agent in cfg.recipe.agents, name


def test_a_users_env_by_class_or_registered_id_and_the_named_errors(my_envs):
    by_class = resolve_task("my_envs:TiltedHopper")
    assert by_class.env_id == "my_envs.TiltedHopper" and by_class.max_episode_steps == 1000
    assert make_env({"task": "my_envs:TiltedHopper"}).reset(seed=0)[0].shape == (11,)
    by_id = resolve_task("my_envs:TiltedHopper-v0")  # gymnasium.make's module:id form
    assert by_id.env_id == "TiltedHopper-v0" and by_id.module == "my_envs"
    with pytest.raises(ValueError, match=r"reset's observation \(shape \(4,\).*not in the env's observation space"):
        resolve_task("my_envs:WrongShape")
    with pytest.raises(ValueError, match="no env class, factory or registered id 'TiltedHoper'.*'TiltedHopper'"):
        resolve_task("my_envs:TiltedHoper")
