"""Where an online step of the offline-to-online runner spends its time, piece by piece, on one thread.

Builds an experiment's env, agent and replay buffer as the runner does (``rollout.backend=local``)
and times, each over ``--steps`` repetitions: the env step alone, the exploration action alone, one
``ReplayBuffer.add``, a whole collection round (act, step, store, episode bookkeeping:
``LocalCollector``), an update alone, and a collection round followed by ``utd`` updates (what
the online phase does per step), the last two in alternating blocks. The script uses only APIs
that rlft had before issue 35, so the 'before' install can run it too:

    python -m rlft.scripts.benchmark_online_step --out benchmarks/update_loop/online_step.md
    /tmp/rlft-before-venv/bin/python scripts/benchmark_online_step.py --label before \\
        --out benchmarks/update_loop/online_step_before.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from hydra import compose, initialize_config_module

import rlft
from rlft.common.machine import cpu_description
from rlft.agents.online import LocalCollector
from rlft.agents.registry import make_agent
from rlft.agents.replay_buffer import ReplayBuffer
from rlft.envs.factory import make_env
from rlft.runtime.experiment import Experiment
from rlft.scripts import bench_runs


def microseconds(fn: Callable[[], object], repeats: int) -> float:
    """Mean time of ``fn`` in µs over ``repeats`` calls, after ``repeats // 10`` warm-up calls."""
    for _ in range(max(1, repeats // 10)):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/update_loop/online_step.md")
    parser.add_argument("--experiment", default="o2o/iql/hopper-weak")
    parser.add_argument("--steps", type=int, default=2000, help="repetitions of each timed piece")
    parser.add_argument("--label", default="rlft as installed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with initialize_config_module("rlft.configs", version_base=None):
        cfg = compose("config", [f"experiment={args.experiment}"])
    settings = Experiment.settings(cfg)  # the typed trainer and agent configs, as the runner reads them
    env = make_env(cfg.env)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = make_agent(cfg.agent.name, settings["agent"], obs_dim, action_dim)
    agent.start_online()
    buffer = ReplayBuffer(obs_dim, action_dim, 20 * args.steps)
    collector = LocalCollector(env, buffer, 0, torch.device("cpu"))
    batch_size, utd = settings["trainer"].batch_size, settings["trainer"].utd

    def collect() -> None:
        collector.start(agent, 1, agent.num_updates)
        collector.finish()

    def update() -> None:
        agent.update(buffer.sample(batch_size))

    def online_step() -> None:
        collect()
        for _ in range(utd):
            update()

    for _ in range(max(1000, batch_size)):
        collect()
    probe = make_env(cfg.env, seed=1)
    action = probe.action_space.sample()

    def env_step() -> None:
        _, _, terminated, truncated, _ = probe.step(action)
        if terminated or truncated:
            probe.reset()

    obs = torch.as_tensor(collector.stepper.obs, dtype=torch.float32).unsqueeze(0)
    row = (np.zeros(obs_dim), np.zeros(action_dim), np.float32(0.0), np.zeros(obs_dim), np.float32(0.0))
    pieces = {
        "env step (wrapped as the runner makes it)": microseconds(env_step, args.steps),
        "exploration action, one observation": microseconds(lambda: agent.act(obs, deterministic=False), args.steps),
        "ReplayBuffer.add, one transition": microseconds(lambda: buffer.add(*row), args.steps),
        "collection round (act, step, store, episode bookkeeping)": microseconds(collect, args.steps),
    }
    updates, steps = 0.0, 0.0
    blocks = 10
    for _ in range(blocks):  # alternating blocks: both see the same machine
        updates += microseconds(update, args.steps // blocks // 4)
        steps += microseconds(online_step, args.steps // blocks // 4)
    pieces[f"update alone (batch {batch_size})"] = updates / blocks
    pieces[f"online step: collection round + {utd} update(s)"] = steps / blocks
    ratio = utd * pieces[f"update alone (batch {batch_size})"] / steps * blocks
    lines = [f"# One online step of `rlft experiment={args.experiment}`: {args.label}", "",
             f"Produced by `{bench_runs.command_line('rlft.scripts.benchmark_online_step', argv)}` run by "
             f"`{sys.executable}` with rlft from `{Path(rlft.__file__).resolve().parent}`, on "
             f"{cpu_description()}, torch {torch.__version__}, one thread.", "",
             "| piece | µs |", "| --- | ---: |", *[f"| {name} | {us:.0f} |" for name, us in pieces.items()], "",
             f"An online step runs at {100 * ratio:.0f}% of the rate of the updates it makes.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
