"""Benchmark: behaviour cloning, then DPPO, residual PPO and Gaussian PPO fine-tuning, several seeds.

For each task and seed: ``dppo`` clones a diffusion policy from the task's demonstrations
and fine-tunes it; ``residual`` (ResiP) starts from *the same* cloned diffusion policy
(``init_from`` the DPPO run) and trains a residual over it (``residual-paper-std``: the same
with ResiP's initial log std -1.5 instead of rlft's -0.5); ``gaussian`` clones a Gaussian
MLP on the same demonstrations and fine-tunes it with PPO; ``gaussian-scratch`` runs PPO
from a random Gaussian policy. Runs are ``rlft experiment=finetune/...`` commands in parallel workers (one
torch thread each); finished runs are skipped and interrupted ones resumed. Writes to ``<out>``:

- ``results.md`` / ``results.json``: success rate (or normalised score) of the cloned policy
  and after fine-tuning, mean ± std over seeds and per seed, with the env-step budget and
  the command that produced them;
- ``<task>.png``: score against environment steps for every method (mean ± std over seeds).

    python -m rlft.scripts.benchmark_finetune --tasks mw-push mw-pick-place --seeds 0 1 2
    python -m rlft.scripts.benchmark_finetune --tasks hopper-medium --methods dppo --dppo-method dppo_gym
    python -m rlft.scripts.benchmark_finetune --methods residual --bc-from benchmarks/finetune \
        --overrides method.policy.residual_scale=0.2 --out benchmarks/finetune_residual_scale   # a variant, same BC
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs

METHODS = ("dppo", "residual", "residual-paper-std", "gaussian", "gaussian-scratch")
METHOD_OVERRIDES = {
    "dppo": [],  # the method config comes from --dppo-method
    "residual": ["method=residual"],
    "residual-paper-std": ["method=residual", "method.policy.init_log_std=-1.5"],  # ResiP's own exploration
    "gaussian": ["method=gaussian"],
    "gaussian-scratch": ["method=gaussian", "method.policy.bc_init=false"],
}


def run_dir(out: Path, task: str, method: str, seed: int) -> Path:
    return out / "runs" / task / method / f"seed{seed}"


def overrides(method: str, task: str, seed: int, args: argparse.Namespace) -> list[str]:
    out = [
        f"experiment=finetune/dppo/{task}",
        f"method={args.dppo_method}" if method == "dppo" else "",
        *METHOD_OVERRIDES[method],
        f"seed={seed}",
        "threads=1",
        f"loop.iterations={args.iterations}",
        f"loop.num_envs={args.num_envs}",
        f"loop.eval_every={args.eval_every}",
        f"loop.eval_episodes={args.eval_episodes}",
        f"loop.checkpoint_every={args.eval_every}",
        f"method.bc.steps={args.bc_steps}",
        "progress=false",
        *args.overrides,
    ]
    return [o for o in out if o]


def run_task_seed(task: str, seed: int, args: argparse.Namespace, out: Path) -> str:
    """DPPO first (its cloned diffusion policy starts the residual run), then the others."""
    started = time.time()
    done = lambda data: data["after"] is not None  # noqa: E731
    dppo_dir = run_dir(Path(args.bc_from) if args.bc_from else out, task, "dppo", seed)
    for method in args.methods:
        folder = run_dir(out, task, method, seed)
        if bench_runs.finished(folder, done):
            continue
        residual = method.startswith("residual")
        extra = [f"init_from={dppo_dir}"] if residual else []
        if residual and not bench_runs.finished(dppo_dir, done):
            raise RuntimeError(f"the residual run needs the DPPO run's cloned policy in {dppo_dir}")
        bench_runs.launch(overrides(method, task, seed, args) + extra, folder)
    return f"{task} seed {seed}: {time.time() - started:.0f}s"


def summarise(args: argparse.Namespace, out: Path, command: str, seconds: float) -> dict:
    results: dict = {"command": command, "wall_seconds": seconds, "tasks": {}}
    for task in args.tasks:
        runs = {
            m: [json.loads((run_dir(out, task, m, s) / "eval.json").read_text()) for s in args.seeds]
            for m in args.methods
        }
        budget = max(r["step"] for rs in runs.values() for r in rs)
        grid = np.linspace(0, budget, 41)
        per_method, curves = {}, {}
        for method, rs in runs.items():
            per_method[method] = {
                "bc": [r["before"]["normalized_score"] for r in rs],
                "final": [r["after"]["normalized_score"] for r in rs],
                "env_steps": [r["step"] for r in rs],
                "minutes": [bench_runs.run_minutes(run_dir(out, task, method, s)) for s in args.seeds],
            }
            curves[method] = [bench_runs.curve(r["history"], grid) for r in rs]  # the cloned policy at step 0
        results["tasks"][task] = per_method
        plot_seed_curves(
            curves,
            out / f"{task}.png",
            f"fine-tuning on {task} ({len(args.seeds)} seeds)",
            "environment steps",
            "success rate % / normalised score",
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def write_markdown(results: dict, args: argparse.Namespace, out: Path) -> None:
    fmt = bench_runs.mean_std
    lines = [
        "# Fine-tuning benchmark: behaviour cloning -> DPPO / residual PPO / Gaussian PPO",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Budget per run: behaviour cloning {args.bc_steps} steps, then {args.iterations} PPO iterations in "
        f"{args.num_envs} envs; evaluation {args.eval_episodes} episodes; {len(args.seeds)} seeds; "
        f"{args.workers} runs at a time on 2 CPU cores; minutes per run include behaviour cloning (DPPO) "
        "and evaluations.",
        "Score: success rate in % on Meta-World (sparse success reward), D4RL-normalised return on locomotion. "
        "`residual` fine-tunes the very policy `dppo` cloned (`bc` columns match); `gaussian` clones its own MLP.",
        "",
    ]
    for task, per_method in results["tasks"].items():
        lines += [
            f"## {task}",
            "",
            "| method | cloned (BC) | after fine-tuning | env steps | minutes per run | per seed (BC -> final) |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for method, r in per_method.items():
            seeds = ", ".join(f"{a:.0f} -> {b:.0f}" for a, b in zip(r["bc"], r["final"], strict=True))
            lines.append(
                f"| {method} | {fmt(r['bc'])} | {fmt(r['final'])} | {int(np.mean(r['env_steps']))} "
                f"| {np.mean(r['minutes']):.1f} | {seeds} |"
            )
        lines += ["", f"![curves]({task}.png)", ""]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mw-push", "mw-pick-place"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--dppo-method", default="dppo", help="method config of the DPPO runs (dppo_gym on locomotion)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--bc-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/finetune")
    parser.add_argument("--bc-from", default=None, help="benchmark folder whose DPPO runs start the residual runs")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra rlft overrides for every run")
    args = parser.parse_args(argv)
    residuals = [i for i, m in enumerate(args.methods) if m.startswith("residual")]
    if residuals and not args.bc_from and ("dppo" not in args.methods or min(residuals) < args.methods.index("dppo")):
        parser.error("residual runs start from a DPPO run's cloned policy: list dppo before residual, or --bc-from")
    command = bench_runs.command_line("rlft.scripts.benchmark_finetune", argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    jobs = [(task, seed) for task in args.tasks for seed in args.seeds]
    bench_runs.run_parallel(lambda job: run_task_seed(*job, args, out), jobs, args.workers)
    results = summarise(args, out, command, time.time() - started)
    write_markdown(results, args, out)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
