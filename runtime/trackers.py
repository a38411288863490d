"""Experiment trackers beside ``metrics.csv``: TensorBoard (always; with the config as text and the
run's hyperparameters in its HParams tab) and, when asked, Weights & Biases and MLflow
(``pip install "rlft[track]"``). Each tracker's run id is saved in every checkpoint, so ``resume``
continues the same tracker run instead of opening a new one.

    rlft tracker.wandb=true tracker.project=my-project          # W&B (tracker.offline=true: wandb sync later)
    rlft tracker.mlflow=true                                    # MLflow: MLFLOW_TRACKING_URI, else <run>/mlflow.db

A resumed run logs again the rows between its checkpoint and the crash (as ``metrics.csv`` does
after dropping them); W&B keeps its own step counter and plots against ``step``, the run's axis.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from rlft.common.typed_config import config_from_mapping


class TrackerError(ValueError):
    """A tracker asked for could not start (package missing, store or login refused)."""


@dataclass
class TrackerConfig:
    """``tracker:`` in ``configs/config.yaml``."""

    wandb: bool = False
    mlflow: bool = False
    project: str = "rlft"  # the W&B project and the MLflow experiment
    offline: bool = False  # W&B offline mode (WANDB_MODE=offline does the same)


def flat_hparams(cfg: DictConfig) -> dict[str, float | int | str | bool]:
    """The resolved config as ``section.key -> scalar`` (lists as text), what the trackers'
    hyperparameter views take; the ``hydra`` section and ``None`` values are left out."""
    flat: dict[str, float | int | str | bool] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key != "hydra":
                    walk(value, f"{prefix}{key}.")
        elif isinstance(node, (list, tuple)):
            flat[prefix[:-1]] = str(list(node))
        elif node is not None:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


class Tracker:
    """One tracker: opened (or re-opened by id) with the run's config, fed every metric row."""

    name: str

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    @property
    def run_id(self) -> str | None:
        return None

    def close(self) -> None:
        """Finish the tracker's run (flushes what it buffered)."""


class WandbTracker(Tracker):
    """A W&B run named after the run folder, its config the resolved config; ``run_id`` re-opens it."""

    name = "wandb"

    def __init__(self, run_dir: Path, cfg: DictConfig, settings: TrackerConfig, run_id: str | None):
        import wandb

        mode = "offline" if settings.offline else os.environ.get("WANDB_MODE", "online")
        self._run = wandb.init(project=settings.project, name=f"{run_dir.parent.name}/{run_dir.name}",
                               dir=str(run_dir), config=flat_hparams(cfg), id=run_id,
                               resume="allow" if run_id else None, mode=mode, reinit="create_new")
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log({"step": step, **metrics})

    @property
    def run_id(self) -> str | None:
        return self._run.id

    def close(self) -> None:
        self._run.finish()


class MlflowTracker(Tracker):
    """An MLflow run in experiment ``project`` (tracking URI: ``MLFLOW_TRACKING_URI``, else a SQLite
    store in the run folder, ``mlflow.db``, MLflow 3 having retired its file store, with artifacts in
    ``mlartifacts/``), the config as parameters and ``config.yaml`` as an artifact."""

    name = "mlflow"

    def __init__(self, run_dir: Path, cfg: DictConfig, settings: TrackerConfig, run_id: str | None):
        import mlflow

        self._mlflow = mlflow
        server = os.environ.get("MLFLOW_TRACKING_URI")
        self._client = mlflow.tracking.MlflowClient(server or f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}")
        if run_id is None:
            experiment = self._client.get_experiment_by_name(settings.project)
            # the run folder's own store keeps its artifacts beside it (MLflow's default: ./mlruns of the cwd)
            artifacts = None if server else (run_dir / MLFLOW_ARTIFACTS).resolve().as_uri()
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self._client.create_experiment(settings.project, artifact_location=artifacts))
            run = self._client.create_run(experiment_id, run_name=f"{run_dir.parent.name}/{run_dir.name}")
            run_id = run.info.run_id
            params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat_hparams(cfg).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
                self._client.log_batch(run_id, params=params[start:start + 100])
            self._client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        else:
            self._client.update_run(run_id, status="RUNNING")
        self._run_id = run_id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        stamp = int(1000 * time.time())
        values = [self._mlflow.entities.Metric(key, float(value), stamp, step) for key, value in metrics.items()]
        if values:
            self._client.log_batch(self._run_id, metrics=values)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
TRACKERS: dict[str, type[Tracker]] = {"wandb": WandbTracker, "mlflow": MlflowTracker}
EXTRA = 'pip install "rlft[track]"'


def tracker_settings(cfg: DictConfig) -> TrackerConfig:
    return config_from_mapping(TrackerConfig, cfg.get("tracker") or {}, "tracker")


def open_trackers(run_dir: Path, cfg: DictConfig, run_ids: Mapping[str, str] | None) -> list[Tracker]:
    """The trackers ``cfg.tracker`` asks for, each re-opened by its saved id when resuming; a missing
    package is an ``ImportError`` naming the extra that installs it."""
    settings = tracker_settings(cfg)
    opened = []
    for name, cls in TRACKERS.items():
        if not getattr(settings, name):
            continue
        try:
            opened.append(cls(run_dir, cfg, settings, (run_ids or {}).get(name)))
        except Exception as error:  # noqa: BLE001  each tracker raises its own types; one line names it
            for tracker in opened:
                tracker.close()
            if isinstance(error, ImportError):
                raise TrackerError(f"tracker.{name}=true needs the {name} package ({error}): {EXTRA}") from None
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise TrackerError(f"tracker.{name}: could not open its run ({type(error).__name__}: {first})") from None
    return opened


def finite_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a tracker takes: finite numbers (the phase name and NaN are left to ``metrics.csv``)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
