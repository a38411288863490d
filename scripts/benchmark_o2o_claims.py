"""Benchmark: the central claims of WSRL, Cal-QL and IQL fine-tuning, several seeds, on this CPU.

Every claim starts from offline checkpoints trained once per seed (``trainer.online_steps=0``),
whose offline learning curves are plotted first with the dataset's own score: a fine-tuning
comparison only means something once the offline critic has converged. Then:

* **WSRL** (arXiv 2412.07762, Sec. 5 / Fig. 3): from the same CQL checkpoint (``agent=wsrl``),
  fine-tuning with the offline data discarded and no warm-up, WSRL (warm-up, offline data
  discarded), and fine-tuning that keeps 50% offline data in each batch. Score and the mean Q of
  the training batches are plotted: the claim is a dip without warm-up that the warm-up avoids,
  ending at least as high as the 50% variant.
* **Cal-QL** (arXiv 2303.05479, Sec. 6 / Fig. 1): CQL and Cal-QL, each pretrained with the same
  budget and fine-tuned with 50/50 batches: the claim is CQL's initial unlearning dip, smaller or
  absent with calibration.
* **IQL** (arXiv 2110.06169, Sec. 5.3): fine-tuning with the locomotion reward normalisation
  (``trainer.reward_return_range=1000``) against raw rewards.

The dip of a run is its offline-end score minus the lowest score over the first ``--dip-window``
online steps. Runs are ``rlft`` commands (one torch thread each, ``--workers`` at a time); finished
runs are skipped, so an interrupted benchmark continues (and a finished one only re-summarises);
``--offline-from`` fine-tunes another folder's offline checkpoints with other online settings
(``--online-overrides``, e.g. ``trainer.utd=10``, go to every online run).
Writes ``results.md``, ``results.json`` and the plots to ``<out>``
(``benchmarks/o2o_claims/<claims>`` unless given).

    python -m rlft.scripts.benchmark_o2o_claims --task hopper-medium --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts import bench_runs
from rlft.scripts.benchmark_o2o import Chain, add_run_arguments, overrides_for, run_chain, run_dir

# claim -> {run label: (method whose offline checkpoint it starts from, extra online overrides)}
CLAIMS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "wsrl": {
        "no warm-up, no offline data": ("wsrl", ["trainer.warmup_steps=0", "trainer.offline_data_ratio=0.0"]),
        "WSRL: warm-up, no offline data": ("wsrl", ["trainer.offline_data_ratio=0.0"]),
        "no warm-up, 50% offline data": ("wsrl", ["trainer.warmup_steps=0", "trainer.offline_data_ratio=0.5"]),
    },
    "calql": {
        "CQL, 50/50": ("cql", ["trainer.offline_data_ratio=0.5"]),
        "Cal-QL, 50/50": ("calql", ["trainer.offline_data_ratio=0.5"]),
    },
    "iql": {
        "IQL, rewards normalised": ("iql", []),
        "IQL, raw rewards": ("iql-raw", []),
    },
}
OFFLINE = {  # offline run name -> (o2o experiment method, extra offline overrides)
    "wsrl": ("wsrl", []),
    "cql": ("calql", ["agent=cql"]),  # CQL(H) with the Cal-QL recipe's trainer settings
    "calql": ("calql", []),
    "iql": ("iql", []),
    "iql-raw": ("iql", ["trainer.reward_return_range=null"]),
}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def build_chains(args: argparse.Namespace) -> list[Chain]:
    chains = []
    for seed in args.seeds:
        for name in dict.fromkeys(source for claim in args.claims for source, _ in CLAIMS[claim].values()):
            method, extra = OFFLINE[name]
            base = overrides_for(method, args.task, seed, args) + extra
            every = [f"trainer.eval_every={args.online_eval_every}", f"trainer.log_every={args.online_eval_every}"]
            online = {slug(label): base + [f"trainer.online_steps={args.online_steps}"] + every + more
                      + args.online_overrides
                      for claim in args.claims for label, (source, more) in CLAIMS[claim].items() if source == name}
            chains.append(Chain(args.task, seed, name, base + ["trainer.online_steps=0"], online))
    # chains with more online runs take longer: start those first, so the workers finish together
    return sorted(chains, key=lambda chain: -len(chain.online))


def _metric_curve(folder: Path, key: str, start: int, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``key`` of the online rows of ``metrics.csv`` against online steps, on ``grid``."""
    with open(folder / "metrics.csv", newline="") as f:
        rows = [(int(float(r["step"])) - start, float(r[key])) for r in csv.DictReader(f)
                if r.get("phase") == "online" and r.get(key)]
    if not rows:
        return grid, np.full(len(grid), np.nan)
    steps, values = map(np.asarray, zip(*rows))
    return grid, np.interp(grid, steps, values, left=np.nan)


def summarise(args: argparse.Namespace, out: Path) -> dict:
    grid = np.arange(0, args.online_steps + 1, args.online_eval_every)
    offline_grid = np.arange(0, args.offline_steps + 1, args.eval_every)
    results: dict = {"claims": {}, "offline": {}}
    offline_curves = {}
    for name in dict.fromkeys(source for claim in args.claims for source, _ in CLAIMS[claim].values()):
        runs = [json.loads((run_dir(args.offline_from or out, args.task, f"{name}-offline", s) / "eval.json").read_text())
                for s in args.seeds]
        offline_curves[name] = [bench_runs.curve(r["history"], offline_grid) for r in runs]
        results["offline"][name] = [r["before"]["normalized_score"] for r in runs]
        reference = runs[0]["details"]["dataset"].get("normalized_score_mean")
    plot_seed_curves(offline_curves, out / "offline.png", f"offline pretraining on {args.task} "
                     f"(dataset: {reference:.1f})", "offline updates")
    for claim in args.claims:
        scores, q_values, table = {}, {}, {}
        for label in CLAIMS[claim]:
            folders = [run_dir(out, args.task, slug(label), s) for s in args.seeds]
            runs = [json.loads((f / "eval.json").read_text()) for f in folders]
            scores[label] = [bench_runs.online_curve(r["history"], args.online_eval_every,
                                                                                 args.online_steps) for r in runs]
            q_values[label] = [_metric_curve(f, "q_data", r["before"]["step"], grid) for f, r in zip(folders, runs)]
            window = grid <= args.dip_window
            table[label] = {
                "offline_end": [float(v[0]) for _, v in scores[label]],
                "dip": [float(v[0] - v[window].min()) for _, v in scores[label]],
                "online_end": [r["after"]["normalized_score"] for r in runs],
            }
        results["claims"][claim] = table
        vlines = {"warm-up ends": args.warmup_steps} if claim == "wsrl" else None
        plot_seed_curves(scores, out / f"{claim}_score.png", f"{claim} claim on {args.task} ({len(args.seeds)} seeds)",
                         "online environment steps", vlines=vlines)
        plot_seed_curves(q_values, out / f"{claim}_q.png", f"{claim} claim: mean Q of the training batches",
                         "online environment steps", ylabel="mean Q(s, a) of the batch", vlines=vlines)
    return results


def run_minutes(out: Path, task: str) -> float:
    """Wall-clock minutes of every run folder of the benchmark, summed (runs share the cores)."""
    return sum(bench_runs.run_minutes(folder) for folder in (out / "runs" / task).glob("*/seed*")
               if (folder / "eval.json").is_file())


def write_markdown(results: dict, args: argparse.Namespace, out: Path, command: str) -> None:
    fmt = bench_runs.mean_std
    minutes = run_minutes(out, args.task)
    lines = ["# Offline-to-online claims", "", f"Command: `{command}` (the runs took {minutes:.0f} min summed, "
             f"{args.workers} at a time on 2 CPU cores, one torch thread each)", "",
             f"{args.task}: {args.offline_steps} offline updates, {args.online_steps} online steps, networks "
             f"{args.width}-{args.width}, {args.cql_actions} CQL actions per source, WSRL warm-up "
             f"{args.warmup_steps} steps, {len(args.seeds)} seeds, evaluated every {args.eval_every} offline "
             f"updates and {args.online_eval_every} online steps. Dip: offline-end score minus the lowest "
             f"score in the first {args.dip_window} online steps."
             + (f" Every online run also has `{' '.join(args.online_overrides)}`." if args.online_overrides else ""), "",
             "## Offline pretraining", "", "| run | offline end (normalised) |", "| --- | ---: |"]
    lines += [f"| {name} | {fmt(v)} |" for name, v in results["offline"].items()]
    lines += ["", "![offline curves](offline.png)", ""]
    for claim, table in results["claims"].items():
        lines += [f"## {claim}", "", "| run | offline end | dip | online end |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {label} | {fmt(r['offline_end'])} | {fmt(r['dip'])} | {fmt(r['online_end'])} |"
                  for label, r in table.items()]
        lines += ["", f"![score]({claim}_score.png) ![mean Q]({claim}_q.png)", ""]
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="hopper-medium")
    parser.add_argument("--claims", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    add_run_arguments(parser, offline_steps=20_000, online_steps=10_000, warmup_steps=2_500, eval_every=500)
    parser.set_defaults(width=64, cql_actions=2)  # the 10-critic CQL at 18 updates/s on one core (128/4: 5)
    parser.add_argument("--online-eval-every", type=int,
                        help="online steps between evaluations (default: --eval-every); a dip shorter than the "
                        "evaluation grid is invisible")
    parser.add_argument("--dip-window", type=int, default=5_000, help="online steps in which a dip is measured")
    parser.add_argument("--out", help="default: benchmarks/o2o_claims/<claims, joined by ->")
    parser.add_argument("--offline-from", type=Path, help="fine-tune the offline runs of another claims folder "
                        "(finished ones are reused; the online runs go to --out)")
    parser.add_argument("--online-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every online run (after the claim's own)")
    args = parser.parse_args(argv)
    args.online_eval_every = args.online_eval_every or args.eval_every
    command = bench_runs.command_line("rlft.scripts.benchmark_o2o_claims", argv)
    out = Path(args.out or Path("benchmarks/o2o_claims") / "-".join(args.claims))
    out.mkdir(parents=True, exist_ok=True)
    bench_runs.run_parallel(lambda c: run_chain(c, out, args.offline_from), build_chains(args), args.workers)
    results = summarise(args, out)
    results["command"] = command
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, args, out, command)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
