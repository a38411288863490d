"""What every runner does to its run folder: hold it (one process at a time, fresh start or
resume, by a lock the kernel releases when the process dies), write the resolved config, and
write ``eval.json`` atomically as strict JSON."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shlex
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Any, Mapping

from omegaconf import DictConfig, OmegaConf

from rlft.runtime.checkpoint import latest_checkpoint
from rlft.runtime.logger import MetricLogger
from rlft.runtime.trackers import open_trackers

CONFIG_FILE = "config.yaml"
EVAL_FILE = "eval.json"
CLAIM_FILE = ".rlft-run"  # locked (flock) by the process that runs in the folder; says which process that is
RUN_FILES = (CONFIG_FILE, EVAL_FILE, "metrics.csv", "checkpoints")  # a folder holding any of them is taken
_SAFE_IN_OVERRIDE = re.compile(r"[A-Za-z0-9_\-./:]+")  # Hydra reads these unquoted
_SAFE_IN_DOUBLE_QUOTES = re.compile(r'[^"$`\\!]*')  # a shell leaves these alone inside "..."


# what a fresh start writes before its first metric row: a run refused then leaves nothing worth keeping
STARTED_FILES = {CONFIG_FILE, CLAIM_FILE, "tb", "metrics.csv", "run.json", "wandb", "mlflow.db", "mlartifacts"}


def remove_unstarted(run_dir: Path, claimed: bool = False) -> None:
    """Remove the folder of a fresh run that never started (and ``runs/<experiment>/...`` up to
    ``runs/`` where they are left empty): empty, as Hydra created it, or, when this process
    ``claimed`` it, holding only what a start writes before its first metric row (a refusal raised
    after the claim). Never called for a resumed folder: that one is the user's."""
    if not run_dir.is_dir():
        return
    metrics = run_dir / "metrics.csv"
    rows = len(metrics.read_text().splitlines()) - 1 if metrics.is_file() else 0
    names = {path.name for path in run_dir.iterdir()}
    if names and not (claimed and names <= STARTED_FILES and rows <= 0):
        return
    shutil.rmtree(run_dir)
    parents = run_dir.resolve().parents
    runs = next((i for i, parent in enumerate(parents) if parent.name == "runs"), -1)
    for parent in parents[: runs + 1]:  # up to and including runs/, while they are left empty
        if any(parent.iterdir()):
            return
        parent.rmdir()


class RunFolderBusy(FileExistsError):
    """Another live process holds the run folder's lock."""


def resume_command(run_dir: Path) -> str:
    """The ``rlft resume=...`` command for ``run_dir``, pasteable into a POSIX shell: the path is
    quoted as Hydra's override grammar needs (spaces, non-ASCII letters) and the override as the
    shell needs."""
    text = str(run_dir)
    if _SAFE_IN_OVERRIDE.fullmatch(text):
        return f"rlft resume={text}"
    # inside Hydra's quotes a backslash is literal except before a quote or at the end, where it is doubled
    quoted = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    override = f"resume='{quoted}'"
    if _SAFE_IN_DOUBLE_QUOTES.fullmatch(override):
        return f'rlft "{override}"'
    return f"rlft {shlex.quote(override)}"


class RunLock:
    """An exclusive hold on a run folder for the life of one run (fresh start or resume): an
    ``flock`` on :data:`CLAIM_FILE`. The kernel releases it when the process ends, however it ends
    (``kill -9`` included), so a crashed run never leaves a stale claim, and a second process that
    asks for a folder another one holds is refused by name instead of interleaving its saves and
    ``metrics.csv`` rows with the first one's."""

    def __init__(self, run_dir: Path):
        self._file: IO[str] | None = open(run_dir / CLAIM_FILE, "a+")  # never truncated before the lock is held
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self.release()
            raise RunFolderBusy(f"{run_dir} is in use by another rlft run ({holder}): wait for it to end or stop "
                                "it (two processes in one folder would interleave their checkpoints and metrics), "
                                "or choose a new run folder") from None

    def announce(self) -> None:
        """Write which process holds the folder into the claim file (what a refused process is told);
        called once the run is sure to go on, so a refused start leaves the previous holder's line."""
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._file.flush()

    def release(self) -> None:
        """Give the folder up (closing the file drops the lock); called when the run ends."""
        if self._file is not None:
            self._file.close()
            self._file = None


def claim_run_folder(run_dir: Path) -> RunLock:
    """Take ``run_dir`` for a fresh run, or raise ``FileExistsError`` naming what holds it: another
    live run (:class:`RunFolderBusy`), or the files of a finished or crashed one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    taken = [name for name in RUN_FILES if (run_dir / name).exists()]
    if taken:
        lock.release()
        action = (f"resume it ({resume_command(run_dir)})" if latest_checkpoint(run_dir / "checkpoints") is not None
                  else "it saved no checkpoint to resume from: delete it")
        raise FileExistsError(f"{run_dir} already holds another run ({', '.join(taken)}): {action}, "
                              "or choose a new run folder")
    lock.announce()
    return lock


def open_run_folder(run_dir: Path, cfg: DictConfig, resume_step: int | None,
                    tracker_ids: Mapping[str, str] | None = None) -> MetricLogger:
    """Write the resolved ``config.yaml`` and open the metric logger, with the trackers the config
    asks for (re-opened by ``tracker_ids`` on resume), in a folder this process holds
    (:func:`claim_run_folder` for a fresh start, a :class:`RunLock` taken before a resume loads)."""
    if resume_step is not None and latest_checkpoint(run_dir / "checkpoints") is None:
        raise FileNotFoundError(f"cannot resume {run_dir}: it holds no checkpoint")
    write_atomically(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    logger = MetricLogger(run_dir, resume_step=resume_step, trackers=open_trackers(run_dir, cfg, tracker_ids))
    if resume_step is None:
        logger.describe_run(cfg)
    return logger


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
    write_atomically(run_dir / EVAL_FILE, json.dumps(strict_json(content), indent=2, allow_nan=False))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a full disk or a kill
    leaves the old file whole (and the temporary one is removed when the write fails)."""
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
