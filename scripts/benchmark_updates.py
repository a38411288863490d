"""Micro-benchmark: gradient updates per second of every off-policy learner on this machine.

Synthetic batches with Hopper's shapes (obs 11, action 3, batch 256); each configuration
runs warm-up updates then times ``--updates`` updates. Writes ``benchmarks/update_speed.md``
with, for the critic ensembles, the cost ratio of 10 critics to 2.

    python -m rlft.scripts.benchmark_updates --threads 1 2

``--divergence-check`` instead times each update with and without the runners' divergence
check (``Runner.check_update``: every update's metrics tested for NaN/inf), alternating blocks
of updates so that both see the same machine, and writes the cost to
``benchmarks/divergence_check.md``:

    python -m rlft.scripts.benchmark_updates --divergence-check --threads 1 --out benchmarks/divergence_check.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from rlft.agents.replay_buffer import Batch
from rlft.agents.sac import SAC, SACConfig
from rlft.agents.td3 import TD3, TD3Config
from rlft.offline.cql import CQL, CQLConfig
from rlft.offline.iql import IQL, IQLConfig
from rlft.offline.spot import SPOT, SPOTConfig
from rlft.policies.mlp import mlp
from rlft.runtime.runner import first_non_finite
from rlft.scripts import bench_runs

WSRL_ENSEMBLE = dict(critic_layer_norm=True, target_reduction="redq", actor_reduction="mean")
PAIRS = {  # configuration -> the one it is compared with, for the cost ratio
    "SAC, 10 LN critics, batched (WSRL online)": "SAC, 2 LN critics",
    "SAC, 10 LN critics, Python loop": "SAC, 10 LN critics, batched (WSRL online)",
    "Cal-QL, 10 LN critics (WSRL offline)": "Cal-QL, 2 LN critics",
}


class LoopedCriticEnsemble(torch.nn.Module):
    """The unbatched reference: ``num_critics`` separate MLPs run one after another."""

    def __init__(self, obs_dim: int, action_dim: int, num_critics: int, hidden: tuple[int, ...]):
        super().__init__()
        self.num_critics = num_critics
        self.members = torch.nn.ModuleList(
            mlp(obs_dim + action_dim, 1, hidden, layer_norm=True) for _ in range(num_critics)
        )

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([m(x).squeeze(-1) for m in self.members])


def looped_sac(num_critics: int) -> SAC:
    agent = SAC(11, 3, SACConfig(num_critics=num_critics, **WSRL_ENSEMBLE))
    agent.critic = LoopedCriticEnsemble(11, 3, num_critics, agent.cfg.hidden)
    agent.critic_target = copy.deepcopy(agent.critic).requires_grad_(False)
    agent.critic_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=agent.cfg.critic_lr)
    return agent


def updates_per_second(update: Callable[[Batch], dict], batch: Batch, updates: int) -> float:
    for _ in range(20):
        update(batch)
    start = time.perf_counter()
    for _ in range(updates):
        update(batch)
    return updates / (time.perf_counter() - start)


def paired_rates(update: Callable[[Batch], dict], batch: Batch, updates: int, blocks: int = 10) -> tuple[float, float]:
    """Updates per second without and with the divergence check, timed in alternating blocks."""
    for _ in range(20):
        update(batch)
    seconds = {False: 0.0, True: 0.0}
    per_block = max(1, updates // blocks)
    for _ in range(blocks):
        for checked in (False, True):
            start = time.perf_counter()
            for _ in range(per_block):
                metrics = update(batch)
                if checked and first_non_finite(metrics) is not None:
                    raise RuntimeError("the benchmark's learner diverged")
            seconds[checked] += time.perf_counter() - start
    return per_block * blocks / seconds[False], per_block * blocks / seconds[True]


def selected_updates(configs: dict, args: argparse.Namespace) -> Iterator[tuple[str, int, Callable[[Batch], dict]]]:
    """(configuration, torch threads, update function) for every configuration ``--only`` keeps,
    with torch set to that many threads and a fresh agent built for each."""
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (make, vae_only) in configs.items():
            if args.only and not any(key in name for key in args.only):
                continue
            agent = make()
            yield name, threads, (agent.update_vae if vae_only else agent.update)


def check_seconds(metrics: dict, calls: int = 20_000) -> float:
    """Seconds one divergence check of ``metrics`` takes (the mean of ``calls``)."""
    start = time.perf_counter()
    for _ in range(calls):
        first_non_finite(metrics)
    return (time.perf_counter() - start) / calls


def divergence_check_report(configs: dict, args: argparse.Namespace, batch: Batch, command: str) -> list[str]:
    lines = ["# Cost of the divergence check", "",
             f"Produced by `{command}` on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"batch {args.batch_size}, Hopper shapes. Every update's metrics go through "
             "`rlft.runtime.runner.first_non_finite` (what `Runner.check_update` does); plain and checked "
             "updates alternate in blocks of the same run.", "",
             "The paired rates carry the machine's noise (a few %); the check's own time, measured "
             "alone on the update's real metrics, gives its cost exactly.", "",
             "| configuration | torch threads | updates/s | checked updates/s | check alone | check / update |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, threads, update in selected_updates(configs, args):
        plain, checked = paired_rates(update, batch, args.updates)
        alone = check_seconds(update(batch))
        lines.append(f"| {name} | {threads} | {plain:.1f} | {checked:.1f} | {1e6 * alone:.1f} µs "
                     f"| {100 * alone * plain:.3f}% |")
        print(lines[-1])
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/update_speed.md")
    parser.add_argument("--only", nargs="*", help="substrings of configuration names to run (default: all)")
    parser.add_argument("--divergence-check", action="store_true",
                        help="time the runners' NaN/inf check of each update's metrics instead")
    args = parser.parse_args(argv)
    command = bench_runs.command_line("rlft.scripts.benchmark_updates", argv)
    torch.manual_seed(0)
    b = args.batch_size
    obs, next_obs = torch.randn(b, 11), torch.randn(b, 11)
    batch = Batch(obs, torch.rand(b, 3) * 2 - 1, torch.randn(b, 1), next_obs, torch.zeros(b, 1), torch.randn(b, 1))
    configs = {  # name -> (agent factory, time VAE pretraining instead of actor-critic updates)
        "TD3 (256-256)": (lambda: TD3(11, 3, TD3Config()), False),
        "SPOT, VAE 256-256 (demo)": (lambda: SPOT(11, 3, SPOTConfig(vae_hidden=256)), False),
        "SPOT, VAE 750-750 (paper)": (lambda: SPOT(11, 3, SPOTConfig()), False),
        "SPOT VAE pretraining, 750-750": (lambda: SPOT(11, 3, SPOTConfig()), True),
        "SAC, 2 LN critics": (lambda: SAC(11, 3, SACConfig(num_critics=2, **WSRL_ENSEMBLE)), False),
        "SAC, 10 LN critics, batched (WSRL online)": (
            lambda: SAC(11, 3, SACConfig(num_critics=10, **WSRL_ENSEMBLE)), False),
        "SAC, 10 LN critics, Python loop": (lambda: looped_sac(10), False),
        "Cal-QL, 2 LN critics": (lambda: CQL(11, 3, CQLConfig(calibrated=True, num_critics=2, **WSRL_ENSEMBLE)), False),
        "Cal-QL, 10 LN critics (WSRL offline)": (
            lambda: CQL(11, 3, CQLConfig(calibrated=True, num_critics=10, **WSRL_ENSEMBLE)), False),
        "IQL": (lambda: IQL(11, 3, IQLConfig()), False),
    }
    if args.divergence_check:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(divergence_check_report(configs, args, batch, command)))
        return
    rows = []
    for name, threads, update in selected_updates(configs, args):
        rate = updates_per_second(update, batch, args.updates)
        rows.append((name, threads, rate))
        print(f"{name:<32} threads={threads}  {rate:7.1f} updates/s")
    lines = [
        "# Gradient updates per second (CPU)",
        "",
        f"Produced by `{command}` on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"batch {b}, Hopper shapes.",
        "",
        "| configuration | torch threads | updates/s |",
        "| --- | ---: | ---: |",
        *[f"| {n} | {t} | {r:.0f} |" for n, t, r in rows],
        "",
        "Relative cost (time per update of the first configuration over the second; 10 critics do 5x "
        "the critic FLOPs of 2, so 5.0 would mean no gain from batching the members):",
        "",
        "| configuration | compared with | torch threads | time ratio |",
        "| --- | --- | ---: | ---: |",
    ]
    rate = {(n, t): r for n, t, r in rows}
    for big, small in PAIRS.items():
        for threads in args.threads:
            if (big, threads) in rate and (small, threads) in rate:
                lines.append(f"| {big} | {small} | {threads} | {rate[(small, threads)] / rate[(big, threads)]:.2f}x |")
    lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
