"""End-to-end speed of a change to rlft's update loop: the same experiments run by two installs of rlft
(e.g. main before and after issue 35), one torch thread each, and a report of wall time, logged
steps/s per phase and learning curves side by side.

Both arms of a seed run at the same time, one per core, so they share whatever else the machine
is doing; the ratio that matters is the paired one (after / before of the same seed). A finished
run leaves a summary in ``<out>/summaries/`` and is skipped next time; an unfinished one is started
again (a resumed run's wall time would mean nothing). The 'before' arm needs an interpreter whose
``rlft`` is the old checkout, e.g.:

    git worktree add /tmp/rlft-before <commit>
    mkdir -p /tmp/rlft-before-root && ln -s /tmp/rlft-before /tmp/rlft-before-root/rlft
    python3 -m venv /tmp/rlft-before-venv
    printf '/tmp/rlft-before-root\\n%s\\n' "$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')" \\
        > /tmp/rlft-before-venv/lib/python3.11/site-packages/rlft-before.pth

(the old checkout first on the path, this venv's packages after it, and not this venv's editable rlft).
Then, e.g. issue 35's measurement:

    python -m rlft.scripts.benchmark_update_loop --arm before=/tmp/rlft-before-venv/bin/python \\
        --arm after=.venv/bin/python --seeds 0 1 2 --runs /tmp/update_loop --out benchmarks/update_loop \\
        --experiment "o2o-iql=experiment=o2o/iql/hopper-weak trainer.offline_steps=20000 trainer.online_steps=20000"
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rlft.common.machine import cpu_description
from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs

LAST_EVALUATIONS = 3


def named(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> ``(name, value)`` (the value may be empty or hold further ``=``)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def summary_path(out: Path, arm: str, experiment: str, seed: int) -> Path:
    return out / "summaries" / f"{experiment}-seed{seed}-{arm}.json"


def phase_rates(metrics_csv: Path) -> dict[str, float]:
    """Mean logged ``steps_per_sec`` of each phase of a run (the runners' own rate per log row)."""
    rates: dict[str, list[float]] = defaultdict(list)
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("steps_per_sec"):
                rates[row["phase"]].append(float(row["steps_per_sec"]))
    return {phase: float(np.mean(values)) for phase, values in rates.items()}


def summarise_run(folder: Path, wall_s: float, **identity: Any) -> dict[str, Any]:
    """What the report needs of a finished run folder."""
    results = json.loads((folder / "eval.json").read_text())
    metric = results["metric"]
    return {**identity, "wall_s": wall_s, "rates": phase_rates(folder / "metrics.csv"), "metric": metric,
            "history": [{"step": r["step"], "phase": r["phase"], "value": r[metric]} for r in results["history"]]}


def run_seed(args: argparse.Namespace, experiment: str, overrides: str, seed: int) -> None:
    """Both arms of one seed at once, one thread each; writes each arm's summary when it finishes."""
    out, runs = Path(args.out), Path(args.runs)
    started, procs = {}, {}
    for arm, python in args.arm:
        if summary_path(out, arm, experiment, seed).is_file():
            continue
        folder = runs / arm / experiment / f"seed{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        cmd = [python, "-m", "rlft.scripts.main", *shlex.split(overrides), f"seed={seed}", "threads=1",
               f"hydra.run.dir={folder.resolve()}"]
        log = open(folder / "stdout.log", "w")
        started[arm] = time.perf_counter()
        procs[arm] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=bench_runs.single_thread_env(),
                                       cwd="/"), log, folder, python)
    ended: dict[str, float] = {}
    while len(ended) < len(procs):  # each arm's wall time ends when its own process does
        for arm, (proc, *_) in procs.items():
            if arm not in ended and proc.poll() is not None:
                ended[arm] = time.perf_counter()
        time.sleep(0.2)
    for arm, (proc, log, folder, python) in procs.items():
        log.close()
        if proc.returncode:
            raise RuntimeError(f"{arm} arm of {experiment} seed {seed} failed (exit {proc.returncode}): "
                               f"see {folder}/stdout.log")
        summary = summarise_run(folder, ended[arm] - started[arm], arm=arm, experiment=experiment,
                                seed=seed, overrides=overrides, python=python)
        path = summary_path(out, arm, experiment, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1))
        print(f"{experiment} seed {seed} {arm}: {summary['wall_s'] / 60:.1f} min", flush=True)


def score(summary: dict[str, Any]) -> float:
    """A run's score: the mean of its last :data:`LAST_EVALUATIONS` evaluations (one snapshot is noisy)."""
    return float(np.mean([r["value"] for r in summary["history"][-LAST_EVALUATIONS:]]))


def curve_of(summary: dict[str, Any], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steps = [r["step"] for r in summary["history"]]
    values = [r["value"] if r["value"] is not None else np.nan for r in summary["history"]]
    return grid, np.interp(grid, steps, values)


def report(args: argparse.Namespace, command: str) -> str:
    """``results.md`` (and one curve plot per experiment) from every summary in ``<out>/summaries``."""
    lines = ["# Update loop: end to end", "",
             f"Produced by `{command}` on {cpu_description()}. Both arms of a seed ran at the same "
             "time, one torch thread each (one per core); ratios pair the two arms of a seed. Steps/s are the "
             "runners' logged `steps_per_sec` (updates/s offline, environment steps/s online, PPO iterations' "
             "agent steps/s), averaged over each phase's log rows.", ""]
    for experiment, overrides in args.experiment:
        lines += [f"## {experiment}: `{('rlft ' + overrides).strip()}`", ""]
        lines += experiment_section(args, experiment) + [""]
    return "\n".join(lines)


def experiment_section(args: argparse.Namespace, experiment: str) -> list[str]:
    """One experiment's table of paired seeds, its mean speed-up, online/offline rate ratios and curves."""
    out, arms = Path(args.out), [arm for arm, _ in args.arm]
    runs = {arm: {seed: json.loads(p.read_text()) for seed in args.seeds
                  if (p := summary_path(out, arm, experiment, seed)).is_file()} for arm in arms}
    seeds = sorted(set(runs[arms[0]]) & set(runs[arms[1]]))
    if not seeds:
        return ["No seed has finished in both arms yet."]
    first, second = arms
    pairs = [(runs[first][seed], runs[second][seed]) for seed in seeds]
    phases = list(dict.fromkeys(phase for pair in pairs for run in pair for phase in run["rates"]))
    metric = pairs[0][0]["metric"]
    lines = [f"| seed | {first} min | {second} min | {first} / {second} wall | "
             + "".join(f"{phase} steps/s {first} → {second} | " for phase in phases)
             + f"{metric} {first} | {metric} {second} |",
             "| ---: | ---: | ---: | ---: | " + "---: | " * len(phases) + "---: | ---: |"]
    for seed, (a, b) in zip(seeds, pairs):
        rates = "".join(f"{a['rates'].get(p, np.nan):.1f} → {b['rates'].get(p, np.nan):.1f} | " for p in phases)
        lines.append(f"| {seed} | {a['wall_s'] / 60:.2f} | {b['wall_s'] / 60:.2f} | {a['wall_s'] / b['wall_s']:.2f}x | "
                     f"{rates}{score(a):.1f} | {score(b):.1f} |")
    speedups = [a["wall_s"] / b["wall_s"] for a, b in pairs]
    scores = [bench_runs.mean_std([score(pair[index]) for pair in pairs]) for index in (0, 1)]
    lines += ["", f"Wall-time speed-up, {second} over {first}: mean {np.mean(speedups):.2f}x over {len(seeds)} "
              f"seed(s) (each {', '.join(f'{x:.2f}x' for x in speedups)}). A run's {metric} is the mean of its "
              f"last {LAST_EVALUATIONS} evaluations; over seeds (mean ± std), {first} {scores[0]}, "
              f"{second} {scores[1]}.", ""]
    for arm, index in ((first, 0), (second, 1)):
        ratios = [pair[index]["rates"].get("online", 0) / pair[index]["rates"]["offline"]
                  for pair in pairs if "offline" in pair[index]["rates"]]
        if ratios and all(ratios):
            lines.append(f"- {arm}: online steps/s are {100 * np.mean(ratios):.0f}% of offline updates/s.")
    grid = np.asarray(sorted({r["step"] for pair in pairs for run in pair for r in run["history"]}), dtype=float)
    plot = out / f"{experiment}.png"
    plot_seed_curves({arm: [curve_of(pair[index], grid) for pair in pairs] for arm, index in ((first, 0), (second, 1))},
                     plot, f"{experiment}: {first} and {second} (mean ± std over seeds)", ylabel=metric)
    return lines + ["", f"![{experiment} curves]({plot.name})"]


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/update_loop", out_help="summaries, results.md and plots")
    parser.add_argument("--arm", type=named, action="append", required=True,
                        help="NAME=PYTHON: an interpreter whose rlft is one side of the comparison (give two)")
    parser.add_argument("--experiment", type=named, action="append", required=True,
                        help="NAME=OVERRIDES: an rlft command line, e.g. 'demo=' for the default experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", default="runs/update_loop", help="where the run folders go")
    parser.add_argument("--report-only", action="store_true", help="write the report from the summaries so far")
    args = parser.parse_args(argv)
    if len(args.arm) != 2:
        parser.error(f"give exactly two --arm NAME=PYTHON, got {len(args.arm)}")
    command = bench_runs.command_line("rlft.scripts.benchmark_update_loop", argv)
    if not args.report_only:
        for experiment, overrides in args.experiment:
            for seed in args.seeds:
                run_seed(args, experiment, overrides, seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text(report(args, command))
    print((Path(args.out) / "results.md").read_text())


if __name__ == "__main__":
    main()
