"""Benchmark: how many torch threads an rlft run should use on a small CPU, idle and beside
another CPU-heavy process.

Each measurement runs the embedded default experiment (SPOT's VAE, offline updates and online
fine-tuning on the shipped hopper-weak data) at a short budget with ``threads=<T>`` and reads
the update rate of every phase from the run's ``metrics.csv`` (``steps_per_sec`` over the whole
phase). "Loaded" runs it while a second identical rlft run with the same setting works in the
background (the common case of two runs started at once), so the number shows what
oversubscription costs. ``null`` is torch's default (one thread per core); ``2+passive`` runs 2
threads with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning). Each
setting is measured ``--repeats`` times (the table shows the median). One measurement runs at a
time. Writes ``<out>/results.md`` and ``results.json``.

    python -m rlft.scripts.benchmark_threads --threads 1 2 null 2+passive --out benchmarks/threads
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rlft.scripts import bench_runs

PHASES = ("vae", "offline", "online")


def budget(args: argparse.Namespace) -> list[str]:
    return [
        "experiment=demo",
        f"trainer.pretrain_steps.vae={args.vae_steps}",
        f"trainer.offline_steps={args.offline_steps}",
        f"trainer.online_steps={args.online_steps}",
        f"trainer.eval_every={max(args.offline_steps, args.online_steps)}",
        "trainer.eval_episodes=2",
        "trainer.eval_envs=2",
        "trainer.log_every=100",
        f"trainer.checkpoint_every={10 * max(args.offline_steps, args.online_steps)}",
        "progress=false",
    ]


def command(setting: str, run_dir: Path, args: argparse.Namespace) -> list[str]:
    threads = setting.split("+")[0]
    return [sys.executable, "-m", "rlft.scripts.main", *budget(args), f"threads={threads}", f"hydra.run.dir={run_dir}"]


def environment(setting: str) -> dict[str, str]:
    """The process environment of a setting: no thread-count variables; ``+passive``: sleeping OpenMP threads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    if setting.endswith("+passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def phase_rates(run_dir: Path) -> dict[str, float]:
    """The last logged ``steps_per_sec`` of each phase (a rate over the whole phase)."""
    rates: dict[str, float] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("steps_per_sec") and row["phase"] in PHASES:
                rates[row["phase"]] = float(row["steps_per_sec"])
    return rates


def measure(threads: str, loaded: bool, work: Path, args: argparse.Namespace, repeat: int) -> dict[str, float]:
    """Phase rates of one run with setting ``threads``, alone or beside a second run with the same setting."""
    env = environment(threads)
    tag = f"{threads}_{'loaded' if loaded else 'idle'}_{repeat}"
    background = None
    if loaded:
        # the competitor runs a longer budget, so it is busy for the whole measured run
        longer = argparse.Namespace(**{**vars(args), "offline_steps": 10 * args.offline_steps,
                                       "online_steps": 10 * args.online_steps})
        background = subprocess.Popen(command(threads, work / f"{tag}_bg", longer), env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.warmup_s)  # past its imports, into its updates
    try:
        run_dir = work / tag
        try:
            subprocess.run(command(threads, run_dir, args), env=env, check=True, stdout=subprocess.DEVNULL,
                           timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            print(f"  {tag}: stopped after {args.timeout_s:.0f} s; rates of the phases reached so far", flush=True)
        return phase_rates(run_dir)
    finally:
        if background is not None:
            background.kill()
            background.wait()


def write_results(rows: list[dict], out: Path, argv_line: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "# torch threads per rlft run, idle and beside a second run",
        "",
        f"Command: `{argv_line}`",
        "",
        "Updates (VAE, offline) or environment steps with updates (online) per second of the default",
        "experiment's phases; \"loaded\": while a second identical run with the same setting works.",
        "`null` is torch's default (one thread per core); `2+passive`: 2 threads, `OMP_WAIT_POLICY=PASSIVE`.",
        "Median of the repeats; `results.json` has every run.",
        "",
        "| threads | machine | " + " | ".join(f"{p} /s" for p in PHASES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in PHASES) + " |",
    ]
    for r in rows:
        rates = " | ".join(f"{r['rates'].get(p, float('nan')):.1f}" for p in PHASES)
        lines.append(f"| {r['threads']} | {'loaded' if r['loaded'] else 'idle'} | {rates} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/threads")
    parser.add_argument("--threads", nargs="+", default=["1", "2", "null", "2+passive"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vae-steps", type=int, default=500)
    parser.add_argument("--offline-steps", type=int, default=1000)
    parser.add_argument("--online-steps", type=int, default=1000)
    parser.add_argument("--warmup-s", type=float, default=20.0, help="seconds the competitor runs before measuring")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="a collapsed run is stopped after this long")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for loaded in (False, True):
            for threads in args.threads:
                runs = [measure(threads, loaded, Path(tmp), args, k) for k in range(args.repeats)]
                rates = {p: float(np.median([r.get(p, np.nan) for r in runs])) for p in PHASES}
                rows.append({"threads": threads, "loaded": loaded, "rates": rates, "runs": runs})
                print(f"threads={threads} {'loaded' if loaded else 'idle'}: {rates}", flush=True)
    write_results(rows, args.out, bench_runs.command_line("rlft.scripts.benchmark_threads", argv))


if __name__ == "__main__":
    main()
