"""The ``rlft`` console command: a Hydra app that runs (or resumes) an offline-to-online experiment.

    rlft                                   # embedded default: SPOT on the shipped hopper-medium data
    rlft dataset=hopper-medium-replay seed=1 trainer.online_steps=50000
    rlft -m seed=0,1,2                     # local sweep (Hydra multirun)
    rlft resume=runs/spot_hopper-medium/<timestamp>
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlft.runtime.experiment import Experiment
from rlft.scripts.cli import console_entry, run_or_resume


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the experiment ``cfg`` in ``run_dir`` (resuming when ``cfg.resume`` is set) and print scores."""
    results, run_dir = run_or_resume(cfg, run_dir, Experiment, "rlft")
    print_summary(results, run_dir)
    return results


def print_summary(results: dict, run_dir: str | Path) -> None:
    """Before/after scores of an offline-to-online run."""
    rows = [("offline end (before fine-tuning)", results.get("offline_end")),
            ("online end (after fine-tuning)", results.get("online_end"))]
    print(f"\n{results['task']} | dataset {results['dataset']['source']}")
    for label, record in rows:
        if record is not None:
            print(f"  {label:<34} normalised score {record['normalized_score']:6.1f} ± {record['normalized_score_std']:5.1f}"
                  f"   (return {record['return_mean']:.1f}, {len(record['returns'])} episodes)")
    print(f"  run folder: {run_dir}")


main = console_entry("config", run)  # the console command


if __name__ == "__main__":
    main()
