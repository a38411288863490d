"""What the micro-benchmarks share (update speed, generation, export latency, scaling, threads, ...:
the measurements a suite of rlft runs cannot make): one argument parser, the command line written
next to their results, running an rlft command into a folder (resumed if it was interrupted) with
one thread, reading a run's ``eval.json`` and ``metrics.csv``, and table formatting. Grids of rlft
runs are suites (``configs/suite/``, ``rlft-bench``)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np



def argument_parser(doc: str, out: str, out_help: str = "where the results go") -> argparse.ArgumentParser:
    """The parser every micro-benchmark starts from: its module docstring as the help and ``--out``
    (a ``Path``, default ``out``); each adds its own arguments."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(out), help=f"{out_help} (default: {out})")
    return parser


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces this benchmark: ``python -m <module> <arguments>``."""
    return f"python -m {module} {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip()


def launch(overrides: list[str], folder: Path) -> None:
    """Run ``rlft <overrides>`` into ``folder`` with one torch thread; a folder that already holds
    checkpoints is resumed instead of started again."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = [f"resume={folder}"] if (folder / "checkpoints").is_dir() else []
    cmd = [sys.executable, "-m", "rlft.scripts.main", *overrides, *extra, f"hydra.run.dir={folder}"]
    with open(folder / "stdout.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=single_thread_env())


def single_thread_env() -> dict[str, str]:
    """This process's environment with one OpenMP/MKL thread, for benchmark subprocesses."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def finished(folder: Path, done: Callable[[dict], bool]) -> bool:
    """``done(eval.json)`` for a run folder that has one."""
    path = folder / "eval.json"
    return path.is_file() and done(json.loads(path.read_text()))


def metrics_curve(path: Path, key: str, grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column ``key`` of a run's ``metrics.csv`` (rows from step 0 on that have it) against ``step``,
    interpolated onto ``grid`` (default: the steps that have it)."""
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get(key) not in (None, "") and int(r["step"]) >= 0]
    if not rows:
        raise KeyError(f"{path} has no values of {key!r}")
    steps = np.array([int(r["step"]) for r in rows], dtype=float)
    values = np.array([float(r[key]) for r in rows])
    return (steps, values) if grid is None else (grid, np.interp(grid, steps, values))


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` with one decimal, for results tables."""
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"
