"""The experiment trackers: TensorBoard holds the config (text) and the hyperparameters (HParams);
W&B (offline mode) and MLflow (a SQLite store in the run folder) get the config and every metric
row, and a run killed and resumed continues the same W&B and MLflow runs (their ids are saved in
each checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlft.runtime.experiment import Experiment
from rlft.runtime.trackers import MLFLOW_DB, TrackerError, open_trackers

from conftest import run_interrupted
from test_experiment import smoke_config

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

TRACKED = ["tracker.wandb=true", "tracker.offline=true", "tracker.mlflow=true", "tracker.project=rlft-test",
           "trainer.online_steps=120", "trainer.offline_steps=60", "trainer.pretrain_steps.vae=20",
           "trainer.log_every=20", "trainer.eval_every=60"]


def _wandb_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_a_resumed_run_continues_the_same_wandb_and_mlflow_runs(tmp_path, native_hopper, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    cfg = smoke_config(native_hopper, *TRACKED)
    run_dir = tmp_path / "run"
    state = run_interrupted(cfg, run_dir, monkeypatch, after_saves=2)
    ids = state["trackers"]
    assert set(ids) == {"wandb", "mlflow"}

    resumed = Experiment(cfg, run_dir)
    assert resumed.resume()
    results = resumed.run()
    assert results["done"]

    first, second = _wandb_runs(run_dir)  # one folder per process, both for the same W&B run
    assert first.name.endswith(ids["wandb"]) and second.name.endswith(ids["wandb"])
    for folder in (first, second):  # W&B's offline transaction log (protobuf records) holds config and rows
        log = (folder / f"run-{ids['wandb']}.wandb").read_bytes()
        assert b"trainer.online_steps" in log and b"agent.hidden" in log and b"eval/return" in log

    client = mlflow.tracking.MlflowClient(f"sqlite:///{run_dir / MLFLOW_DB}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "rlft-test"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
    assert run.data.params["trainer.online_steps"] == "120" and run.data.params["agent.name"] == "spot"
    history = client.get_metric_history(run.info.run_id, "eval/return")
    assert {m.step for m in history} == {r["step"] for r in results["history"]}
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert (run_dir / "mlartifacts").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["hopper-random.h5", "run"]


def test_tensorboard_holds_the_config_and_hyperparameters(tmp_path, native_hopper):
    cfg = smoke_config(native_hopper, "trainer.online_steps=40", "trainer.offline_steps=20",
                       "trainer.pretrain_steps.vae=20")
    Experiment(cfg, tmp_path / "run").run()
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert "config/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "online_steps: 40" in text
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    assert b"trainer.online_steps" in plugins["_hparams_/session_start_info"]


def test_a_tracker_that_cannot_start_is_one_named_error(tmp_path, native_hopper, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    cfg = smoke_config(native_hopper, "tracker.mlflow=true")
    with pytest.raises(TrackerError, match="tracker.mlflow: could not open its run"):
        open_trackers(tmp_path, cfg, None)
