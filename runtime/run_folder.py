"""What every runner does to its run folder: claim it (a fresh start takes a folder no other run
holds, atomically), write the resolved config, and write ``eval.json`` atomically as strict JSON."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlft.runtime.checkpoint import latest_checkpoint
from rlft.runtime.logger import MetricLogger

CONFIG_FILE = "config.yaml"
EVAL_FILE = "eval.json"
CLAIM_FILE = ".rlft-run"  # created with O_EXCL by the run that starts in the folder
RUN_FILES = (CONFIG_FILE, EVAL_FILE, "metrics.csv", "checkpoints")  # a folder holding any of them is taken


def claim_run_folder(run_dir: Path) -> None:
    """Take ``run_dir`` for a fresh run, or raise ``FileExistsError`` naming what holds it. The claim
    file is created with ``O_EXCL``, so of two runs started in one folder at once exactly one starts."""
    taken = [name for name in RUN_FILES if (run_dir / name).exists()]
    if taken:
        action = (f"resume it (resume={run_dir})" if latest_checkpoint(run_dir / "checkpoints") is not None
                  else "it saved no checkpoint to resume from: delete it")
        raise FileExistsError(f"{run_dir} already holds another run ({', '.join(taken)}): {action}, "
                              "or choose a new run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(run_dir / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = (run_dir / CLAIM_FILE).read_text().strip() or "another run"
        raise FileExistsError(f"{run_dir} is claimed by {holder}: resume it (resume={run_dir}) "
                              "or choose a new run folder") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"pid {os.getpid()} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")


def open_run_folder(run_dir: Path, cfg: DictConfig, resume_step: int | None) -> MetricLogger:
    """Claim the folder (fresh start, ``resume_step=None``), write the resolved ``config.yaml`` and
    open the metric logger; a resume continues a folder that holds its checkpoints."""
    if resume_step is None:
        claim_run_folder(run_dir)
    elif latest_checkpoint(run_dir / "checkpoints") is None:
        raise FileNotFoundError(f"cannot resume {run_dir}: it holds no checkpoint")
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return MetricLogger(run_dir, resume_step=resume_step)


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_eval_json(run_dir: Path, content: dict[str, Any]) -> None:
    """``eval.json`` as strict JSON (NaN: ``null``) through a temporary file, so readers never see half of it."""
    tmp = run_dir / f"{EVAL_FILE}.tmp"
    tmp.write_text(json.dumps(strict_json(content), indent=2, allow_nan=False))
    os.replace(tmp, run_dir / EVAL_FILE)
