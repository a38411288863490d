"""What a run does when things go wrong: two runs in one folder, a kill between the end of
pretraining and keeping its checkpoint, divergence, a resume of a folder that is not a run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import numpy as np
import torch

from rlft.runtime.checkpoint import (CorruptCheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                     save_checkpoint)
from rlft.runtime.experiment import Experiment
from rlft.runtime.logger import MetricLogger
from rlft.runtime.run_folder import CLAIM_FILE, RunFolderBusy, claim_run_folder
from rlft.runtime.runner import PRETRAINED_CHECKPOINT, Runner, RunError
from rlft.common.typed_config import ConfigError

from test_experiment import smoke_config


def test_a_second_run_in_the_same_folder_is_refused_and_the_first_keeps_its_files(tmp_path, native_hopper):
    cfg = smoke_config(native_hopper, "trainer.online_steps=0", "trainer.offline_steps=40")
    run_dir = tmp_path / "run"
    Experiment(cfg, run_dir).run()
    before = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "eval.json", "metrics.csv")}
    with pytest.raises(FileExistsError, match="already holds another run .*resume it"):
        Experiment(cfg, run_dir).run()
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_the_claim_is_exclusive_even_before_any_file_is_written_and_released_with_its_holder(tmp_path):
    held = claim_run_folder(tmp_path / "run")
    assert (tmp_path / "run" / CLAIM_FILE).read_text().startswith("pid ")
    with pytest.raises(RunFolderBusy, match=f"{tmp_path / 'run'} is in use by another rlft run \\(pid "):
        claim_run_folder(tmp_path / "run")
    held.release()  # what the kernel does when the holder dies, kill -9 included: the claim file left is no obstacle
    claim_run_folder(tmp_path / "run").release()


def test_a_fresh_logger_never_deletes_metrics(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss\n1,0.5\n")
    with pytest.raises(FileExistsError, match="never overwrites"):
        MetricLogger(tmp_path, tensorboard=False)
    assert (tmp_path / "metrics.csv").read_text() == "step,loss\n1,0.5\n"


def test_run_folder_names_do_not_collide_within_a_second():
    config = (Path(__file__).resolve().parent.parent / "configs" / "config.yaml").read_text()
    assert "%H-%M-%S_%f" in config  # microseconds in the default run folder and sweep folder names


def test_a_kill_before_the_pretrained_checkpoint_is_kept_is_repaired_on_resume(tmp_path, native_hopper, monkeypatch):
    cfg = smoke_config(native_hopper, "trainer.online_steps=60")
    run_dir = tmp_path / "run"

    def killed(self, path):
        (self.run_dir / f".tmp-{PRETRAINED_CHECKPOINT}").mkdir()  # what a kill mid-copy leaves
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Runner, "_keep_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            Experiment(cfg, run_dir).run()
    assert not (run_dir / PRETRAINED_CHECKPOINT).exists()
    resumed = Experiment(cfg, run_dir)
    assert resumed.resume()
    assert (run_dir / PRETRAINED_CHECKPOINT).is_dir()
    resumed.run()
    online = Experiment(smoke_config(native_hopper, "trainer.online_steps=60", f"init_from={run_dir}"), tmp_path / "b")
    assert online.run()["before"]["phase"] == "offline"


def test_divergence_stops_the_run_naming_phase_step_and_metric(tmp_path, native_hopper, monkeypatch):
    from rlft.agents.spot import SPOT

    cfg = smoke_config(native_hopper, "trainer.checkpoint_every=50")
    run_dir = tmp_path / "run"
    update = SPOT.update

    def diverging(agent, batch):
        info = update(agent, batch)
        if agent.num_updates > 70:  # offline step 70 and on (the VAE phase does not count)
            info["critic_loss"] = float("nan")
        return info

    monkeypatch.setattr(SPOT, "update", diverging)
    experiment = Experiment(cfg, run_dir)
    with pytest.raises(RunError, match=r"diverged in phase offline at step 70 .*critic_loss = nan"):
        experiment.run()
    newest = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert newest["counters"]["phase_step"] == 50  # the last good state stays the newest
    assert all(not torch.isnan(t).any() for t in newest["state"]["agent"]["actor"].values())


def test_a_state_holding_nan_never_reaches_a_checkpoint(tmp_path, native_hopper):
    experiment = Experiment(smoke_config(native_hopper), tmp_path / "run")
    with torch.no_grad():
        next(experiment.agent.actor.parameters()).fill_(float("nan"))
    with pytest.raises(RunError, match="NaN in agent.actor"):
        experiment.checkpoint()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


def test_eval_json_is_strict_json(tmp_path, native_hopper):
    run_dir = tmp_path / "run"
    Experiment(smoke_config(native_hopper, "trainer.online_steps=0", "trainer.offline_steps=40"), run_dir).run()

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in eval.json")

    data = json.loads((run_dir / "eval.json").read_text(), parse_constant=refuse)
    assert data["before"]["success_rate"] is None  # hopper reports no success: null, not NaN
    assert math.isfinite(data["before"]["normalized_score"])


def test_stale_temporary_checkpoint_folders_are_removed_at_the_next_save(tmp_path):
    (tmp_path / ".tmp-killed").mkdir()
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)})
    assert not (tmp_path / ".tmp-killed").exists()


def test_resume_of_a_folder_that_is_not_a_run_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", f"resume={missing}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is it an rlft run folder" in proc.stderr.replace("(is ", "is it an rlft run folder ")
    assert "Traceback" not in proc.stderr
    assert not missing.exists()


def test_a_checkpoint_of_another_pipeline_or_an_older_rlft_is_refused_by_name(tmp_path, native_hopper):
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir / "checkpoints", 1, {"counters": {}})
    with pytest.raises(ValueError, match="older rlft that recorded no pipeline"):
        Experiment(smoke_config(native_hopper), run_dir).resume()
    save_checkpoint(run_dir / "checkpoints", 2, {"pipeline": "llm"})
    with pytest.raises(ValueError, match="holds a 'llm' run, not a 'o2o' one"):
        Experiment(smoke_config(native_hopper), run_dir).resume()


def _damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "zero-byte":
        file.write_bytes(b"")
    elif how == "garbage":
        file.write_bytes(b"not a checkpoint" * 64)
    else:  # one flipped bit in the middle: still a valid zip, wrong numbers
        middle = len(data) // 2
        file.write_bytes(data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:])


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "garbage", "bit-flipped"])
def test_a_damaged_checkpoint_is_refused_by_name(tmp_path, how):
    path = save_checkpoint(tmp_path, 1, {"w": torch.arange(10_000, dtype=torch.float32)})
    _damage(path / "state.pt", how)
    with pytest.raises(CorruptCheckpointError, match=f"{path / 'state.pt'}"):
        load_checkpoint(path)


def test_a_checkpoint_without_its_manifest_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(3)})
    (path / "manifest.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="no manifest.json"):
        load_checkpoint(path)


def test_resume_falls_back_to_the_newest_good_checkpoint_and_names_the_bad_one(tmp_path, native_hopper, capsys):
    cfg = smoke_config(native_hopper, "trainer.checkpoint_every=50", "trainer.keep_checkpoints=3")
    run_dir = tmp_path / "run"
    Experiment(cfg, run_dir).run()
    good, newest = list_checkpoints(run_dir / "checkpoints")[-2:]
    _damage(newest / "state.pt", "bit-flipped")
    resumed = Experiment(cfg, run_dir)
    assert resumed.resume()
    err = capsys.readouterr().err
    assert f"{newest / 'state.pt'}" in err and "falling back" in err
    assert resumed.work == load_checkpoint(good)["counters"]["work"]
    assert (run_dir / "checkpoints" / f"corrupt-{newest.name}").is_dir()  # kept for inspection, out of the way
    assert latest_checkpoint(run_dir / "checkpoints") == good


def test_resume_with_no_good_checkpoint_says_so(tmp_path, native_hopper):
    cfg = smoke_config(native_hopper, "trainer.online_steps=0", "trainer.offline_steps=40")
    run_dir = tmp_path / "run"
    Experiment(cfg, run_dir).run()
    for path in list_checkpoints(run_dir / "checkpoints"):
        _damage(path / "state.pt", "zero-byte")
    with pytest.raises(CorruptCheckpointError, match="every checkpoint failed its check"):
        Experiment(cfg, run_dir).resume()


@pytest.mark.parametrize("override, message", [
    ("trainer.online_steps=abc", "trainer.online_steps='abc': expected an integer"),
    ("trainer.offline_steps=-5", "trainer.offline_steps=-5: must be >= 0"),
    ("trainer.checkpoint_every=0", "trainer.checkpoint_every=0: must be >= 1"),
    ("trainer.eval_every=0", "trainer.eval_every=0: must be >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0: must be >= 1"),
    ("trainer.normalize_obs=maybe", "trainer.normalize_obs='maybe': expected true or false"),
    ("agent.actor_lr=-0.001", "agent.actor_lr=-0.001: must be > 0"),
    ("agent.discount=1.5", "agent.discount=1.5: must be in \\[0, 1\\]"),
    ("seed=one", "seed='one': expected an integer"),
    ("device=gpu", "device='gpu': not a torch device"),
])
def test_a_bad_config_value_is_named_with_what_is_allowed(tmp_path, native_hopper, override, message):
    with pytest.raises(ConfigError, match=message):
        Experiment(smoke_config(native_hopper, override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_says_so(tmp_path, native_hopper):
    with pytest.raises(ConfigError, match="device='cuda': no CUDA GPU is usable here .*use device=cpu"):
        Experiment(smoke_config(native_hopper, "device=cuda"), tmp_path / "run")


def test_an_integral_float_counts_as_an_integer(tmp_path, native_hopper):
    experiment = Experiment(smoke_config(native_hopper, "trainer.online_steps=2e2"), tmp_path / "run")
    assert experiment.trainer.online_steps == 200 and isinstance(experiment.trainer.online_steps, int)


def test_budgets_that_make_no_run_are_refused_in_every_pipeline(tmp_path, native_hopper):
    from test_finetune import finetune_config
    from test_text_train import llm_config

    from rlft.runtime.finetune import FinetuneExperiment
    from rlft.runtime.text_train import TextExperiment

    with pytest.raises(ConfigError, match="trainer.offline_steps=0 and trainer.online_steps=0: this run would "
                                          "train nothing"):
        Experiment(smoke_config(native_hopper, "trainer.offline_steps=0", "trainer.online_steps=0"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"trainer.online_steps=0: .*\(init_from skips pretraining\)"):
        Experiment(smoke_config(native_hopper, "trainer.online_steps=0", f"init_from={tmp_path}"), tmp_path / "b")
    unused = tmp_path / "no-demos"  # the loop is checked before the demonstrations are read
    with pytest.raises(ConfigError, match="method.bc.steps=0 and loop.iterations=0"):
        FinetuneExperiment(finetune_config(unused, "method.bc.steps=0", "loop.iterations=0"), tmp_path / "c")
    with pytest.raises(ConfigError, match="loop.eval_every=0: must be >= 1"):
        FinetuneExperiment(finetune_config(unused, "loop.eval_every=0"), tmp_path / "d")
    with pytest.raises(ConfigError, match="sft.steps=0 and loop.iterations=0"):
        TextExperiment(llm_config("sft.episodes=0", "loop.iterations=0"), tmp_path / "e")
    with pytest.raises(ConfigError, match="text_method.algorithm.lr='fast': expected a number"):
        TextExperiment(llm_config("text_method.algorithm.lr=fast"), tmp_path / "f")


def test_a_bad_value_on_the_command_line_is_one_line_and_leaves_no_run_folder(tmp_path, native_hopper):
    from test_cli import SMOKE

    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", *SMOKE, f"dataset.source={native_hopper}",
                           "trainer.online_steps=abc", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == "rlft: error: trainer.online_steps='abc': expected an integer"
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_every_shipped_experiment_passes_the_type_and_range_checks():
    from hydra import compose, initialize_config_module

    from rlft.runtime.launch import runner_class
    from rlft.scripts import catalog

    with initialize_config_module("rlft.configs", version_base="1.3"):
        for entries in catalog.experiments().values():
            for name, _ in entries:
                cfg = compose("config", [f"experiment={name}"])
                assert runner_class(cfg).settings(cfg), name


# ------------------------------------------------------------------------------ datasets
def _minari(root: Path, episodes, env_spec, name: str = "test/hopper/random-v0") -> Path:
    import minari
    from minari.data_collector import EpisodeBuffer

    minari.create_dataset_from_buffers(
        name, [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)], env=env_spec, eval_env=env_spec,
        data_format="hdf5", author="t", author_email="t@t", code_permalink="t", algorithm_name="t", description="t")
    return root / name


def test_an_empty_d4rl_file_is_a_dataset_error(tmp_path):
    import h5py

    from rlft.offline.dataset import DatasetError
    from rlft.offline.loaders import load_dataset

    path = tmp_path / "empty.hdf5"
    with h5py.File(path, "w") as f:
        for key, shape in (("observations", (0, 11)), ("actions", (0, 3)), ("rewards", (0,)), ("terminals", (0,))):
            f.create_dataset(key, shape=shape, dtype="float32")
    with pytest.raises(DatasetError, match=f"{path}: 'observations' has 0 rows"):
        load_dataset(path)


def test_a_minari_episode_missing_from_its_data_file_is_named(tmp_path, hopper_episodes, monkeypatch):
    import h5py

    from rlft.offline.dataset import DatasetError
    from rlft.offline.loaders import load_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    folder = _minari(tmp_path, hopper_episodes, "Hopper-v5")
    data = folder / "data" / "main_data.hdf5"
    with h5py.File(data, "a") as f:
        last = sorted(f.keys(), key=lambda k: int(k.split("_")[1]))[-1]
        del f[last]
    with pytest.raises(DatasetError, match=f"lists {len(hopper_episodes)} episodes but {last} cannot be read from "
                                           f"{data}"):
        load_dataset(folder)


def test_a_minari_dataset_of_the_env_with_other_kwargs_is_refused(tmp_path, hopper_episodes, monkeypatch):
    import dataclasses

    import gymnasium as gym

    from rlft.envs.registry import get_task
    from rlft.offline.dataset import DatasetError
    from rlft.offline.loaders import load_task_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    spec = dataclasses.replace(gym.spec("Hopper-v5"), kwargs={"ctrl_cost_weight": 5})
    folder = _minari(tmp_path, hopper_episodes, spec)
    with pytest.raises(DatasetError, match=f"{folder}: collected with ctrl_cost_weight=5 but the run's Hopper-v5 "
                                           "uses ctrl_cost_weight=0.001"):
        load_task_dataset(folder, get_task("hopper"))
    default = dataclasses.replace(gym.spec("Hopper-v5"), kwargs={"ctrl_cost_weight": 1e-3})  # the default, spelt out
    assert len(load_task_dataset(_minari(tmp_path, hopper_episodes, default, "test/hopper/b-v0"), get_task("hopper")))


def test_a_dataset_that_records_no_environment_warns_and_still_must_fit_the_spaces(tmp_path, hopper_dataset):
    from rlft.offline.dataset import DatasetError, DatasetWarning
    from rlft.offline.loaders import save_native

    hopper_dataset.env_id = None
    path = save_native(hopper_dataset, tmp_path / "anonymous.h5")
    with pytest.warns(DatasetWarning, match=f"{path} records no environment .*collected in Hopper-v5"):
        Experiment(smoke_config(path), tmp_path / "a")
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match="observations have dim 11 but "
                                                                         "HalfCheetah-v5 observations have shape"):
        Experiment(smoke_config(path, "env=halfcheetah", "env.task=halfcheetah"), tmp_path / "b")


def _pendulum_dataset(actions: np.ndarray):
    from rlft.offline.dataset import TransitionDataset

    n = len(actions)
    obs = np.random.default_rng(0).standard_normal((n + 1, 3)).astype(np.float32)
    return TransitionDataset(obs[:-1], actions.reshape(n, 1).astype(np.float32), np.zeros(n, np.float32),
                             np.zeros(n, bool), np.arange(n) % 50 == 49, obs[1:], env_id="Pendulum-v1")


def test_actions_in_the_env_s_native_bounds_are_rescaled_and_unknown_units_refused(tmp_path):
    from rlft.envs.registry import get_task
    from rlft.offline.dataset import DatasetError
    from rlft.offline.loaders import load_task_dataset, save_native

    native = np.linspace(-2.0, 2.0, 100)  # Pendulum-v1 torques live in [-2, 2]
    recorded = _pendulum_dataset(native)
    recorded.metadata["action_bounds"] = ([-2.0], [2.0])
    loaded = load_task_dataset(save_native(recorded, tmp_path / "native.h5"), get_task("pendulum"))
    np.testing.assert_allclose(loaded.actions[:, 0], native / 2.0, atol=1e-6)
    assert loaded.metadata["actions_rescaled_from"] == [[-2.0], [2.0]]
    unknown = save_native(_pendulum_dataset(native), tmp_path / "unknown.h5")
    with pytest.raises(DatasetError, match=f"{unknown}: Pendulum-v1 acts in .*records no action bounds"):
        load_task_dataset(unknown, get_task("pendulum"))
    recorded.metadata["action_bounds"] = ([-3.0], [3.0])
    with pytest.raises(DatasetError, match=r"recorded in the box \[\[-3.\], \[3.\]\] but Pendulum-v1's"):
        load_task_dataset(save_native(recorded, tmp_path / "other.h5"), get_task("pendulum"))


def test_actions_outside_the_unit_box_are_refused_naming_the_row(tmp_path, hopper_dataset):
    from rlft.envs.registry import get_task
    from rlft.offline.dataset import DatasetError
    from rlft.offline.loaders import load_task_dataset, save_native

    hopper_dataset.env_id = "Hopper-v5"
    hopper_dataset.actions[7] = [0.0, 1.5, 0.0]
    path = save_native(hopper_dataset, tmp_path / "loud.h5")
    with pytest.raises(DatasetError, match=f"{path}: 'actions' row 7 is \\[0.0, 1.5, 0.0\\], outside the \\[-1, 1\\]"):
        load_task_dataset(path, get_task("hopper"))


# ------------------------------------------------------------------------------ language runs
def test_the_invalid_action_policy_is_set_from_the_config():
    from test_text_train import llm_config

    from rlft.envs.factory import make_env

    def first_bad_turn(policy: str):
        env = make_env(llm_config(f"+text_task.env_cfg.env_kwargs={{invalid_action: {policy}}}").text_task.env_cfg)
        env.reset(seed=0)
        default = env.unwrapped.default_action()
        return env.unwrapped.invalid_action, default, env.step("no idea")

    policy, default, (_, reward, _, _, info) = first_bad_turn("{mode: default, penalty: 0.5}")
    assert policy.mode == "default" and policy.penalty == 0.5
    assert info["invalid_action"] and info["parsed_action"] == default  # the default action was executed
    _, _, (_, unpenalised, _, _, _) = first_bad_turn("{mode: default}")
    assert reward == unpenalised - 0.5  # and the penalty taken off that turn's reward


def test_a_bad_invalid_action_policy_names_the_field():
    from test_text_train import llm_config

    from rlft.envs.factory import make_env

    cfg = llm_config("+text_task.env_cfg.env_kwargs={invalid_action: {mode: skip}}")
    with pytest.raises(ConfigError, match="invalid_action.mode='skip': expected one of 'reprompt', 'penalty', "
                                          "'default'"):
        make_env(cfg.text_task.env_cfg)


def test_an_empty_model_folder_says_what_is_missing(tmp_path):
    from rlft.policies.llm import LLMPolicy

    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a from_pretrained model folder: it has no "
                                                "config.json \\(it holds nothing\\)"):
        LLMPolicy.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        LLMPolicy.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------ no unpickling
class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "_pwned",))


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    import hashlib
    import pickle

    marker = Path(__file__).parent / "_pwned"
    folder = tmp_path / "step_000000001"
    folder.mkdir()
    data = pickle.dumps({"state": _Payload()})
    (folder / "state.pt").write_bytes(data)  # with a manifest that matches: the checksum cannot save us here
    (folder / "manifest.json").write_text(json.dumps({"file": "state.pt", "bytes": len(data),
                                                      "sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(CorruptCheckpointError, match="cannot be read as a checkpoint"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_every_torch_load_in_rlft_refuses_pickles():
    root = Path(__file__).resolve().parents[1]
    calls = [(path, line) for path in root.rglob("*.py") if ".venv" not in path.parts and "tests" not in path.parts
             for line in path.read_text().splitlines() if "torch.load(" in line and "``" not in line]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


def test_a_minari_dataset_without_env_spec_warns(tmp_path, hopper_episodes, monkeypatch):
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    from rlft.envs.registry import get_task
    from rlft.offline.dataset import DatasetWarning
    from rlft.offline.loaders import load_task_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Hopper-v5")
    minari.create_dataset_from_buffers(
        "t/hopper/nospec-v0", [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(hopper_episodes)], env=None,
        observation_space=env.observation_space, action_space=env.action_space, data_format="hdf5", author="t",
        author_email="t@t", code_permalink="t", algorithm_name="t", description="t")
    with pytest.warns(DatasetWarning, match="nospec-v0 records no environment"):
        assert len(load_task_dataset(tmp_path / "t" / "hopper" / "nospec-v0", get_task("hopper")))
