"""Benchmark: RL for token-action VLAs on this CPU -- RL4VLA's generalisation table and
SimpleVLA-RL's one-demonstration cold start, several seeds.

For each task and seed (``vla-babyai-<level>``; a tiny LLaVA, ``policies/tiny_lm.py``):

1. **SFT** on the BabyAI bot's demonstrations: ``rlft experiment=vla/ppo/<task> loop.iterations=0``
   (its ``model/`` is the SFT policy);
2. **SFT -> PPO** (RL4VLA's recipe, ``experiment=vla/ppo/<task>``) and **SFT -> GRPO**
   (SimpleVLA-RL's, ``experiment=vla/grpo/<task>``; ``--methods ... ire`` adds iRe-VLA), all
   ``init_from`` that SFT run, for the same
   number of iterations of 64 episodes (GRPO's dynamic sampling may collect more: the table also
   reads every run at the smallest env-step count all runs reached);
3. **one demonstration -> GRPO**: SFT on a single bot episode, then GRPO (``--one-demo``);
4. every final policy (and the SFT policy) evaluated on the training split and on the
   ``semantic``, ``visual`` and ``execution`` splits (:func:`rlft.runtime.text_train.evaluate_saved`),
   with actions sampled at temperature 0.6 as RL4VLA evaluates (``--eval-temperature 0``: greedy).

RL4VLA's claims (arXiv 2505.19789, Sec. 4-5): RL after SFT improves semantic and execution
generalisation more than SFT alone, keeps visual robustness, and PPO beats GRPO. SimpleVLA-RL's
(arXiv 2509.09674, Sec. 5): one demonstration plus RL with binary success approaches SFT on all
demonstrations. Runs are ``rlft`` commands with one torch thread (``--workers`` at a time);
finished runs and evaluations are skipped, so an interrupted benchmark continues. Writes
``results.md``, ``results.json``, ``<task>.png`` (success against env steps) to ``<out>``.

    python -m rlft.scripts.benchmark_vla --tasks vla-babyai-gotoobj vla-babyai-gotolocal --seeds 0 1 2 --one-demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs

SPLITS = ("train", "semantic", "visual", "execution")
RL_METHODS = ("ppo", "grpo", "ire")
ONE_DEMO = "one demo -> grpo"


def run_dir(out: Path, task: str, label: str, seed: int) -> Path:
    return out / "runs" / task / label.replace(" ", "").replace(">", "") / f"seed{seed}"


def split_task(task: str, split: str) -> str:
    return task if split == "train" else f"{task}-{split}"


def level(task: str) -> str:
    """``vla-babyai-gotoobj`` -> ``babyai-gotoobj`` (the experiment file's name)."""
    return task.removeprefix("vla-")


def run_chain(job: tuple[str, int], args: argparse.Namespace, out: Path) -> str:
    """SFT, then each RL method from it, then the one-demo run, then the split evaluations."""
    task, seed = job
    started = time.time()
    common = [f"seed={seed}", "threads=1", "progress=false", f"loop.iterations={args.iterations}",
              f"loop.eval_every={args.eval_every}", f"loop.checkpoint_every={args.eval_every}", *args.overrides]
    sft = run_dir(out, task, "sft", seed)
    if not bench_runs.phase_finished(sft, online=False):
        bench_runs.launch([f"experiment=vla/ppo/{level(task)}", *common, "loop.iterations=0"], sft)
    runs = {"sft": sft}
    for method in args.methods:
        folder = run_dir(out, task, f"sft -> {method}", seed)
        if not bench_runs.phase_finished(folder, online=True):
            bench_runs.launch([f"experiment=vla/{method}/{level(task)}", *common, f"init_from={sft}"], folder)
        runs[f"sft -> {method}"] = folder
    if args.one_demo:
        folder = run_dir(out, task, ONE_DEMO, seed)
        if not bench_runs.phase_finished(folder, online=True):
            bench_runs.launch([f"experiment=vla/grpo/{level(task)}", *common, "sft.episodes=1"], folder)
        runs[ONE_DEMO] = folder
    for folder in runs.values():
        evaluate_splits(folder, task, args.eval_episodes, args.eval_temperature)
    return f"{task} seed {seed}: {time.time() - started:.0f}s"


def evaluate_splits(folder: Path, task: str, episodes: int, temperature: float | None) -> dict[str, float]:
    """Success of a run's final ``model/`` on every split (sampled at ``temperature``, or greedy),
    cached in ``splits.json``."""
    from rlft.runtime.text_train import evaluate_saved

    cache = folder / "splits.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    success = {split: evaluate_saved(folder / "model", {"task": split_task(task, split)}, episodes,
                                     temperature=temperature).success_rate for split in SPLITS}
    cache.write_text(json.dumps(success, indent=2))
    return success


def labels(args: argparse.Namespace) -> list[str]:
    return ["sft", *(f"sft -> {m}" for m in args.methods), *([ONE_DEMO] if args.one_demo else [])]


def summarise(args: argparse.Namespace, out: Path, command: str, seconds: float) -> dict:
    results: dict = {"command": command, "wall_seconds": seconds, "tasks": {}}
    for task in args.tasks:
        folders = {label: [run_dir(out, task, label, s) for s in args.seeds] for label in labels(args)}
        evals = {label: [json.loads((f / "eval.json").read_text()) for f in fs] for label, fs in folders.items()}
        rl = [label for label in folders if label != "sft"]
        budget = min(r["step"] for label in rl for r in evals[label]) if rl else 0
        per_label = {}
        for label, fs in folders.items():
            splits = [json.loads((f / "splits.json").read_text()) for f in fs]
            row = {split: [100 * s[split] for s in splits] for split in SPLITS}
            row["env_steps"] = [r["step"] for r in evals[label]]
            if label != "sft":
                row["at_budget"] = [100 * float(bench_runs.curve(r["history"], np.array([budget]), "success_rate")[1][0])
                                    for r in evals[label]]
            row["minutes"] = [bench_runs.run_minutes(f) for f in fs]
            per_label[label] = row
        grid = np.linspace(0, max(r["step"] for label in rl for r in evals[label]), 41) if rl else np.zeros(1)
        curves = {label: [(grid, 100 * bench_runs.curve(r["history"], grid, "success_rate")[1]) for r in evals[label]]
                  for label in rl}
        sft_all = float(np.mean(per_label["sft"]["train"]))
        plot_seed_curves(curves, out / f"{task}.png", f"{task}: tiny VLA, SFT then RL ({len(args.seeds)} seeds)",
                         "environment steps", "success rate %", hlines={"SFT on all demonstrations": sft_all})
        results["tasks"][task] = {"budget": budget, "rows": per_label}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def write_markdown(results: dict, args: argparse.Namespace, out: Path) -> None:
    fmt = bench_runs.mean_std
    lines = ["# Token-action VLAs: SFT -> PPO / GRPO, and generalisation", "",
             f"Command: `{results['command']}` ({results['wall_seconds'] / 60:.0f} min, {args.workers} chains at a "
             "time on 2 CPU cores, one torch thread each)", "",
             f"Model: a tiny LLaVA (one-layer CLIP tower, 49 image tokens, 2-layer 64-wide Llama; "
             f"`policies/tiny_lm.py`) with 7 action tokens. SFT: the experiment's demonstrations of BabyAI's bot; RL: "
             f"{args.iterations} iterations of 64 episodes. Success in %: actions "
             + (f"sampled at temperature {args.eval_temperature}" if args.eval_temperature else "greedy")
             + f", {args.eval_episodes} episodes per split, mean ± std over {len(args.seeds)} seeds.", ""]
    for task, data in results["tasks"].items():
        lines += [f"## {task}", "", "| policy | " + " | ".join(SPLITS) + f" | at {data['budget']} env steps | "
                  "env steps | minutes |", "| --- |" + " ---: |" * (len(SPLITS) + 3)]
        for label, row in data["rows"].items():
            at = fmt(row["at_budget"]) if "at_budget" in row else "--"
            lines.append(f"| {label} | " + " | ".join(fmt(row[s]) for s in SPLITS)
                         + f" | {at} | {np.mean(row['env_steps']):.0f} | {np.mean(row['minutes']):.1f} |")
        lines += ["", f"![success against env steps]({task}.png)", ""]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["vla-babyai-gotoobj", "vla-babyai-gotolocal"])
    parser.add_argument("--methods", nargs="+", default=["ppo", "grpo"], choices=RL_METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=64, help="evaluation episodes per split")
    parser.add_argument("--eval-temperature", type=float, default=0.6,
                        help="sampling temperature of the split evaluations (RL4VLA's 0.6); 0: greedy")
    parser.add_argument("--one-demo", action="store_true", help="also GRPO after SFT on one demonstration")
    parser.add_argument("--out", default="benchmarks/vla")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra rlft overrides for every run")
    args = parser.parse_args(argv)
    args.eval_temperature = args.eval_temperature or None
    jobs = [(task, seed) for task in args.tasks for seed in args.seeds]
    bench_runs.run_and_report("rlft.scripts.benchmark_vla", argv, args, jobs, run_chain, summarise, write_markdown)


if __name__ == "__main__":
    main()
