"""Benchmark: FOWM offline pretraining, then online fine-tuning with and without the planner's
uncertainty regulariser, several seeds.

For each seed, ``rlft experiment=wm/<dataset>`` pretrains the world model once
(``trainer.online_steps=0``); every ``--costs`` value then fine-tunes a copy of that checkpoint
(``init_from``) with ``agent.planner.uncertainty_cost`` set to it, so the variants differ only in
how they plan; ``--prior`` adds a variant that acts with the policy prior alone (``agent.mpc=false``,
no planning). Each online run first scores the loaded model with its own way of acting: that is
the variant's score after offline training. Runs are ``rlft`` commands in parallel workers (one torch
thread each); finished runs are skipped, so an interrupted benchmark continues where it stopped.
Writes ``results.md`` / ``results.json`` and ``<dataset>.png`` (online curves) to ``<out>``.

    python -m rlft.scripts.benchmark_wm --dataset hopper-medium --seeds 0 1 2 --costs 0 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs


PRIOR = "prior"


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """Folder label -> the overrides of that online variant."""
    out = {f"uncertainty-cost-{c:g}": [f"agent.planner.uncertainty_cost={c}"] for c in args.costs}
    if args.prior:
        out[PRIOR] = ["agent.mpc=false"]
    return out


def describe(label: str) -> str:
    return "policy prior, no planning" if label == PRIOR else f"planning, uncertainty cost {label.rsplit('-', 1)[1]}"


def base_overrides(seed: int, args: argparse.Namespace) -> list[str]:
    return [
        f"experiment=wm/{args.dataset}",
        f"wm_size={args.size}",
        f"seed={seed}",
        f"trainer.offline_steps={args.offline_steps}",
        f"trainer.eval_episodes={args.eval_episodes}",
        f"trainer.eval_envs={args.eval_episodes}",
        f"trainer.log_every={args.log_every}",
        f"trainer.checkpoint_every={args.checkpoint_every}",
        "progress=false",
        "threads=1",
        f"device={args.device}",
    ]


def offline_dir(out: Path, seed: int) -> Path:
    return out / "runs" / "offline" / f"seed{seed}"


def pretrain(seed: int, args: argparse.Namespace, out: Path) -> str:
    started, folder = time.time(), offline_dir(out, seed)
    if not bench_runs.phase_finished(folder, online=False):
        overrides = ["trainer.online_steps=0", f"trainer.eval_every={args.offline_eval_every}"]
        bench_runs.launch(base_overrides(seed, args) + overrides, folder)
    return f"offline seed {seed}: {time.time() - started:.0f}s"


def finetune(job: tuple[int, str], args: argparse.Namespace, out: Path) -> str:
    (seed, label), started = job, time.time()
    folder = out / "runs" / label / f"seed{seed}"
    if not bench_runs.phase_finished(folder, online=True):
        overrides = [f"trainer.online_steps={args.online_steps}", f"trainer.eval_every={args.eval_every}",
                     f"init_from={offline_dir(out, seed)}", *variants(args)[label]]
        bench_runs.launch(base_overrides(seed, args) + overrides, folder)
    return f"online seed {seed}, {describe(label)}: {time.time() - started:.0f}s"


def summarise(args: argparse.Namespace, out: Path, command: str) -> dict:
    offline = [bench_runs.run_minutes(offline_dir(out, s)) for s in args.seeds]
    results: dict = {"command": command, "offline_minutes": offline, "variants": {}}
    curves = {}
    for label in variants(args):
        folders = [out / "runs" / label / f"seed{s}" for s in args.seeds]
        runs = [json.loads((folder / "eval.json").read_text()) for folder in folders]
        online = [r["history"] for r in runs]
        results["variants"][label] = {
            "acting": describe(label),
            "offline_end": [r["before"]["normalized_score"] for r in runs],
            "online_end": [r["after"]["normalized_score"] for r in runs],
            "online_best": [max(h["normalized_score"] for h in hist if h["phase"] == "online") for hist in online],
            "minutes": [bench_runs.run_minutes(folder) for folder in folders],
        }
        curves[describe(label)] = [bench_runs.online_curve(h, args.eval_every, args.online_steps) for h in online]
    plot_seed_curves(curves, out / f"{args.dataset}.png",
                     f"FOWM on {args.dataset}: online fine-tuning ({len(args.seeds)} seeds)", "online environment steps")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def write_markdown(results: dict, args: argparse.Namespace, out: Path) -> None:
    fmt = bench_runs.mean_std
    lines = [
        f"# FOWM on {args.dataset}: offline pretraining, then online fine-tuning",
        "",
        f"Command: `{results['command']}`",
        "",
        f"World model: `wm_size={args.size}`; {args.offline_steps} offline updates, {args.online_steps} online env "
        f"steps (one update each, batches half dataset, half online); {args.eval_episodes} evaluation episodes "
        f"every {args.eval_every} steps; {len(args.seeds)} seeds; one CPU thread per run, two runs at a time on "
        f"2 cores; offline pretraining took {np.mean(results['offline_minutes']):.0f} min per seed. Normalised score: 100 * (return - random) / (expert - random). Each variant fine-tunes "
        "the same offline checkpoint of a seed, so 'after offline' differs between variants only by how they act.",
        "",
        "| acting | after offline | after online | best online eval | minutes per run | per seed (offline -> online) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results["variants"].values():
        seeds = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in zip(r["offline_end"], r["online_end"]))
        lines.append(f"| {r['acting']} | {fmt(r['offline_end'])} | {fmt(r['online_end'])} | "
                     f"{fmt(r['online_best'])} | {np.mean(r['minutes']):.0f} | {seeds} |")
    lines += ["", f"![online curves]({args.dataset}.png)", ""]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="hopper-medium", help="an experiment in configs/experiment/wm/")
    parser.add_argument("--size", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--costs", type=float, nargs="+", default=[0.0, 20.0], help="planner uncertainty costs")
    parser.add_argument("--prior", action="store_true", help="also fine-tune acting with the policy prior alone")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device of every run (e.g. cuda)")
    parser.add_argument("--offline-steps", type=int, default=10_000)
    parser.add_argument("--online-steps", type=int, default=5_000)
    parser.add_argument("--eval-every", type=int, default=1_000, help="online env steps between evaluations")
    parser.add_argument("--offline-eval-every", type=int, default=5_000, help="offline updates between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=2_500)
    parser.add_argument("--out", default="benchmarks/world_model/hopper-medium")
    args = parser.parse_args(argv)
    command = bench_runs.command_line("rlft.scripts.benchmark_wm", argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench_runs.run_parallel(lambda s: pretrain(s, args, out), args.seeds, args.workers)
    jobs = [(seed, label) for seed in args.seeds for label in variants(args)]
    bench_runs.run_parallel(lambda j: finetune(j, args, out), jobs, args.workers)
    results = summarise(args, out, command)
    write_markdown(results, args, out)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
