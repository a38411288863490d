"""Benchmark: language policies learning text tasks with PPO over turns, GRPO, ArCHer and online
filtered BC, several seeds.

Each run is an ``rlft experiment=llm/...`` command (tiny Llama with a character tokenizer; the task config's
offline stage -- NumberLine: SFT on transcripts of *random* admissible actions, which teaches
the answer format, not the task; FrozenLake: filtered BC -- then RL), in parallel workers with
one torch thread each; finished runs are skipped, interrupted ones resumed. Writes to ``<out>``:

- ``results.md`` / ``results.json``: success rate after SFT and after RL, mean ± std over
  seeds and per seed, with each run's minutes and the command;
- ``<task>.png``: success rate against training episodes (mean ± std over seeds) per method;
- ``<task>-<metric>.png`` for every ``--train-metrics`` key: that training metric of ``metrics.csv``
  (e.g. GRPO's ``kl_ref``, the KL to the reference policy) against training episodes.

``--variants NAME=OVERRIDE,OVERRIDE ...`` runs every method once per variant (rows ``method NAME``),
e.g. RL4VLM's reasoning weight swept on chain-of-thought transcripts:

    python -m rlft.scripts.benchmark_llm --tasks numberline text-frozenlake --seeds 0 1 2
    python -m rlft.scripts.benchmark_llm --methods grpo --overrides text_method.algorithm.lr=1e-4
    python -m rlft.scripts.benchmark_llm --tasks text-frozenlake --methods grpo --out benchmarks/grpo_kl \
        --overrides text_method.algorithm.kl_coef=0.04 --train-metrics kl_ref
    python -m rlft.scripts.benchmark_llm --tasks numberline --methods ppo --out benchmarks/llm_cot \
        --overrides sft.reasoning=true generation.max_new_tokens=16 \
        --variants l0.01=text_method.algorithm.cot_lambda=0.01 l0.3=text_method.algorithm.cot_lambda=0.3 \
                   l0.5=text_method.algorithm.cot_lambda=0.5 l1=text_method.algorithm.cot_lambda=1.0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs

METHODS = ("ppo", "grpo", "archer", "filtered_bc")


def run_dir(out: Path, task: str, method: str, seed: int) -> Path:
    return out / "runs" / task / method / f"seed{seed}"


def run_labels(args: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    """Row label -> (method, the variant's overrides): one row per method, or per method and variant."""
    variants = [v.split("=", 1) for v in args.variants] or [("", "")]
    return {f"{m} {name}".strip(): (m, [o for o in extra.split(",") if o]) for m in args.methods for name, extra in variants}


def run_one(job: tuple[str, str, int], args: argparse.Namespace, out: Path) -> str:
    task, label, seed = job
    method, extra = run_labels(args)[label]
    folder = run_dir(out, task, label.replace(" ", "-"), seed)
    if bench_runs.finished(folder, lambda data: data["after"] is not None):
        return f"{task} {label} seed {seed}: done before"
    started = time.time()
    overrides = ["experiment=llm/ppo/numberline", f"text_task={task}", f"text_method={method}", f"seed={seed}", "threads=1",
                 f"loop.iterations={args.iterations}", f"loop.eval_every={args.eval_every}",
                 f"loop.checkpoint_every={args.eval_every}", "progress=false", *args.overrides, *extra]
    bench_runs.launch(overrides, folder)
    (folder / "wall_seconds.txt").write_text(f"{time.time() - started:.1f}\n")
    return f"{task} {label} seed {seed}: {time.time() - started:.0f}s"


def logs(metrics_csv: Path, key: str) -> bool:
    """Whether a run's ``metrics.csv`` has any value of ``key``."""
    try:
        bench_runs.metrics_curve(metrics_csv, key)
    except KeyError:
        return False
    return True


def summarise(args: argparse.Namespace, out: Path, command: str, seconds: float) -> dict:
    results: dict = {"command": command, "wall_seconds": seconds, "tasks": {}}
    for task in args.tasks:
        folders = {label: [run_dir(out, task, label.replace(" ", "-"), s) for s in args.seeds] for label in run_labels(args)}
        runs = {label: [json.loads((f / "eval.json").read_text()) for f in fs] for label, fs in folders.items()}
        grid = np.linspace(0, max(r["step"] for rs in runs.values() for r in rs), 41)
        per_method, curves = {}, {}
        for method, rs in runs.items():
            walls = [float((f / "wall_seconds.txt").read_text()) if (f / "wall_seconds.txt").exists() else float("nan")
                     for f in folders[method]]
            per_method[method] = {
                "before": [100 * r["before"]["success_rate"] for r in rs],
                "final": [100 * r["after"]["success_rate"] for r in rs],
                "best": [100 * max(h["success_rate"] for h in r["history"]) for r in rs],
                "episodes": [r["step"] for r in rs],
                "minutes": [w / 60 for w in walls],
            }
            curves[method] = [(grid, 100 * bench_runs.curve(r["history"], grid, "success_rate")[1]) for r in rs]
        results["tasks"][task] = per_method
        sft = OmegaConf.load(next(iter(folders.values()))[0] / "config.yaml").sft
        results.setdefault("sft", {})[task] = (
            f"SFT {sft.steps} steps on the {'successful ' if sft.success_only else ''}transcripts of {sft.episodes} "
            f"episodes of the scripted expert taking a random admissible action with probability {sft.epsilon}")
        plot_seed_curves(curves, out / f"{task}.png", f"{task}: tiny LM, SFT then RL ({len(args.seeds)} seeds)",
                         "training episodes", "success rate %")
        for key in args.train_metrics:  # rows whose runs log it (GRPO logs kl_ref only with kl_coef > 0)
            logged = {m: fs for m, fs in folders.items() if logs(fs[0] / "metrics.csv", key)}
            plot_seed_curves({m: [bench_runs.metrics_curve(f / "metrics.csv", key, grid) for f in fs]
                              for m, fs in logged.items()},
                             out / f"{task}-{key}.png", f"{task}: {key} during RL ({len(args.seeds)} seeds)",
                             "training episodes", key)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def write_markdown(results: dict, args: argparse.Namespace, out: Path) -> None:
    fmt = bench_runs.mean_std
    lines = [
        "# Language policies on text tasks: SFT on transcripts -> PPO / GRPO / ArCHer",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Model: tiny Llama (2 layers, 64 wide, character tokenizer; `policies/tiny_lm.py`). RL: {args.iterations} "
        f"iterations of 32 episodes. Success: greedy replies (FrozenLake: sampled, see its task config), 64 "
        f"evaluation episodes. {len(args.seeds)} seeds, one CPU thread per run, {args.workers} run(s) at a time on 2 cores; "
        "'minutes per run' is each run's own wall clock.",
        "",
    ]
    for task, per_method in results["tasks"].items():
        lines += [f"## {task}", "", f"Offline stage: {results['sft'][task]}.", "",
                  "| method | after SFT | after RL | best eval | minutes per run | per seed (SFT -> RL) |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for method, r in per_method.items():
            seeds = ", ".join(f"{a:.0f} -> {b:.0f}" for a, b in zip(r["before"], r["final"], strict=True))
            lines.append(f"| {method} | {fmt(r['before'])} | {fmt(r['final'])} | {fmt(r['best'])} | "
                         f"{np.nanmean(r['minutes']):.1f} | {seeds} |")
        lines += ["", f"![curves]({task}.png)", ""]
        lines += [f"![{key}]({task}-{key}.png)\n" for key in args.train_metrics]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["numberline", "text-frozenlake"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=80)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/llm")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra rlft overrides for every run")
    parser.add_argument("--variants", nargs="*", default=[], metavar="NAME=OVERRIDE,OVERRIDE",
                        help="run every method once per variant, with that variant's overrides")
    parser.add_argument("--train-metrics", nargs="*", default=[], metavar="KEY",
                        help="also plot these metrics.csv columns against training episodes (e.g. kl_ref)")
    args = parser.parse_args(argv)
    jobs = [(task, label, seed) for task in args.tasks for label in run_labels(args) for seed in args.seeds]
    bench_runs.run_and_report("rlft.scripts.benchmark_llm", argv, args, jobs, run_one, summarise, write_markdown)


if __name__ == "__main__":
    main()
