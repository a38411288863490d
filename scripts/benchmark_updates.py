"""Micro-benchmark: gradient updates per second of every off-policy learner on this machine.

Synthetic batches with Hopper's shapes (obs 11, action 3, batch 256); each configuration
runs warm-up updates then times ``--updates`` updates. Writes ``benchmarks/update_speed.md``
with each update's matmul FLOPs and achieved GFLOP/s against this CPU's measured fp32 matmul peak
(the distance from the compute bound), and, for the critic ensembles, the cost ratio of 10 critics to 2.

    python -m rlft.scripts.benchmark_updates --threads 1 2

``--divergence-check`` instead times each update with and without the runners' divergence
check (``Runner.check_update``: every update's metrics tested for NaN/inf), alternating blocks
of updates so that both see the same machine, and writes the cost to
``benchmarks/divergence_check.md``:

    python -m rlft.scripts.benchmark_updates --divergence-check --threads 1 --out benchmarks/divergence_check.md

``--compare before-after`` times each learner as it is and as it was before issue 35's speed
changes (:func:`as_before_issue_35`), ``--compare issue-18`` as it is and with issue 18's changes
undone (:func:`as_before_issue_18`), ``--compare kernel`` the ensembles' two kernels, ``--compare
compile`` eager against ``compile=true``, in alternating blocks of one run:

    python -m rlft.scripts.benchmark_updates --compare before-after --threads 1 2 --updates 40 \
        --out benchmarks/update_speed_before_after.md
    python -m rlft.scripts.benchmark_updates --compare issue-18 --threads 1 2 --updates 40 \
        --out benchmarks/update_speed_issue18.md
    python -m rlft.scripts.benchmark_updates --compare kernel --threads 1 2 --out benchmarks/ensemble_kernel.md
    python -m rlft.scripts.benchmark_updates --compare compile --threads 1 --out benchmarks/compile.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
import types
from pathlib import Path
from typing import Callable, Iterator

import torch

from rlft.common.machine import cpu_description
from rlft.agents.optim import adam
from rlft.agents.base import Learner, OffPolicyAgent
from rlft.agents.replay_buffer import Batch
from rlft.agents.sac import SAC, SACConfig
from rlft.agents.td3 import TD3, TD3Config
from rlft.agents.cql import CQL, CQLConfig, conservative_gap
from rlft.agents.iql import IQL, IQLConfig
from rlft.agents.registry import build_agent
from rlft.agents.spot import SPOT, SPOTConfig
from rlft.policies.ensemble import CriticEnsemble, EnsembleMLP, reduce_ensemble
from rlft.policies.mlp import mlp
from rlft.runtime.runner import first_non_finite
from rlft.scripts import bench_runs

WORLD_MODEL = "TD-MPC2, cpu world model (horizon 3)"
CPU_WORLD_MODEL = {"latent_dim": 128, "mlp_dim": 256, "activation": "silu"}  # configs/wm_size/cpu.yaml
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

    reduced = CriticEnsemble.reduced

    def forward(self, obs: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        chosen = self.members if members is None else [self.members[i] for i in members.tolist()]
        return torch.stack([m(x).squeeze(-1) for m in chosen])


def per_source_penalty(agent: CQL, batch: Batch, q_data: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """CQL's penalty written as App. F reads, as rlft computed it before issue 18: every state
    repeated ``n`` times per source, one actor pass per source, one critic pass per source. The
    reference that ``CQL.conservative_penalty`` (one actor pass over s and s', one critic pass over
    all 3n actions) is tested and timed against."""
    cfg, obs = agent.cfg, batch.observations
    b, n = obs.shape[0], cfg.cql_n_actions
    obs_rep = obs.repeat_interleave(n, dim=0)
    with torch.no_grad():
        random_actions = torch.rand(b * n, agent.action_dim, device=obs.device) * 2.0 - 1.0
        pi_actions, pi_log_prob = agent.actor.sample(obs_rep)
        next_actions, next_log_prob = agent.actor.sample(batch.next_observations.repeat_interleave(n, dim=0))
    q_random, q_pi, q_next = (agent.critic(obs_rep, actions).view(-1, b, n)
                              for actions in (random_actions, pi_actions, next_actions))
    gap = conservative_gap(q_data, q_random, q_pi, q_next, pi_log_prob.view(b, n), next_log_prob.view(b, n),
                           agent.action_dim, cfg.cql_temperature, batch.mc_returns.view(b) if cfg.calibrated else None)
    return gap.mean(1).sum(), {"cql_gap": gap.mean().item(), "q_random": q_random.mean().item()}


def with_kernel(kernel: str) -> Callable[[OffPolicyAgent], OffPolicyAgent]:
    """A variant that puts every critic ensemble of an agent on ``kernel`` (``policies/ensemble.KERNELS``)."""
    def variant(agent: OffPolicyAgent) -> OffPolicyAgent:
        for critic in (agent.critic, agent.critic_target):
            for module in critic.modules():
                if isinstance(module, EnsembleMLP):
                    module.kernel = kernel
        return agent
    return variant


def as_is(agent: OffPolicyAgent) -> OffPolicyAgent:
    """``agent`` unchanged: the arm that runs rlft as it is."""
    return agent


def as_before_issue_18(agent: OffPolicyAgent) -> OffPolicyAgent:
    """``agent`` computing what it computes the way rlft did before issue 18: batched ensemble kernels
    on CPU, every critic member evaluated where a reduction or TD3's actor reads fewer, and CQL's
    per-source penalty."""
    with_kernel("batched")(agent)
    for critic in (agent.critic, agent.critic_target):
        full = critic.forward
        critic.forward = lambda obs, action, members=None, full=full: (
            full(obs, action) if members is None else full(obs, action)[members])
        critic.reduced = lambda obs, action, reduction, subset=2, critic=critic: reduce_ensemble(
            critic(obs, action), reduction, subset)
    if isinstance(agent, CQL):
        agent.conservative_penalty = types.MethodType(per_source_penalty, agent)
    return agent


def as_before_issue_35(agent: Learner) -> Learner:
    """``agent`` as rlft ran it before issue 35: every optimizer on torch's single-tensor path (its CPU
    default, which rlft did not override) and IQL evaluating its target critic in both losses."""
    for optimizer in vars(agent).values():
        if isinstance(optimizer, torch.optim.Optimizer):
            for group in optimizer.param_groups:
                group.update(fused=False, foreach=False)
    if isinstance(agent, IQL):
        agent.target_q = types.MethodType(uncached_target_q, agent)
    return agent


def uncached_target_q(agent: IQL, batch: Batch) -> torch.Tensor:
    """``IQL.target_q`` computed anew on every call, as both of IQL's losses did before issue 35."""
    with torch.no_grad():
        return agent.critic_target(batch.observations, batch.actions).min(0).values


def looped_sac(num_critics: int) -> SAC:
    agent = SAC(11, 3, SACConfig(num_critics=num_critics, **WSRL_ENSEMBLE))
    agent.critic = LoopedCriticEnsemble(11, 3, num_critics, agent.cfg.hidden)
    agent.critic_target = copy.deepcopy(agent.critic).requires_grad_(False)
    agent.critic_optimizer = adam(agent.critic.parameters(), lr=agent.cfg.critic_lr)
    return agent


def updates_per_second(update: Callable[[Batch], dict], batch: Batch, updates: int) -> float:
    for _ in range(20):
        update(batch)
    start = time.perf_counter()
    for _ in range(updates):
        update(batch)
    return updates / (time.perf_counter() - start)


def compiled(agent: OffPolicyAgent) -> OffPolicyAgent:
    """``agent`` with ``compile=True``: its losses run through ``torch.compile``."""
    agent.base_cfg = agent.cfg = dataclasses.replace(agent.cfg, compile=True)
    return agent


COMPARISONS = {  # --compare: (the two variants of each learner, their column names, what the report says about them)
    "before-after": ((as_before_issue_35, as_is), ("before", "after"),
                     "'before' is the same learner with issue 35's changes undone "
                     "(`scripts/benchmark_updates.as_before_issue_35`: optimizers on torch's single-tensor path, "
                     "IQL's target critic evaluated in both losses); 'after' steps fused (`agents/optim.py`)"),
    "issue-18": ((as_before_issue_18, as_is), ("before", "after"),
                 "'before' is the same learner with issue 18's changes undone "
                 "(`scripts/benchmark_updates.as_before_issue_18`: batched ensemble kernels on CPU, every critic "
                 "member run where REDQ's target or TD3's actor reads fewer, CQL's penalty one source at a time)"),
    "kernel": ((with_kernel("batched"), with_kernel("per_member")), ("batched", "per_member"),
               "'batched' runs every critic ensemble through one `baddbmm` per layer, 'per_member' through one "
               "`addmm` and one fused `layer_norm` per member and layer (`policies/ensemble.EnsembleMLP`); nothing "
               "else differs"),
    "compile": ((as_is, compiled), ("eager", "compiled"),
                "'compiled' is the same learner with `compile=true` (`torch.compile` of its critic and actor "
                "losses, default inductor backend; compilation happens during the warm-up updates)"),
}


def comparison_report(configs: dict, args: argparse.Namespace, batch: Batch, command: str) -> list[str]:
    """Updates/s of each learner and of its ``--compare`` variant, timed in alternating blocks of one run.
    Each arm is its own agent, built fresh."""
    variants, (first, second), what = COMPARISONS[args.compare]
    lines = [f"# Update speed: {first} and {second}", "",
             f"Produced by `{command}` on {cpu_description()}, torch {torch.__version__}, "
             f"batch {args.batch_size}, Hopper shapes. {what}; both are timed in alternating blocks of the same run.",
             "", f"| configuration | torch threads | {first} (updates/s) | {second} (updates/s) | {second} / {first} |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, threads in selected_configs(configs, args):
        if name == WORLD_MODEL and args.compare != "before-after":
            continue  # the other comparisons change critic ensembles, CQL or compiled losses: none of its parts
        arms = {arm: update_of(configs, name, variant) for arm, variant in zip((False, True), variants)}
        try:
            a, b = paired_rates(arms, batch, args.updates)
        except torch._dynamo.exc.BackendCompilerFailed as error:  # a compiler bug is a result, not a crash
            reason = str(error).splitlines()[1] if "\n" in str(error) else str(error)
            lines.append(f"| {name} | {threads} | fails: {reason[:160]} | | |")
        else:
            lines.append(f"| {name} | {threads} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
        print(lines[-1])
    return lines + [""]


def update_flops(update: Callable[[Batch], dict], batch: Batch, updates: int = 2) -> float:
    """Matmul FLOPs of one update (forward and backward), counted by ``torch.utils.flop_counter`` over
    ``updates`` consecutive updates and averaged: TD3 and SPOT update their actor every second step."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        for _ in range(updates):
            update(batch)
    return counter.get_total_flops() / updates


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's fp32 matmul rate in GFLOP/s at torch's current thread count: the best of
    ``repeats`` ``[size, size] @ [size, size]`` products (``2 size^3`` FLOPs each)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def paired_rates(updates_by_arm: dict[bool, Callable[[Batch], dict]], batch: Batch, updates: int,
                 blocks: int = 10, checked: bool = False) -> tuple[float, float]:
    """Updates per second of two arms (``False``, ``True``) timed in alternating blocks; with
    ``checked`` the ``True`` arm also runs the divergence check on every update's metrics."""
    for arm in (False, True):
        for _ in range(20):
            updates_by_arm[arm](batch)
    seconds = {False: 0.0, True: 0.0}
    per_block = max(1, updates // blocks)
    for _ in range(blocks):
        for arm in (False, True):
            start = time.perf_counter()
            for _ in range(per_block):
                metrics = updates_by_arm[arm](batch)
                if checked and arm and first_non_finite(metrics) is not None:
                    raise RuntimeError("the benchmark's learner diverged")
            seconds[arm] += time.perf_counter() - start
    return per_block * blocks / seconds[False], per_block * blocks / seconds[True]


def selected_configs(configs: dict, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """(configuration, torch threads) for every configuration ``--only`` keeps, with torch set to
    that many threads."""
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in configs:
            if not args.only or any(key in name for key in args.only):
                yield name, threads


def update_of(configs: dict, name: str, variant: Callable[[OffPolicyAgent], OffPolicyAgent] = as_is
              ) -> Callable[[Batch], dict]:
    """The update function of a fresh agent of configuration ``name``, as ``variant`` makes it. A world
    model ignores the transition batch it is given and trains on Hopper-shaped sequences of its horizon."""
    make, which = configs[name]
    agent = variant(make())
    if which == "sequences":
        sequences = hopper_sequences(agent.sequence_length, 256)
        return lambda _batch: agent.update(sequences)
    return getattr(agent, which)


def hopper_sequences(length: int, batch_size: int) -> Batch:
    """Random time-major sequences ``[length, batch_size, ...]`` with Hopper's shapes."""
    shape = (length, batch_size)
    return Batch(torch.randn(*shape, 11), torch.rand(*shape, 3) * 2 - 1, torch.randn(*shape, 1),
                 torch.randn(*shape, 11), torch.zeros(*shape, 1))


def selected_updates(configs: dict, args: argparse.Namespace) -> Iterator[tuple[str, int, Callable[[Batch], dict]]]:
    """:func:`selected_configs` with the update function of a fresh agent for each."""
    for name, threads in selected_configs(configs, args):
        yield name, threads, update_of(configs, name)


def check_seconds(metrics: dict, calls: int = 20_000) -> float:
    """Seconds one divergence check of ``metrics`` takes (the mean of ``calls``)."""
    start = time.perf_counter()
    for _ in range(calls):
        first_non_finite(metrics)
    return (time.perf_counter() - start) / calls


def divergence_check_report(configs: dict, args: argparse.Namespace, batch: Batch, command: str) -> list[str]:
    lines = ["# Cost of the divergence check", "",
             f"Produced by `{command}` on {cpu_description()}, torch {torch.__version__}, "
             f"batch {args.batch_size}, Hopper shapes. Every update's metrics go through "
             "`rlft.runtime.runner.first_non_finite` (what `Runner.check_update` does); plain and checked "
             "updates alternate in blocks of the same run.", "",
             "The paired rates carry the machine's noise (a few %); the check's own time, measured "
             "alone on the update's real metrics, gives its cost exactly.", "",
             "| configuration | torch threads | updates/s | checked updates/s | check alone | check / update |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, threads, update in selected_updates(configs, args):
        plain, checked = paired_rates({False: update, True: update}, batch, args.updates, checked=True)
        alone = check_seconds(update(batch))
        lines.append(f"| {name} | {threads} | {plain:.1f} | {checked:.1f} | {1e6 * alone:.1f} µs "
                     f"| {100 * alone * plain:.3f}% |")
        print(lines[-1])
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/update_speed.md")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--only", nargs="*", help="substrings of configuration names to run (default: all)")
    parser.add_argument("--divergence-check", action="store_true",
                        help="time the runners' NaN/inf check of each update's metrics instead")
    parser.add_argument("--compare", choices=sorted(COMPARISONS),
                        help="time each learner against a variant in one run: with issue 35's (before-after) "
                             "or issue 18's changes undone, another ensemble kernel, or compiled")
    args = parser.parse_args(argv)
    command = bench_runs.command_line("rlft.scripts.benchmark_updates", argv)
    torch.manual_seed(0)
    b = args.batch_size
    obs, next_obs = torch.randn(b, 11), torch.randn(b, 11)
    batch = Batch(obs, torch.rand(b, 3) * 2 - 1, torch.randn(b, 1), next_obs, torch.zeros(b, 1), torch.randn(b, 1))
    configs = {  # name -> (agent factory, the update timed: "update", SPOT's "update_vae", or "sequences")
        "TD3 (256-256)": (lambda: TD3(11, 3, TD3Config()), "update"),
        "SPOT, VAE 256-256 (demo)": (lambda: SPOT(11, 3, SPOTConfig(vae_hidden=256)), "update"),
        "SPOT, VAE 750-750 (paper)": (lambda: SPOT(11, 3, SPOTConfig()), "update"),
        "SPOT VAE pretraining, 750-750": (lambda: SPOT(11, 3, SPOTConfig()), "update_vae"),
        "SAC, 2 LN critics": (lambda: SAC(11, 3, SACConfig(num_critics=2, **WSRL_ENSEMBLE)), "update"),
        "SAC, 10 LN critics, batched (WSRL online)": (
            lambda: SAC(11, 3, SACConfig(num_critics=10, **WSRL_ENSEMBLE)), "update"),
        "SAC, 10 LN critics, Python loop": (lambda: looped_sac(10), "update"),
        "Cal-QL, 2 LN critics": (
            lambda: CQL(11, 3, CQLConfig(calibrated=True, num_critics=2, **WSRL_ENSEMBLE)), "update"),
        "Cal-QL, 10 LN critics (WSRL offline)": (
            lambda: CQL(11, 3, CQLConfig(calibrated=True, num_critics=10, **WSRL_ENSEMBLE)), "update"),
        "IQL": (lambda: IQL(11, 3, IQLConfig()), "update"),
        WORLD_MODEL: (lambda: build_agent("tdmpc2", {"model": CPU_WORLD_MODEL}, 11, 3), "sequences"),
    }
    if args.compare:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(comparison_report(configs, args, batch, command)))
        return
    if args.divergence_check:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(divergence_check_report(configs, args, batch, command)))
        return
    rows, peaks = [], {}
    for name, threads, update in selected_updates(configs, args):
        if threads not in peaks:
            peaks[threads] = matmul_peak()
        rate = updates_per_second(update, batch, args.updates)
        gflop = update_flops(update, batch) / 1e9
        rows.append((name, threads, rate, gflop))
        print(f"{name:<32} threads={threads}  {rate:7.1f} updates/s  {gflop * rate:6.1f} GFLOP/s "
              f"({100 * gflop * rate / peaks[threads]:.0f}% of {peaks[threads]:.0f})")
    lines = [
        "# Gradient updates per second (CPU)",
        "",
        f"Produced by `{command}` on {cpu_description()}, torch {torch.__version__}, "
        f"batch {b}, Hopper shapes.",
        "",
        "GFLOP per update: the matmul FLOPs of one update, forward and backward, counted by "
        "`torch.utils.flop_counter` (elementwise work is not counted). The compute bound is this CPU's "
        "fp32 matmul rate at the same thread count, measured on a 2048 x 2048 product: "
        + ", ".join(f"{peak:.0f} GFLOP/s with {t} thread{'s' if t > 1 else ''}" for t, peak in peaks.items()) + ".",
        "",
        "Absolute rates on a shared machine move between runs of the same code (TD3 at 2 threads: 111 "
        "updates/s at 07:09 and 48 at 08:38 on 2026-12-02, nothing else running here), so compare rows of "
        "one run, and the paired files (`update_speed_before_after.md`, `update_speed_issue18.md`, "
        "`ensemble_kernel.md`, `compile.md`) for changes. FLOPs are averaged over two updates, since TD3 "
        "and SPOT update their actor every second one. The TD-MPC2 row trains on Hopper-shaped sequences "
        "of its horizon.",
        "",
        "| configuration | torch threads | updates/s | GFLOP per update | GFLOP/s | of the matmul peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {n} | {t} | {r:.0f} | {g:.3f} | {g * r:.1f} | {100 * g * r / peaks[t]:.0f}% |" for n, t, r, g in rows],
        "",
        "Relative cost (time per update of the first configuration over the second; 10 critics do 5x "
        "the critic FLOPs of 2, so 5.0 would mean no gain from batching the members):",
        "",
        "| configuration | compared with | torch threads | time ratio |",
        "| --- | --- | ---: | ---: |",
    ]
    rate = {(n, t): r for n, t, r, _ in rows}
    for big, small in PAIRS.items():
        for threads in args.threads:
            if (big, threads) in rate and (small, threads) in rate:
                lines.append(f"| {big} | {small} | {threads} | {rate[(small, threads)] / rate[(big, threads)]:.2f}x |")
    lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
