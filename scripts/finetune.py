"""The ``rlft-finetune`` console command: behaviour cloning on demonstrations, then PPO
fine-tuning (DPPO, residual PPO or Gaussian PPO); see ``configs/finetune.yaml``.

    rlft-finetune                                  # DPPO on the shipped Meta-World push demos
    rlft-finetune method=residual seed=1
    rlft-finetune resume=runs/dppo_mw-push/<timestamp>
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_data:} and ${rlft_or:}
from rlft.runtime.finetune import FinetuneExperiment
from rlft.scripts.cli import console_entry, run_or_resume


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run (or resume) the fine-tuning experiment ``cfg`` in ``run_dir`` and print before/after scores."""
    results, run_dir = run_or_resume(cfg, run_dir, FinetuneExperiment, "rlft-finetune")
    print_summary(results, run_dir)
    return results


def print_summary(results: dict, run_dir: str | Path) -> None:
    """Scores of the behaviour-cloned policy and of the fine-tuned one."""
    print(f"\n{results['method']} on {results['task']} | dataset {results['dataset']['source']}")
    for label, record in (
        ("behaviour cloning (before)", results.get("bc")),
        ("after fine-tuning", results.get("final")),
    ):
        if record is not None:
            score, std = record["normalized_score"], record["normalized_score_std"]
            print(
                f"  {label:<28} normalised score {score:6.1f} ± {std:5.1f}"
                f"   ({len(record['returns'])} episodes, {record['step']} env steps)"
            )
    print(f"  run folder: {run_dir}")


main = console_entry("finetune", run)  # the console command


if __name__ == "__main__":
    main()
