"""Atomic checkpoints: one folder per save, written to a temporary folder and renamed.

A crash mid-save leaves at most a ``.tmp-*`` folder behind, never a half-written
checkpoint; :func:`latest_checkpoint` ignores such leftovers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "state.pt"


def save_checkpoint(checkpoint_dir: str | Path, step: int, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``state`` to ``<checkpoint_dir>/step_<step>/state.pt`` atomically.

    ``state`` holds tensors, containers and plain Python values (it must load with
    ``weights_only=True``). ``keep`` bounds how many checkpoints stay on disk (oldest go first).
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoint_dir.glob(".tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=checkpoint_dir))
    try:
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(checkpoint_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``checkpoint_dir``, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or ``None``."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint folder (or its ``state.pt``)."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected {file})")
    return torch.load(file, map_location=map_location, weights_only=True)
