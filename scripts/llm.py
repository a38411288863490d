"""The ``rlft-llm`` console command: a language policy on a text task, optional SFT on
transcripts, then PPO over turns or GRPO; see ``configs/llm.yaml``.

    rlft-llm                                   # PPO with a tiny Llama on NumberLine
    rlft-llm text_task=text-frozenlake text_method=grpo seed=1
    rlft-llm resume=runs/ppo_numberline/<timestamp>
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_or:}
from rlft.runtime.text_train import TextExperiment
from rlft.scripts.cli import console_entry, run_or_resume


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run (or resume) ``cfg`` in ``run_dir`` and print the success rate before and after RL."""
    results, run_dir = run_or_resume(cfg, run_dir, TextExperiment, "rlft-llm")
    print(f"\n{results['method']} on {results['task']} | model {results['model']}")
    for label, record in (("before RL", results.get("before")), ("after RL", results.get("final"))):
        if record is not None:
            print(f"  {label:<10} success {100 * record['success_rate']:5.1f}%   return {record['return_mean']:6.2f}"
                  f"   ({len(record['returns'])} episodes, after {record['step']} training episodes)")
    print(f"  run folder: {run_dir}")
    return results


main = console_entry("llm", run)  # the console command


if __name__ == "__main__":
    main()
