"""What every runner does to its run folder: start it (or refuse to start over a resumable one)
and write ``eval.json`` atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlft.runtime.checkpoint import latest_checkpoint
from rlft.runtime.logger import MetricLogger

CONFIG_FILE = "config.yaml"
EVAL_FILE = "eval.json"


def open_run_folder(run_dir: Path, cfg: DictConfig, resume_step: int | None) -> MetricLogger:
    """Write the resolved ``config.yaml`` and open the metric logger. A fresh start
    (``resume_step=None``) over a folder that holds checkpoints is refused: resume it instead."""
    if resume_step is None and latest_checkpoint(run_dir / "checkpoints") is not None:
        raise FileExistsError(
            f"{run_dir} already holds checkpoints of another run: resume it (resume={run_dir}) "
            "or choose a new run folder"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return MetricLogger(run_dir, resume_step=resume_step)


def write_eval_json(run_dir: Path, content: dict[str, Any]) -> None:
    """``eval.json`` through a temporary file, so readers never see half of it."""
    tmp = run_dir / f"{EVAL_FILE}.tmp"
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, run_dir / EVAL_FILE)
