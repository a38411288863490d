"""Benchmark: rollout throughput (simulator steps per second) of PPO data collection with one
env versus vectorised envs (in-process and subprocess), policy sampling included.

The policy is what fine-tuning samples from: DPPO's diffusion policy (all denoising steps
per action chunk), the residual family (base chunk + residual each step) or a Gaussian MLP,
at the configured sizes (untrained weights cost the same as trained ones).

    python -m rlft.scripts.benchmark_rollout --tasks mw-push hopper --num-envs 1 8 16 --threads 1
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from rlft.agents.families import FamilyConfig, build_actor, build_base, wrap_env
from rlft.agents.ppo import PPO, PPOConfig
from rlft.envs import make_vector_env
from rlft.scripts import bench_runs


def measure(task: str, family: str, num_envs: int, asynchronous: bool, agent_steps: int) -> float:
    """Simulator steps per second of ``PPO.collect`` over ``agent_steps`` steps per env."""
    pixels = {"image_shape": (64, 64, 3), "state_dim": 2} if task == "pusht" else {}  # configs/task/pusht.yaml
    cfg = FamilyConfig(family=family, ft_steps=10, **pixels)
    probe = make_vector_env({"task": task}, 1)
    obs_dim, action_dim = probe.single_observation_space.shape[0], probe.single_action_space.shape[0]
    probe.close()
    base = build_base(cfg, obs_dim, action_dim)
    actor = build_actor(cfg, base, obs_dim, action_dim)
    env = wrap_env(
        cfg,
        make_vector_env({"task": task}, num_envs, asynchronous=asynchronous, action_chunk=cfg.env_chunk),
        base,
        "cpu",
    )
    ppo = PPO(actor, env.single_observation_space.shape[0], PPOConfig(), num_envs)
    obs, _ = env.reset(seed=list(range(num_envs)))
    ppo.collect(env, obs, 2)  # warm-up (subprocess start, first allocations)
    started = time.perf_counter()
    rollout, _ = ppo.collect(env, obs, agent_steps)
    seconds = time.perf_counter() - started
    env.close()
    return rollout.env_steps / seconds


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/rollout_speed.md")
    parser.add_argument("--tasks", nargs="+", default=["mw-push", "hopper"])
    parser.add_argument("--families", nargs="+", default=["dppo", "residual", "gaussian"])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--env-steps", type=int, default=4000, help="simulator steps per measurement (about)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = bench_runs.command_line("rlft.scripts.benchmark_rollout", argv)
    rows = []
    for task in args.tasks:
        for family in args.families:
            chunk = FamilyConfig(family=family).env_chunk
            single = None
            for n in args.num_envs:
                for asynchronous in [False, True] if n > 1 else [False]:
                    steps = max(4, args.env_steps // (n * chunk))
                    rate = measure(task, family, n, asynchronous, steps)
                    single = rate if n == 1 else single
                    mode = "subprocess" if asynchronous else "in-process"
                    rows.append(
                        {
                            "task": task,
                            "family": family,
                            "num_envs": n,
                            "mode": mode,
                            "steps_per_s": rate,
                            "vs_single": rate / single if single else float("nan"),
                        }
                    )
                    print(
                        f"{task:<10} {family:<9} {n:>3} envs {mode:<11} {rate:8.0f} steps/s "
                        f"({rows[-1]['vs_single']:.2f}x one env)",
                        flush=True,
                    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Rollout throughput: one env vs vectorised envs",
        "",
        f"Command: `{command}`",
        "",
        f"Simulator steps per second of `PPO.collect` (policy sampling included), torch threads: {args.threads}, "
        "2-core CPU. DPPO samples all 20 denoising steps per 4-action chunk; the residual family runs its "
        "diffusion base once per chunk and the residual MLP every step. On pusht (64x64 pixels rendered by "
        "pygame) every network reads the image through its CNN encoder.",
        "",
        "| task | family | envs | vector env | steps/s | vs one env |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    lines += [
        f"| {r['task']} | {r['family']} | {r['num_envs']} | {r['mode']} | {r['steps_per_s']:.0f} | "
        f"{r['vs_single']:.2f}x |"
        for r in rows
    ]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    print(out.read_text())


if __name__ == "__main__":
    main()
