"""Helpers shared by the benchmark drivers: the command line written next to results, running
an rlft command into a folder (resuming it if it was interrupted) and jobs in parallel, telling
whether a run folder is finished, learning curves on a common grid, and table formatting."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np


Job = TypeVar("Job")


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces this benchmark: ``python -m <module> <arguments>``."""
    return f"python -m {module} {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip()


def run_parallel(run: Callable[[Job], str], jobs: Sequence[Job], workers: int) -> None:
    """``run`` every job on ``workers`` threads (each launches subprocesses), printing what each returns."""
    with ThreadPoolExecutor(workers) as pool:
        for message in pool.map(run, jobs):
            print(message, flush=True)


def run_and_report(module: str, argv: list[str] | None, args, jobs: Sequence[Job],
                   run: Callable[[Job, object, Path], str], summarise: Callable, write_markdown: Callable) -> dict:
    """A benchmark's main loop: ``run(job, args, out)`` for every job (``args.workers`` at a time,
    into ``args.out``), then ``summarise(args, out, command, seconds)``, ``write_markdown(results,
    args, out)`` and the results file printed; returns the results."""
    command = command_line(module, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    run_parallel(lambda job: run(job, args, out), jobs, args.workers)
    results = summarise(args, out, command, time.time() - started)
    write_markdown(results, args, out)
    print((out / "results.md").read_text())
    return results


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


def phase_finished(folder: Path, online: bool) -> bool:
    """Whether an ``rlft`` run folder has finished its online phase (or, ``online=False``, its offline one)."""
    key = "after" if online else "before"
    return finished(folder, lambda data: data[key] is not None)


def online_curve(history: list[dict], eval_every: int, online_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised score against online env steps of an ``rlft`` run, the offline-end score at step 0."""
    start = next(r for r in history if r["phase"] == "offline")
    pairs = [(0, start["normalized_score"])]
    pairs += [(r["step"] - start["step"], r["normalized_score"]) for r in history if r["phase"] == "online"]
    steps, values = map(np.asarray, zip(*pairs))
    grid = np.arange(0, online_steps + 1, eval_every)
    return grid, np.interp(grid, steps, values)


def run_minutes(folder: Path) -> float:
    """Wall-clock minutes of an ``rlft`` run folder: from its ``config.yaml`` (written at the start,
    and again when it is resumed) to its final ``eval.json``."""
    return ((folder / "eval.json").stat().st_mtime - (folder / "config.yaml").stat().st_mtime) / 60


def curve(history: list[dict], grid: np.ndarray, key: str = "normalized_score",
          left: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An ``eval.json`` history's ``key`` against its ``step``, interpolated onto ``grid``
    (``left``: the value before the first evaluation; default the first one)."""
    steps = np.array([r["step"] for r in history], dtype=float)
    values = np.array([r[key] for r in history], dtype=float)
    return grid, np.interp(grid, steps, values, left=left)


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
