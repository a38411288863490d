"""Plot one ``metrics.csv`` column of several run folders against their step, one line per run:
the curves of single attempts (e.g. a hyperparameter tried once) next to each other.

    python -m rlft.scripts.plot_runs --metric eval/success_rate --out benchmarks/llm_archer/attempts.png \
        --title "ArCHer on NumberLine, seed 0" "actor 10 x lr 1e-3=benchmarks/llm_archer/attempts/a-metrics.csv" ...

Each run is ``LABEL=PATH``, PATH a run folder or its ``metrics.csv``; each line is drawn at the
steps where its run logged the metric.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlft.runtime.plotting import plot_seed_curves
from rlft.scripts.bench_runs import metrics_curve


def parse_run(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` -> ``(label, metrics.csv path)``."""
    label, sep, path = text.rpartition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"a run is LABEL=PATH, got {text!r}")
    csv_path = Path(path) / "metrics.csv" if Path(path).is_dir() else Path(path)
    if not csv_path.is_file():
        raise argparse.ArgumentTypeError(f"{csv_path} does not exist")
    return label, csv_path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=parse_run, metavar="LABEL=PATH")
    parser.add_argument("--metric", default="eval/success_rate")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--xlabel", default="step")
    args = parser.parse_args(argv)
    curves = {label: [metrics_curve(path, args.metric)] for label, path in args.runs}
    return plot_seed_curves(curves, args.out, args.title or args.metric, args.xlabel, args.metric)


if __name__ == "__main__":
    main()
