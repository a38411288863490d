"""The ``rlft`` console command end to end: a run, a resume, a local multirun sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.offline.loaders import save_native

SMOKE = ["experiment=smoke", "agent.vae_hidden=32", "agent.hidden=[32,32]", "trainer.online_steps=100"]


def rlft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlft.scripts.main", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture
def dataset_file(tmp_path, hopper_dataset) -> Path:
    hopper_dataset.env_id = "Hopper-v5"
    return save_native(hopper_dataset, tmp_path / "hopper.h5")


def test_cli_run_then_resume(tmp_path, dataset_file):
    run_dir = tmp_path / "runs" / "one"
    out = rlft(*SMOKE, f"dataset.source={dataset_file}", f"hydra.run.dir={run_dir}", cwd=tmp_path).stdout
    assert "offline end (before fine-tuning)" in out and "online end (after fine-tuning)" in out
    for name in ("config.yaml", "metrics.csv", "eval.json", "learning_curve.png", "checkpoints"):
        assert (run_dir / name).exists(), name
    first = json.loads((run_dir / "eval.json").read_text())

    again = rlft(f"resume={run_dir}", cwd=tmp_path).stdout
    assert "resumed from" in again
    assert json.loads((run_dir / "eval.json").read_text())["history"] == first["history"]


def test_cli_multirun_sweeps_seeds(tmp_path, dataset_file):
    sweep = tmp_path / "sweep"
    rlft("-m", *SMOKE, f"dataset.source={dataset_file}", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "eval.json").exists())
    assert [p.name for p in runs] == ["0_seed0", "1_seed1"]
    seeds = [json.loads((p / "eval.json").read_text())["seed"] for p in runs]
    assert seeds == [0, 1]


def test_cli_reports_missing_dataset(tmp_path):
    cmd = [sys.executable, "-m", "rlft.scripts.main", *SMOKE, f"dataset.source={tmp_path / 'missing.hdf5'}",
           f"hydra.run.dir={tmp_path / 'r'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "dataset file not found" in proc.stderr and "missing.hdf5" in proc.stderr
