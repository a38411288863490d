"""Atomic, checksummed checkpoints: one folder per save, written to a temporary folder and renamed.

Each checkpoint folder holds ``state.pt`` and ``manifest.json`` (the state file's SHA-256 and
size), both written and flushed before the rename. A crash mid-save leaves at most a ``.tmp-*``
folder behind (removed at the next save), never a half-written checkpoint; :func:`load_checkpoint`
verifies the checksum, so a truncated, zeroed or bit-flipped state file is reported by name
(:class:`CorruptCheckpointError`) instead of failing deep inside ``torch.load`` or loading quietly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

CHECKPOINT_PREFIX = "step_"
CORRUPT_PREFIX = "corrupt-"  # a checkpoint that failed its check is renamed out of the way
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint's state file does not match its manifest or cannot be read."""


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _RecordingFile:
    """A file object that remembers why a write failed: ``torch.save`` turns a full disk into an
    opaque ``RuntimeError`` ("unexpected pos ..."), and the run must say "no space left"."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def _write_synced(file: Path, write: Any) -> None:
    """Write ``file`` with ``write(f)`` and ``fsync`` it; an ``OSError`` (a full disk, a read-only
    file system) is raised as itself, with the file's name, whatever the writer made of it."""
    sink = None
    try:
        with open(file, "wb") as f:
            sink = _RecordingFile(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(file)) from None
    except RuntimeError:
        if sink is not None and sink.error is not None:
            raise OSError(sink.error.errno, sink.error.strerror, str(file)) from None
        raise


def save_checkpoint(checkpoint_dir: str | Path, step: int, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``state`` to ``<checkpoint_dir>/step_<step>/`` atomically, with its manifest.

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
        _write_synced(tmp / STATE_FILE, lambda f: torch.save(state, f))
        manifest = {"file": STATE_FILE, "bytes": (tmp / STATE_FILE).stat().st_size, "sha256": _sha256(tmp / STATE_FILE)}
        _write_synced(tmp / MANIFEST_FILE, lambda f: f.write(json.dumps(manifest).encode()))
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
    """Checkpoint folders in ``checkpoint_dir`` that hold a state file, oldest first (their
    checksums are verified when they are loaded)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir()
             if p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest checkpoint folder, or ``None``."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def verify_checkpoint(path: str | Path) -> Path:
    """The state file of checkpoint folder ``path`` after checking it against the manifest;
    :class:`CorruptCheckpointError` names the file and what is wrong."""
    path = Path(path)
    path = path.parent if path.is_file() else path  # the state file itself was named
    file, manifest_file = path / STATE_FILE, path / MANIFEST_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected {file})")
    try:
        manifest = json.loads(manifest_file.read_text())
        expected_bytes, expected_sha = int(manifest["bytes"]), str(manifest["sha256"])
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{file}: no {MANIFEST_FILE} next to it (an unfinished copy, or "
                                     f"a checkpoint of an rlft without checksums)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpointError(f"{manifest_file} is unreadable ({error})") from None
    size = file.stat().st_size
    if size != expected_bytes:
        raise CorruptCheckpointError(f"{file} has {size} bytes, its manifest says {expected_bytes} (truncated?)")
    if _sha256(file) != expected_sha:
        raise CorruptCheckpointError(f"{file} does not match the SHA-256 in its manifest (the file was changed "
                                     f"or damaged after it was written)")
    return file


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint folder (or its ``state.pt``) after verifying its checksum (never unpickling: ``weights_only``)."""
    file = verify_checkpoint(path)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as error:  # matched its checksum yet unreadable: written by something else
        raise CorruptCheckpointError(f"{file} cannot be read as a checkpoint ({type(error).__name__}: {error})") \
            from None
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{file} holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def quarantine(path: Path) -> Path:
    """Rename a checkpoint that failed its check to ``corrupt-<name>`` (kept for inspection, out of
    :func:`list_checkpoints` and of the ``keep`` pruning); returns the new path."""
    target = path.with_name(f"{CORRUPT_PREFIX}{path.name}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    return target
