"""Benchmark: when do Ray rollout workers pay? Environment steps per second of PPO collection in
this process (``rollout.backend=local``) against Ray workers (``rollout.backend=ray``) at 1/2/4
workers, the same number of sub-envs in all, plus the fixed cost of one Ray rollout call.

Each measurement is what an iteration of the BC -> PPO pipeline does: ``PPO.collect`` of
``--agent-steps`` steps in every sub-env (policy sampling included), and for Ray the weights'
round trip and the merge of the rollout arrays. The per-call overhead is the time of a one-step
Ray rollout minus a one-step local one. The policy is the task's family at its default size.

    python -m rlft.scripts.benchmark_scaling --tasks hopper mw-push --envs 8 --workers 1 2 4

Writes ``<out>/results.md`` and ``results.json`` (default ``benchmarks/scaling``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from rlft.common.machine import cpu_description
from rlft.agents.families import FamilyConfig, build_actor, build_base
from rlft.agents.ppo import PPO, PPOConfig
from rlft.runtime.finetune import RolloutEnvs
from rlft.runtime.rollout_workers import RayRollouts, RolloutConfig
from rlft.scripts import bench_runs

FAMILIES = {"hopper": "gaussian", "mw-push": "dppo", "pusht": "dppo"}
PIXELS = {"pusht": {"image_shape": (64, 64, 3), "state_dim": 2}}  # configs/task/pusht.yaml


def setup(task: str, envs: int) -> tuple[PPO, RolloutEnvs]:
    cfg = FamilyConfig(family=FAMILIES.get(task, "gaussian"), ft_steps=10, **PIXELS.get(task, {}))
    probe = RolloutEnvs({"task": task}, cfg, None)(1, chunk=1)  # the bare env: its own action size
    obs_dim, action_dim = probe.single_observation_space.shape[0], probe.single_action_space.shape[0]
    probe.close()
    base = build_base(cfg, obs_dim, action_dim)
    make_env = RolloutEnvs({"task": task}, cfg, base)
    torch.manual_seed(0)
    ppo = PPO(build_actor(cfg, base, obs_dim, action_dim), obs_dim, PPOConfig(), envs)
    return ppo, make_env


def local_rate(ppo: PPO, make_env: RolloutEnvs, envs: int, steps: int) -> tuple[float, float]:
    """(env steps/s, seconds of a one-step collection) in this process."""
    env = make_env(envs)
    seeds = list(range(envs))
    ppo.collect(env, env.reset(seed=seeds)[0], 2)  # warm-up
    start = time.perf_counter()
    ppo.collect(env, env.reset(seed=seeds)[0], 1)
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    rollout = ppo.collect(env, env.reset(seed=seeds)[0], steps)[0]
    env.close()
    return rollout.env_steps / (time.perf_counter() - start), one_s


def ray_rate(ppo: PPO, make_env: RolloutEnvs, envs: int, workers: int, steps: int) -> tuple[float, float]:
    """(env steps/s, seconds of a one-step rollout call) with ``workers`` Ray workers."""
    cpus = min(1.0, (os.cpu_count() or 1) / workers)  # more workers than cores share them
    rollouts = RayRollouts(RolloutConfig(backend="ray", workers=workers, worker_cpus=cpus), make_env, ppo, envs, seed=0)
    seeds = list(range(envs))
    rollouts.collect(ppo, seeds, 2, 0)  # warm-up
    start = time.perf_counter()
    rollouts.collect(ppo, seeds, 1, 1)
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    rollout = rollouts.collect(ppo, seeds, steps, 2)
    rate = rollout.env_steps / (time.perf_counter() - start)
    rollouts.close()
    return rate, one_s


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/scaling")
    parser.add_argument("--tasks", nargs="+", default=["hopper", "mw-push"])
    parser.add_argument("--envs", type=int, default=8, help="sub-envs in all (split over the workers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--agent-steps", type=int, default=200, help="agent steps per sub-env per measurement")
    args = parser.parse_args(argv)
    import ray

    command = bench_runs.command_line("rlft.scripts.benchmark_scaling", argv)
    torch.set_num_threads(1)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    results: dict = {"command": command, "tasks": {}}
    for task in args.tasks:
        ppo, make_env = setup(task, args.envs)
        rate, one = local_rate(ppo, make_env, args.envs, args.agent_steps)
        rows = {"local": {"steps_per_s": rate, "one_step_s": one}}
        for workers in args.workers:
            rate, one_ray = ray_rate(ppo, make_env, args.envs, workers, args.agent_steps)
            rows[f"ray x{workers}"] = {"steps_per_s": rate, "one_step_s": one_ray, "overhead_s": one_ray - one}
        results["tasks"][task] = rows
        print(task, {k: round(v["steps_per_s"]) for k, v in rows.items()}, flush=True)
    ray.shutdown()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# Rollouts in this process against Ray workers", "", f"Command: `{command}`", "",
             f"{cpu_description()}, torch {torch.__version__} "
             f"with one thread per process; {args.envs} sub-envs in all, {args.agent_steps} agent steps each. "
             "Overhead: a one-step Ray rollout call minus a one-step local collection.", "",
             "| task (policy) | backend | env steps/s | vs local | overhead per call |",
             "| --- | --- | ---: | ---: | ---: |"]
    for task, rows in results["tasks"].items():
        local = rows["local"]["steps_per_s"]
        for name, row in rows.items():
            overhead = f"{1e3 * row['overhead_s']:.0f} ms" if "overhead_s" in row else ""
            lines.append(f"| {task} ({FAMILIES.get(task, 'gaussian')}) | {name} | {row['steps_per_s']:.0f} "
                         f"| {row['steps_per_s'] / local:.2f}x | {overhead} |")
    (out / "results.md").write_text("\n".join(lines + [""]))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
