"""Benchmark: SPOT offline-to-online on one of our datasets, several seeds, one results file.

Runs the ``rlft`` command once per seed (in parallel worker processes, one torch thread
each), then writes ``<out>/results.md`` (the command, a per-seed table, mean ± std of the
normalised score at offline end and online end, gradient updates per second),
``<out>/results.json`` and ``<out>/learning_curves.png`` (mean ± std over seeds).

    python -m rlft.scripts.benchmark_spot --dataset hopper-medium --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> Path:
    run_dir = out / "runs" / f"seed{seed}"
    overrides = [
        f"dataset={args.dataset}",
        f"seed={seed}",
        f"trainer.pretrain_steps.vae={args.vae_steps}",
        f"trainer.offline_steps={args.offline_steps}",
        f"trainer.online_steps={args.online_steps}",
        f"trainer.eval_every={args.eval_every}",
        f"trainer.checkpoint_every={max(args.offline_steps, args.online_steps)}",
        "progress=false",
        "threads=1",
        f"hydra.run.dir={run_dir}",
        *args.overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = out / f"seed{seed}.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", *overrides], env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed} failed; see {log}")
    return run_dir


def phase_rate(run_dir: Path, phase: str) -> float:
    """Median logged steps/second of a phase (updates/s offline, env steps/s online)."""
    with open(run_dir / "metrics.csv") as f:
        rates = [float(r["steps_per_sec"]) for r in csv.DictReader(f) if r["phase"] == phase and r["steps_per_sec"]]
    return float(np.median(rates)) if rates else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="hopper-medium", help="config name under configs/dataset/")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--vae-steps", type=int, default=5_000)
    parser.add_argument("--offline-steps", type=int, default=30_000)
    parser.add_argument("--online-steps", type=int, default=30_000)
    parser.add_argument("--eval-every", type=int, default=2_500)
    parser.add_argument("--out", default=None, help="default: benchmarks/spot_<dataset>")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. agent.vae_hidden=256")
    args = parser.parse_args(argv)
    out = Path(args.out or f"benchmarks/spot_{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    command = bench_runs.command_line("rlft.scripts.benchmark_spot", argv)

    started = time.time()
    with ThreadPoolExecutor(args.workers) as pool:
        run_dirs = list(pool.map(lambda s: run_seed(s, args, out), args.seeds))
    minutes = (time.time() - started) / 60

    per_seed, curves = [], []
    for seed, run_dir in zip(args.seeds, run_dirs):
        result = json.loads((run_dir / "eval.json").read_text())
        hist = result["history"]
        curves.append((np.array([r["step"] for r in hist], float), np.array([r["normalized_score"] for r in hist])))
        per_seed.append({
            "seed": seed,
            "offline_end": result["before"]["normalized_score"],
            "online_end": result["after"]["normalized_score"],
            "online_best": max(r["normalized_score"] for r in hist if r["phase"] == "online"),
            "offline_updates_per_sec": phase_rate(run_dir, "offline"),
            "online_steps_per_sec": phase_rate(run_dir, "online"),
        })
    summary = {k: (float(np.mean([s[k] for s in per_seed])), float(np.std([s[k] for s in per_seed])))
               for k in per_seed[0] if k != "seed"}
    online_start = json.loads((run_dirs[0] / "eval.json").read_text())["before"]["step"]
    plot_seed_curves({"SPOT": curves}, out / "learning_curves.png",
                     title=f"SPOT offline-to-online, {args.dataset}", xlabel="gradient step (VAE + offline + online)",
                     vlines={"online fine-tuning": online_start})

    (out / "results.json").write_text(json.dumps({"command": command, "per_seed": per_seed, "summary": summary,
                                                  "wall_minutes": minutes}, indent=2))
    lines = [
        f"# SPOT offline-to-online on `{args.dataset}`",
        "",
        f"Produced by `{command}` ({minutes:.0f} min wall clock, {args.workers} worker processes, 1 torch thread each).",
        "",
        f"Budget per seed: VAE {args.vae_steps} updates, offline {args.offline_steps} updates, "
        f"online {args.online_steps} env steps (1 update each); evaluation every {args.eval_every} steps, "
        "10 deterministic episodes; scores are D4RL-normalised (100 = D4RL expert).",
        "",
        "| seed | offline end | online end | online best | offline updates/s | online steps/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in per_seed:
        lines.append(f"| {s['seed']} | {s['offline_end']:.1f} | {s['online_end']:.1f} | {s['online_best']:.1f} | "
                     f"{s['offline_updates_per_sec']:.0f} | {s['online_steps_per_sec']:.0f} |")
    m = summary
    lines.append(f"| **mean ± std** | **{m['offline_end'][0]:.1f} ± {m['offline_end'][1]:.1f}** | "
                 f"**{m['online_end'][0]:.1f} ± {m['online_end'][1]:.1f}** | {m['online_best'][0]:.1f} ± {m['online_best'][1]:.1f} | "
                 f"{m['offline_updates_per_sec'][0]:.0f} | {m['online_steps_per_sec'][0]:.0f} |")
    lines += ["", f"Rates are per process with {args.workers} processes sharing the machine's {os.cpu_count()} cores; "
              "uncontended update rates are in `benchmarks/update_speed.md`.",
              "", "![learning curves](learning_curves.png)", ""]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
