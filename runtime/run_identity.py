"""What made a run, written beside its config as ``run.json``: the experiment and the group
options chosen, the overrides and the full command line, the git commit of the rlft source (and
whether it had uncommitted changes), the versions of rlft and the libraries a result depends on,
the host and the start time. A resume appends what it ran with, so a run continued under other
code says so."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.runtime.run_folder import write_atomically

RUN_FILE = "run.json"
# the distributions whose versions a run records (those installed)
LIBRARIES = ("rlft", "torch", "numpy", "gymnasium", "mujoco", "hydra-core", "omegaconf", "minari", "ogbench",
             "transformers", "stable-baselines3", "onnxruntime")


@dataclass(frozen=True)
class RunOrigin:
    """How a run was asked for: filled by the ``rlft`` command and the Python API from Hydra."""

    experiment: str | None = None  # configs/experiment/<name>
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option, as composed
    overrides: tuple[str, ...] = ()  # the overrides given (without Hydra's own)
    command: tuple[str, ...] = ()  # the process's command line (sys.argv) or the API call


@functools.cache
def source_revision() -> dict[str, Any]:
    """The git commit of the rlft source tree and whether it differs from it (``dirty``: tracked
    files changed); ``commit`` is None where rlft is not a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (missing ones left out) and Python's."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _session(origin: RunOrigin) -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": socket.gethostname(),
            "command": list(origin.command or sys.argv), "git": source_revision(), "versions": library_versions()}


def write_run_record(run_dir: Path, origin: RunOrigin | None, fresh: bool) -> dict[str, Any]:
    """Write ``run.json`` for a fresh start, or append this session to its ``resumes`` (a folder
    from before run records starts one). Returns what was written."""
    origin = origin or RunOrigin()
    path = run_dir / RUN_FILE
    record: dict[str, Any] | None = None
    if not fresh and path.is_file():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            record = None
    if record is None and fresh:
        record = {"experiment": origin.experiment, "choices": dict(origin.choices),
                  "overrides": list(origin.overrides), "started": _session(origin), "resumes": []}
    elif record is None:  # a folder started before rlft wrote run records: what made it is unknown
        record = {"experiment": None, "choices": {}, "overrides": [], "started": None, "resumes": [_session(origin)]}
    else:
        record.setdefault("resumes", []).append(_session(origin))
    write_atomically(path, json.dumps(record, indent=2))
    return record
