"""Sanity check against a peer on the same machine: rlft's SAC or PPO from scratch on Hopper-v5
against stable-baselines3's with the same hyperparameters, several seeds each.

* ``--algo sac`` (100k steps): SAC's Table 1 settings (lr 3e-4, batch 256, two 256-256 critics,
  tau 0.005, gamma 0.99, automatic temperature from 1.0 with target entropy ``-|A|``, entropy in
  the backup, one update per step after ``--learning-starts`` steps); rlft runs
  ``experiment=sac-scratch``. Known differences: during the first ``--learning-starts`` steps SB3
  acts uniformly at random and rlft with its initial policy; SB3 clamps the policy's log-std to
  [-20, 2], rlft to [-5, 2].
* ``--algo ppo`` (1M steps): rl-baselines3-zoo's tuned PPO for Hopper (``hyperparams/ppo.yml``;
  the values are in ``configs/experiment/finetune/gaussian/hopper-scratch.yaml``, which rlft runs),
  observations and rewards normalised by running statistics (SB3: ``VecNormalize``, gamma 0.999).
  Known differences: ``VecNormalize`` also clips normalised rewards at 10, rlft does not; rlft's
  critic has its own learning rate (set equal to the actor's).

One torch thread per run. ``--workers 2`` runs a seed's rlft and SB3 runs side by side, one core
each, so both wall-clocks are measured under the same load. Both are evaluated every
``--eval-every`` steps by rlft's evaluator: 10 deterministic episodes reset with the same seeds.

    python -m rlft.scripts.benchmark_sb3 --algo sac --seeds 0 1 2
    python -m rlft.scripts.benchmark_sb3 --algo ppo --seeds 0 1 2

rlft runs are ``rlft`` commands; SB3 runs are subprocesses of this script (``--sb3-run``).
Finished runs are skipped. Writes ``results.md``, ``results.json`` and ``returns.png`` to ``<out>``
(``benchmarks/<algo>_sb3`` unless given).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs

EVAL_SEED = 1_000_000  # the evaluators' default eval_seed: both learners meet the same evaluation episodes
PPO_ROLLOUT = 512  # rl-zoo's n_steps for Hopper, one env: environment steps per PPO iteration
DEFAULTS = {"sac": {"steps": 100_000, "eval_every": 5_000}, "ppo": {"steps": 1_000_000, "eval_every": 10_240}}


def rlft_overrides(seed: int, args: argparse.Namespace) -> list[str]:
    common = [f"seed={seed}", "progress=false", "threads=1"]
    if args.algo == "sac":
        return ["experiment=sac-scratch", *common, f"trainer.online_steps={args.steps}",
                f"trainer.warmup_steps={args.learning_starts}", f"trainer.eval_every={args.eval_every}",
                "trainer.eval_episodes=10", f"trainer.log_every={args.eval_every}"]
    return ["experiment=finetune/gaussian/hopper-scratch", *common, f"loop.iterations={args.steps // PPO_ROLLOUT}",
            f"loop.eval_every={max(args.eval_every // PPO_ROLLOUT, 1)}", "loop.eval_episodes=10", "loop.eval_envs=10",
            f"loop.eval_seed={EVAL_SEED}"]


def sb3_model(seed: int, args: argparse.Namespace):
    """The SB3 learner with the settings rlft's run uses, and the observation normaliser evaluation needs."""
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from torch import nn

    from rlft.envs.factory import make_env

    if args.algo == "sac":
        model = SAC("MlpPolicy", make_env({"task": "hopper"}), learning_rate=3e-4, buffer_size=args.steps,
                    learning_starts=args.learning_starts, batch_size=256, tau=0.005, gamma=0.99, train_freq=1,
                    gradient_steps=1, ent_coef="auto_1.0", target_entropy="auto",
                    policy_kwargs={"net_arch": [256, 256]}, seed=seed, device="cpu", verbose=0)
        return model, lambda obs: obs
    env = VecNormalize(DummyVecEnv([lambda: make_env({"task": "hopper"})]), gamma=0.999)
    model = PPO("MlpPolicy", env, learning_rate=9.80828e-5, n_steps=PPO_ROLLOUT, batch_size=32, n_epochs=5,
                gamma=0.999, gae_lambda=0.99, clip_range=0.2, ent_coef=0.00229519, vf_coef=0.835671,
                max_grad_norm=0.7, policy_kwargs={"log_std_init": -2.0, "ortho_init": False,
                                                  "activation_fn": nn.ReLU, "net_arch": {"pi": [256, 256], "vf": [256, 256]}},
                seed=seed, device="cpu", verbose=0)
    return model, env.normalize_obs  # frozen statistics: normalize_obs never updates them


def sb3_run(seed: int, args: argparse.Namespace, folder: Path) -> None:
    """One SB3 run, evaluated like rlft's; writes ``folder/eval.json`` (history of returns)."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from rlft.envs.factory import make_vector_env
    from rlft.envs.registry import get_task
    from rlft.runtime.evaluation import evaluate

    torch.set_num_threads(1)
    task = get_task("hopper")
    eval_env = make_vector_env({"task": "hopper"}, 10)
    model, normalize = sb3_model(seed, args)
    history: list[dict] = []
    started = time.perf_counter()

    def record(step: int) -> None:
        act = lambda obs: model.predict(normalize(obs), deterministic=True)[0]  # noqa: E731
        result = evaluate(act, eval_env, 10, EVAL_SEED, task.ref_min_score, task.ref_max_score)
        history.append({"step": step, "return_mean": result.return_mean, "normalized_score": result.normalized_score,
                        "seconds": time.perf_counter() - started})

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % args.eval_every == 0:
                record(self.num_timesteps)
            return True

    record(0)
    model.learn(args.steps, callback=Evaluate())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps({"history": history, "seconds": time.perf_counter() - started}))


def run_job(learner: str, seed: int, args: argparse.Namespace, out: Path) -> str:
    """One learner's run for one seed, skipped when it has finished."""
    folder = out / "runs" / learner / f"seed{seed}"
    if learner == "rlft" and not bench_runs.phase_finished(folder, online=True):
        bench_runs.launch(rlft_overrides(seed, args), folder)
    elif learner == "sb3" and not (folder / "eval.json").is_file():
        subprocess.run([sys.executable, "-m", "rlft.scripts.benchmark_sb3", "--algo", args.algo, "--sb3-run", str(seed),
                        "--steps", str(args.steps), "--learning-starts", str(args.learning_starts),
                        "--eval-every", str(args.eval_every), "--out", str(out)], check=True,
                        env=bench_runs.single_thread_env())
    return f"{learner} seed {seed} done"


def summarise(args: argparse.Namespace, out: Path, command: str) -> None:
    grid = np.arange(0, args.steps + 1, args.eval_every)
    rlft_runs = [json.loads((out / "runs" / "rlft" / f"seed{s}" / "eval.json").read_text()) for s in args.seeds]
    sb3_runs = [json.loads((out / "runs" / "sb3" / f"seed{s}" / "eval.json").read_text()) for s in args.seeds]
    name = args.algo.upper()
    curves = {f"rlft {name}": [bench_runs.curve(r["history"], grid, "return_mean", np.nan) for r in rlft_runs],
              f"stable-baselines3 {name}": [bench_runs.curve(r["history"], grid, "return_mean", np.nan) for r in sb3_runs]}
    plot_seed_curves(curves, out / "returns.png", f"{name} from scratch on Hopper-v5 ({len(args.seeds)} seeds)",
                     "environment steps", ylabel="evaluation return")
    final = {"rlft": [r["after"]["return_mean"] for r in rlft_runs],
             "sb3": [r["history"][-1]["return_mean"] for r in sb3_runs]}
    minutes = {"rlft": [bench_runs.run_minutes(out / "runs" / "rlft" / f"seed{s}") for s in args.seeds],
               "sb3": [r["seconds"] / 60 for r in sb3_runs]}
    results = {"command": command, "final_return": final, "minutes": minutes}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    fmt = bench_runs.mean_std
    lines = [f"# rlft {name} against stable-baselines3 {name}", "", f"Command: `{command}`", "",
             f"Hopper-v5, {args.steps} environment steps, {len(args.seeds)} seeds, one torch thread per run, "
             f"{args.workers} runs at a time; evaluation: 10 deterministic episodes with the same reset seeds.", "",
             "| learner | final return | per seed | minutes per run |", "| --- | ---: | --- | ---: |"]
    for learner, label in (("rlft", "rlft"), ("sb3", "stable-baselines3")):
        lines.append(f"| {label} | {fmt(final[learner])} | {', '.join(f'{v:.0f}' for v in final[learner])} "
                     f"| {fmt(minutes[learner])} |")
    lines += ["", "![returns](returns.png)", ""]
    (out / "results.md").write_text("\n".join(lines))
    print((out / "results.md").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(DEFAULTS), default="sac")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="environment steps (default: sac 100k, ppo 1M)")
    parser.add_argument("--learning-starts", type=int, default=5_000, help="SAC: random steps before updates")
    parser.add_argument("--eval-every", type=int, help="default: sac 5000, ppo 10240 (20 PPO iterations)")
    parser.add_argument("--workers", type=int, default=2,
                        help="runs at a time (2: each seed's rlft and SB3 runs side by side, one core each)")
    parser.add_argument("--out", help="default: benchmarks/<algo>_sb3")
    parser.add_argument("--sb3-run", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.algo].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = Path(args.out or f"benchmarks/{args.algo}_sb3")
    if args.sb3_run is not None:
        sb3_run(args.sb3_run, args, out / "runs" / "sb3" / f"seed{args.sb3_run}")
        return
    command = bench_runs.command_line("rlft.scripts.benchmark_sb3", argv)
    jobs = [(learner, seed) for seed in args.seeds for learner in ("rlft", "sb3")]
    bench_runs.run_parallel(lambda job: run_job(*job, args, out), jobs, args.workers)
    summarise(args, out, command)


if __name__ == "__main__":
    main()
