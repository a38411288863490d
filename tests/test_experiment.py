"""Offline-to-online runs: run folder contents, atomic checkpoints, exact resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rlft.runtime.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from rlft.runtime.experiment import Experiment

from conftest import run_interrupted


WSRL_SMOKE = ("agent=wsrl", "agent.cql_n_actions=2", "trainer.warmup_steps=50", "trainer.offline_data_ratio=0.0",
              "trainer.utd=2", "trainer.utd_mode=split", "trainer.online_batch_size=32")
FQL_SMOKE = ("agent=fql", "agent.flow_steps=3")


def smoke_config(dataset_path: Path, *overrides: str) -> DictConfig:
    spot = not any(o.startswith("agent=") for o in overrides)
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose(
            "config",
            [
                "experiment=smoke",
                f"dataset.source={dataset_path}",
                *(["agent.vae_hidden=32"] if spot else []),
                "agent.hidden=[32,32]",
                "trainer.online_steps=240",
                "trainer.checkpoint_every=60",
                "trainer.keep_checkpoints=20",
                *overrides,
            ],
        )


def test_checkpoint_writes_are_atomic_and_pruned(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep=2)
    (tmp_path / ".tmp-crashed").mkdir()  # a save interrupted mid-way
    (tmp_path / "step_000000009").mkdir()  # a folder without its state file
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002", "step_000000003"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["w"].tolist() == [3.0, 3.0]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_run_folder_has_config_metrics_checkpoints_eval_and_plot(tmp_path, native_hopper):
    run_dir = tmp_path / "run"
    results = Experiment(smoke_config(native_hopper), run_dir).run()
    for name in ("config.yaml", "metrics.csv", "eval.json", "learning_curve.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir()), "no TensorBoard events"
    assert latest_checkpoint(run_dir / "checkpoints") is not None
    assert results["before"]["phase"] == "offline" and results["after"]["phase"] == "online"
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    phases = {r["phase"] for r in rows}
    assert {"vae", "offline", "online"} <= phases
    assert any(r.get("train/episode_return") for r in rows)


def _metric_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in csv.DictReader(f)]


@pytest.mark.parametrize(
    "agent, crash_after_save, phase_index",
    [((), 4, 1), ((), 7, 2), (WSRL_SMOKE, 6, 1), (FQL_SMOKE, 6, 1)],
    ids=["spot-mid-offline", "spot-mid-online", "wsrl-mid-online", "fql-mid-online"],
)
def test_resume_reproduces_an_uninterrupted_run_exactly(
    tmp_path, native_hopper, monkeypatch, agent, crash_after_save, phase_index
):
    cfg = smoke_config(native_hopper, *agent)
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = Experiment(cfg, full_dir).run()

    # Crash right after a checkpoint save, inside the offline or the online phase.
    state = run_interrupted(cfg, cut_dir, monkeypatch, crash_after_save)
    assert state["counters"]["phase_index"] == phase_index and state["counters"]["phase_step"] > 0

    resumed = Experiment(cfg, cut_dir)
    assert resumed.resume()
    results = resumed.run()

    assert results["history"] == full["history"]
    final_full = load_checkpoint(latest_checkpoint(full_dir / "checkpoints"))["state"]["agent"]
    final_cut = load_checkpoint(latest_checkpoint(cut_dir / "checkpoints"))["state"]["agent"]
    for key in ("actor", "critic", "vae") if "vae" in final_full else ("actor", "critic", "critic_target"):
        for name, tensor in final_full[key].items():
            assert torch.equal(tensor, final_cut[key][name]), f"{key}.{name} differs after resume"
    assert _metric_rows(full_dir) == _metric_rows(cut_dir)


def test_resume_without_checkpoint_returns_false(tmp_path, native_hopper):
    assert Experiment(smoke_config(native_hopper), tmp_path / "empty").resume() is False


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, native_hopper):
    cfg = smoke_config(native_hopper, "trainer.online_steps=0", "trainer.offline_steps=50")
    Experiment(cfg, tmp_path / "run").run()
    with pytest.raises(FileExistsError, match="already holds another run"):
        Experiment(cfg, tmp_path / "run").run()


def test_bad_agent_option_and_env_mismatch_fail_clearly(tmp_path, native_hopper):
    with pytest.raises(ValueError, match=r"unknown agent option\(s\) \['bogus'\]"):
        Experiment(smoke_config(native_hopper, "+agent.bogus=1"), tmp_path / "a")
    with pytest.raises(Exception, match="collected in Hopper-v5 but the run's env is HalfCheetah-v5"):
        Experiment(smoke_config(native_hopper, "env=halfcheetah"), tmp_path / "b")


def test_eval_json_reports_both_phases(tmp_path, native_hopper):
    run_dir = tmp_path / "run"
    Experiment(smoke_config(native_hopper, "trainer.online_steps=100"), run_dir).run()
    data = json.loads((run_dir / "eval.json").read_text())
    assert data["details"]["dataset"]["transitions"] > 0
    steps = [r["step"] for r in data["history"]]
    assert steps == sorted(steps) and data["after"]["step"] == steps[-1]
