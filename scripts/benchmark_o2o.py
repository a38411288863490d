"""Benchmark: offline-to-online fine-tuning of SPOT, E2O, Cal-QL, IQL and WSRL, several seeds.

For each task and seed, every method pretrains offline once (``trainer.online_steps=0``) and
fine-tunes online from that checkpoint (``init_from``). WSRL's CQL checkpoint is
fine-tuned twice, with and without the warm-up, both with the offline data discarded: the
WSRL paper's central comparison. Runs are ``rlft`` commands (in parallel workers, one torch
thread each); finished runs are skipped, so an interrupted benchmark continues where it
stopped. Writes to ``<out>``:

- ``results.md`` / ``results.json``: normalised score at offline end and online end per
  method (mean ± std over seeds, and per seed), with the command that produced them;
- ``<task>_online.png``: online learning curves of every method (mean ± std over seeds);
- ``<task>_wsrl_warmup.png``: WSRL vs the same checkpoint without warm-up vs Cal-QL
  (which keeps the offline data), from the start of fine-tuning.

    python -m rlft.scripts.benchmark_o2o --tasks pointmaze-umaze hopper-medium --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs

METHODS = ("wsrl", "calql", "e2o", "iql", "spot")
NO_WARMUP = "wsrl-no-warmup"  # WSRL's checkpoint fine-tuned without warm-up (offline data discarded)
CQL_FAMILY = ("wsrl", "calql", "e2o")


@dataclass
class Chain:
    """One offline run and the online runs that start from it (run one after another)."""

    task: str
    seed: int
    method: str
    offline: list[str]
    online: dict[str, list[str]] = field(default_factory=dict)  # label -> extra overrides


def overrides_for(method: str, task: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The command-line overrides shared by a method's offline and online runs."""
    out = [
        f"experiment=o2o/{method}/{task}",
        f"seed={seed}",
        f"trainer.offline_steps={args.offline_steps}",
        f"trainer.eval_every={args.eval_every}",
        f"trainer.eval_episodes={args.eval_episodes}",
        f"trainer.log_every={args.eval_every}",
        f"trainer.checkpoint_every={max(args.offline_steps, args.online_steps)}",
        "progress=false",
        "threads=1",
        f"agent.hidden=[{args.width},{args.width}]",
    ]
    if method in CQL_FAMILY:
        out.append(f"agent.cql_n_actions={args.cql_actions}")
    if method == "spot":
        out += [f"trainer.pretrain_steps.vae={args.vae_steps}", f"agent.vae_hidden={args.width}"]
    if method == "wsrl":
        out.append(f"trainer.warmup_steps={args.warmup_steps}")
    return out


def add_run_arguments(parser: argparse.ArgumentParser, offline_steps: int, online_steps: int, warmup_steps: int,
                      eval_every: int) -> None:
    """The run sizes :func:`overrides_for` reads, with these defaults."""
    parser.add_argument("--offline-steps", type=int, default=offline_steps)
    parser.add_argument("--online-steps", type=int, default=online_steps)
    parser.add_argument("--warmup-steps", type=int, default=warmup_steps)
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--width", type=int, default=128, help="hidden width of every network")
    parser.add_argument("--cql-actions", type=int, default=4, help="actions per source in CQL's log-sum-exp")


def build_chains(args: argparse.Namespace) -> list[Chain]:
    chains = []
    for task in args.tasks:
        for seed in args.seeds:
            for method in args.methods:
                base = overrides_for(method, task, seed, args)
                online = {method: [f"trainer.online_steps={args.online_steps}"]}
                if method == "wsrl":
                    online[NO_WARMUP] = [f"trainer.online_steps={args.online_steps}", "trainer.warmup_steps=0"]
                chains.append(Chain(task, seed, method, base + ["trainer.online_steps=0"],
                                    {k: base + v for k, v in online.items()}))
    return chains


def run_dir(out: Path, task: str, label: str, seed: int) -> Path:
    return out / "runs" / task / label / f"seed{seed}"


def launch(overrides: list[str], folder: Path) -> None:
    """Run (or resume) one ``rlft`` command into ``folder``."""
    bench_runs.launch(overrides, folder)


def run_chain(chain: Chain, out: Path, offline_out: Path | None = None) -> str:
    """The chain's offline run (in ``offline_out``, default ``out``: another benchmark's finished
    offline runs can be fine-tuned anew), then its online runs from that checkpoint."""
    started = time.time()
    offline_dir = run_dir(offline_out or out, chain.task, f"{chain.method}-offline", chain.seed)
    if not bench_runs.phase_finished(offline_dir, online=False):
        launch(chain.offline, offline_dir)
    for label, overrides in chain.online.items():
        folder = run_dir(out, chain.task, label, chain.seed)
        if not bench_runs.phase_finished(folder, online=True):
            launch(overrides + [f"init_from={offline_dir}"], folder)
    return f"{chain.task} {chain.method} seed {chain.seed}: {time.time() - started:.0f}s"


def summarise(args: argparse.Namespace, out: Path, command: str, seconds: float) -> dict:
    labels = list(args.methods) + ([NO_WARMUP] if "wsrl" in args.methods else [])
    results: dict = {"command": command, "wall_seconds": seconds, "tasks": {}}
    for task in args.tasks:
        per_label: dict = {}
        curves = {}
        for label in labels:
            runs = [json.loads((run_dir(out, task, label, s) / "eval.json").read_text()) for s in args.seeds]
            offline = [r["before"]["normalized_score"] for r in runs]
            online = [r["after"]["normalized_score"] for r in runs]
            per_label[label] = {"offline_end": offline, "online_end": online}
            curves[label] = [bench_runs.online_curve(r["history"], args.eval_every, args.online_steps) for r in runs]
        results["tasks"][task] = per_label
        xlabel = "online environment steps"
        plot_seed_curves(curves, out / f"{task}_online.png", f"offline-to-online on {task}", xlabel)
        if "wsrl" in args.methods and "calql" in args.methods:
            focus = {k: curves[k] for k in ("wsrl", NO_WARMUP, "calql")}
            plot_seed_curves(
                {"WSRL (warm-up, no offline data)": focus["wsrl"],
                 "no warm-up, no offline data": focus[NO_WARMUP],
                 "Cal-QL (keeps offline data, 50/50)": focus["calql"]},
                out / f"{task}_wsrl_warmup.png",
                f"WSRL warm-up on {task} ({len(args.seeds)} seeds)",
                xlabel,
                vlines={"warm-up ends": args.warmup_steps},
            )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def write_markdown(results: dict, args: argparse.Namespace, out: Path) -> None:
    fmt = bench_runs.mean_std
    lines = [
        "# Offline-to-online benchmark",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Budgets (scaled for 2 CPU cores): {args.offline_steps} offline updates, {args.online_steps} online "
        f"env steps, WSRL warm-up {args.warmup_steps} steps, networks {args.width}-{args.width}, "
        f"{args.cql_actions} CQL actions per source; {len(args.seeds)} seeds; "
        f"wall clock {results['wall_seconds'] / 60:.0f} min.",
        "Normalised score: 100 * (return - random) / (expert - random); "
        "on pointmaze-umaze it is the success rate in %.",
        "",
    ]
    for task, per_label in results["tasks"].items():
        lines += [f"## {task}", "", "| method | offline end | online end | per seed (offline -> online) |",
                  "| --- | ---: | ---: | --- |"]
        for label, r in per_label.items():
            seeds = ", ".join(f"{a:.0f} -> {b:.0f}" for a, b in zip(r["offline_end"], r["online_end"]))
            lines.append(f"| {label} | {fmt(r['offline_end'])} | {fmt(r['online_end'])} | {seeds} |")
        lines += ["", f"![online curves]({task}_online.png)", ""]
        if (out / f"{task}_wsrl_warmup.png").is_file():
            lines += [f"![WSRL warm-up]({task}_wsrl_warmup.png)", ""]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["pointmaze-umaze", "hopper-medium"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    add_run_arguments(parser, offline_steps=2000, online_steps=5000, warmup_steps=1000, eval_every=500)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/o2o")
    args = parser.parse_args(argv)
    command = bench_runs.command_line("rlft.scripts.benchmark_o2o", argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost = {"wsrl": 0, "e2o": 1, "calql": 2, "spot": 3, "iql": 4}  # tasks in order, expensive chains first
    chains = sorted(build_chains(args), key=lambda c: (args.tasks.index(c.task), cost[c.method], c.seed))
    started = time.time()
    bench_runs.run_parallel(lambda c: run_chain(c, out), chains, args.workers)
    results = summarise(args, out, command, time.time() - started)
    write_markdown(results, args, out)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
