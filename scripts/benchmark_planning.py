"""Planning and update cost of the world-model agent on this machine.

Builds the agent exactly as ``rlft experiment=wm/hopper-weak`` does (Hopper's shapes: 11-D
observations, 3-D actions; FOWM's value head and termination head), for the CPU preset and the
paper's 5M preset, and times:

* planned actions per second for one env (online exploration) and for 10 envs planned together
  (evaluation), with and without FOWM's uncertainty penalty;
* how that scales with the number of MPPI samples (elites and policy rollouts scaled alongside);
* gradient updates per second (batch 256, horizon 3), and the cost of Mish against SiLU.

    python -m rlft.scripts.benchmark_planning --threads 2 --out benchmarks/world_model
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rlft.agents.registry import build_agent  # noqa: E402
from rlft.agents.replay_buffer import Batch  # noqa: E402
from rlft.agents.tdmpc2 import TDMPC2  # noqa: E402
from rlft.scripts import bench_runs  # noqa: E402

OBS_DIM, ACTION_DIM = 11, 3


def make_agent(size: str, *overrides: str) -> TDMPC2:
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", ["experiment=wm/hopper-weak", f"wm_size={size}", *overrides])
    options = OmegaConf.to_container(cfg.agent, resolve=True)
    agent = build_agent(options.pop("name"), options, OBS_DIM, ACTION_DIM)
    assert isinstance(agent, TDMPC2)
    return agent


def rate(fn: Callable[[], object], seconds: float, warmup: int = 2) -> float:
    """Calls per second of ``fn``, timed for at least ``seconds``."""
    for _ in range(warmup):
        fn()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - started)


def actions_per_second(agent: TDMPC2, envs: int, seconds: float) -> float:
    obs = torch.randn(envs, OBS_DIM)
    return envs * rate(lambda: agent.act(obs, deterministic=False), seconds)


def updates_per_second(agent: TDMPC2, seconds: float) -> float:
    h, b = agent.sequence_length, 256
    batch = Batch(torch.randn(h, b, OBS_DIM), torch.rand(h, b, ACTION_DIM) * 2 - 1, torch.randn(h, b, 1),
                  torch.randn(h, b, OBS_DIM), torch.zeros(h, b, 1))
    return rate(lambda: agent.update(batch), seconds)


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/world_model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per measurement")
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"presets": [], "scaling": [], "activation": []}

    for size in ("cpu", "paper"):
        updates = updates_per_second(make_agent(size), args.seconds)  # planning settings do not change updates
        for cost in (0.0, 20.0):
            agent = make_agent(size, f"agent.planner.uncertainty_cost={cost}")
            row = {"size": size, "uncertainty_cost": cost, "parameters": agent.model.num_parameters,
                   **{k: getattr(agent.cfg.planner, k) for k in ("horizon", "iterations", "num_samples")},
                   "actions_per_s_1_env": actions_per_second(agent, 1, args.seconds),
                   "actions_per_s_10_envs": actions_per_second(agent, 10, args.seconds), "updates_per_s": updates}
            results["presets"].append(row)
            print(row, flush=True)

    for cost in (0.0, 20.0):
        for samples in args.samples:
            overrides = [f"agent.planner.num_samples={samples}", f"agent.planner.num_elites={max(samples // 8, 1)}",
                         f"agent.planner.num_pi_trajs={samples * 3 // 64}", f"agent.planner.uncertainty_cost={cost}"]
            agent = make_agent("cpu", *overrides)
            row = {"uncertainty_cost": cost, "num_samples": samples,
                   "actions_per_s_1_env": actions_per_second(agent, 1, args.seconds),
                   "actions_per_s_10_envs": actions_per_second(agent, 10, args.seconds)}
            results["scaling"].append(row)
            print(row, flush=True)

    for activation in ("mish", "silu"):
        agent = make_agent("cpu", f"agent.model.activation={activation}", "agent.planner.uncertainty_cost=0")
        row = {"activation": activation, "updates_per_s": updates_per_second(agent, args.seconds),
               "actions_per_s_1_env": actions_per_second(agent, 1, args.seconds)}
        results["activation"].append(row)
        print(row, flush=True)

    results.update(command=bench_runs.command_line("rlft.scripts.benchmark_planning", argv), threads=args.threads,
                   machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    (out / "planning.json").write_text(json.dumps(results, indent=2))
    write_report(results, out)


def write_report(results: dict, out: Path) -> None:
    lines = [
        "# World-model planning and update cost (CPU)",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']}. Agent as built by `rlft experiment=wm/hopper-weak` (Hopper shapes, "
        "FOWM heads); 'actions/s' counts planned actions, one MPPI optimisation each (10 envs: planned together).",
        "",
        "| preset | parameters | H / iterations / samples | uncertainty cost | actions/s, 1 env | ms per action | "
        "actions/s, 10 envs | updates/s |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["presets"]:
        lines.append(f"| {r['size']} | {r['parameters'] / 1e6:.2f}M | {r['horizon']} / {r['iterations']} / "
                     f"{r['num_samples']} | {r['uncertainty_cost']:g} | {r['actions_per_s_1_env']:.1f} | "
                     f"{1000 / r['actions_per_s_1_env']:.0f} | {r['actions_per_s_10_envs']:.1f} | "
                     f"{r['updates_per_s']:.1f} |")
    lines += ["", "Scaling with the number of MPPI samples (CPU preset; elites = samples / 8, prior rollouts = "
              "3 samples / 64):", "",
              "| samples | uncertainty cost | actions/s, 1 env | actions/s, 10 envs |", "| ---: | ---: | ---: | ---: |"]
    for r in results["scaling"]:
        lines.append(f"| {r['num_samples']} | {r['uncertainty_cost']:g} | {r['actions_per_s_1_env']:.1f} | "
                     f"{r['actions_per_s_10_envs']:.1f} |")
    lines += ["", "Activation (CPU preset, no uncertainty penalty):", "",
              "| activation | updates/s | actions/s, 1 env |", "| --- | ---: | ---: |"]
    for r in results["activation"]:
        lines.append(f"| {r['activation']} | {r['updates_per_s']:.1f} | {r['actions_per_s_1_env']:.1f} |")
    lines += ["", "![scaling](planning.png)", ""]
    (out / "planning.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6, 4))
    for cost in sorted({r["uncertainty_cost"] for r in results["scaling"]}):
        for key, style in (("actions_per_s_1_env", "-o"), ("actions_per_s_10_envs", "--s")):
            rows = [r for r in results["scaling"] if r["uncertainty_cost"] == cost]
            label = f"{'1 env' if key.endswith('1_env') else '10 envs'}, uncertainty cost {cost:g}"
            ax.plot([r["num_samples"] for r in rows], [r[key] for r in rows], style, label=label)
    ax.set(xscale="log", yscale="log", xlabel="MPPI samples per iteration", ylabel="planned actions / s",
           title="MPPI cost, CPU preset (H=3, 4 iterations)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "planning.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
