"""Benchmark: batch-1 latency of every exported policy family, PyTorch eager against ONNX Runtime.

Each case is an ``rlft`` run of a shipped experiment at its recipe's network sizes and denoising
step counts (the VLAs: the experiments' tiny models), trained only a few updates (latency does not
depend on the weights), then exported with ``rlft-export``'s ``export_run``: its parity check must pass, and its ``metadata.json``
latency (p50/p99 over 300 calls after 20 warm-up calls, one thread each) is tabled. Runs and exports go to
``<out>/runs/<case>`` (reused when finished: delete an export to measure it again); writes ``results.md``, ``results.json`` and
``latency.png`` to ``<out>``. Run it alone on the machine: latency is wall-clock.

    python -m rlft.scripts.benchmark_export
    python -m rlft.scripts.benchmark_export --cases dppo-mw-push residual-mw-push
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlft.common.machine import cpu_description
from rlft.scripts import bench_runs  # noqa: E402

O2O = ["trainer.eval_every=1000000", "trainer.eval_episodes=1", "progress=false", "threads=1"]
FINETUNE = ["method.bc.steps=20", "loop.iterations=0", "loop.eval_episodes=1", "loop.eval_envs=1", "progress=false",
            "threads=1"]
# case -> (what it exports, the run's overrides)
CASES: dict[str, tuple[str, list[str]]] = {
    "spot-hopper": ("SPOT actor (TD3-style deterministic)",
                    ["experiment=o2o/spot/hopper-weak", "trainer.offline_steps=10", "trainer.online_steps=0",
                     "trainer.pretrain_steps.vae=10", *O2O]),
    "iql-hopper": ("IQL actor (Gaussian mean)",
                   ["experiment=o2o/iql/hopper-weak", "trainer.offline_steps=10", "trainer.online_steps=0", *O2O]),
    "sac-hopper": ("SAC actor (tanh-Gaussian mean)",
                   ["experiment=sac-scratch", "trainer.online_steps=200", "trainer.warmup_steps=100", *O2O]),
    "fowm-hopper": ("FOWM / TD-MPC2 policy prior",
                    ["experiment=wm/hopper-weak", "trainer.offline_steps=10", "trainer.online_steps=0", *O2O]),
    "gaussian-mw-push": ("Gaussian PPO (mean chunk)", ["experiment=finetune/gaussian/mw-push", *FINETUNE]),
    "dppo-mw-push": ("DPPO (DDPM chunk, noise input)", ["experiment=finetune/dppo/mw-push", *FINETUNE]),
    "residual-mw-push": ("ResiP (diffusion base + residual, state inputs)",
                         ["experiment=finetune/residual/mw-push", *FINETUNE]),
    "dppo-pusht": ("DPPO from 64x64 pixels (CNN encoder)", ["experiment=finetune/dppo/pusht", *FINETUNE]),
    "vla-babyai": ("tiny VLA, greedy decode of 1 action token (LLaVA: CLIP + Llama)",
                   ["experiment=vla/ppo/babyai-gotoobj", "sft.episodes=4", "sft.steps=2", "loop.iterations=0",
                    "loop.eval_episodes=1", "loop.eval_envs=1", "progress=false", "threads=1"]),
    "vla-pusht": ("tiny VLA, greedy decode of 2 action tokens (Push-T)",
                  ["experiment=vla/ppo/pusht", "sft.episodes=2", "sft.steps=2", "loop.iterations=0",
                   "loop.eval_episodes=1", "loop.eval_envs=1", "progress=false", "threads=1"]),
}


def run_case(name: str, out: Path) -> dict:
    """The case's run and export (both reused when finished) and the export's metadata."""
    from rlft.export.artifact import export_run

    folder = out / "runs" / name
    if not (folder / "eval.json").is_file():
        bench_runs.launch(CASES[name][1], folder)
    if not (folder / "export" / "metadata.json").is_file():
        export_run(folder, folder / "export")
    return json.loads((folder / "export" / "metadata.json").read_text())


def write_results(results: dict[str, dict], out: Path, command: str) -> None:
    lines = ["# Export latency: PyTorch eager against ONNX Runtime", "", f"Command: `{command}`", "",
             f"Batch 1, one thread each, p50 / p99 over 300 calls in ms; {cpu_description()}, "
             "run alone. Parity: the largest difference of ONNX Runtime from PyTorch over an episode's queries and "
             "64 random inputs, the action in units of half its range (the export refuses more than 1e-5); for the VLAs, "
             "over an episode's queries, whose action tokens must also be equal.", "",
             "A chunked policy is called once per `executed_steps` actions (the table's *actions per call*). The "
             "timed call is an episode's first query: for the residual policy, whose state is then zero, that call "
             "samples a new base chunk (the worst case); its other calls run only the residual.", "",
             "| case | exports | actions per call | PyTorch p50 / p99 | ONNX Runtime p50 / p99 | speed-up (p50) "
             "| parity |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, meta in results.items():
        t, o = meta["latency_ms"]["torch"], meta["latency_ms"]["onnxruntime"]
        parity = max(meta["parity"]["max_abs_error"].values())
        lines.append(f"| {name} | {CASES[name][0]} | {meta['control']['executed_steps']} | {t['p50']:.3f} / "
                     f"{t['p99']:.3f} | {o['p50']:.3f} / "
                     f"{o['p99']:.3f} | {t['p50'] / o['p50']:.1f}x | {parity:.1e} |")
    lines += ["", "Notes from the exports' metadata:", ""]
    lines += [f"- {name}: {note}" for name, meta in results.items() for note in meta["notes"]]
    lines += ["", "![latency](latency.png)", ""]
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"command": command, "cases": {
        name: {"latency_ms": meta["latency_ms"], "parity": meta["parity"], "family": meta["family"]}
        for name, meta in results.items()}}, indent=2))
    plot_latency(results, out / "latency.png")


def plot_latency(results: dict[str, dict], path: Path) -> None:
    """p50 bars per case with p99 whiskers, log scale."""
    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    for offset, (runtime, label) in enumerate((("torch", "PyTorch eager"), ("onnxruntime", "ONNX Runtime"))):
        p50 = [results[n]["latency_ms"][runtime]["p50"] for n in names]
        p99 = [results[n]["latency_ms"][runtime]["p99"] for n in names]
        ys = [i + 0.4 * offset for i in range(len(names))]
        ax.barh(ys, p50, height=0.4, label=label, xerr=[[0] * len(names), [b - a for a, b in zip(p50, p99)]])
    ax.set_yticks([i + 0.2 for i in range(len(names))], names)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency per policy call (ms, one thread; bar p50, whisker p99)")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/export")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for i, name in enumerate(args.cases, 1):
        print(f"[{i}/{len(args.cases)}] {name}: {CASES[name][0]}", flush=True)
        results[name] = run_case(name, args.out)
    write_results(results, args.out, bench_runs.command_line("rlft.scripts.benchmark_export", argv))
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
