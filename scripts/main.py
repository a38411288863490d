"""The ``rlft`` console command: one Hydra app for every pipeline. The experiment names its
pipeline (``configs/pipeline/``), and the pipeline's runner does the rest.

    rlft                                        # experiment=demo: SPOT on the shipped hopper-medium data
    rlft experiment=finetune/dppo/mw-push       # BC -> PPO
    rlft experiment=llm/ppo/numberline          # SFT -> language RL
    rlft --list                                 # every experiment, grouped by pipeline
    rlft resume=runs/spot_hopper-medium/<timestamp>
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_or:} and ${rlft_data:} for Hydra
from rlft.scripts import catalog

# bad input that ends a run before it starts with one line (DatasetError is a ValueError)
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, TypeError)


def _error(message: str) -> None:
    print(f"rlft: error: {message}", file=sys.stderr)
    if os.environ.get("RLFT_TRACEBACK"):
        raise
    print("  (RLFT_TRACEBACK=1 shows the traceback)", file=sys.stderr)


def _remove_if_unused(run_dir: Path) -> None:
    """Remove the empty folder Hydra created for a run that never started (and ``runs/<name>/``
    when that is left empty)."""
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
        parent = run_dir.parent
        if parent.parent.name == "runs" and not any(parent.iterdir()):
            parent.rmdir()


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies inside it (shorter to read and paste)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def run(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    """Build the experiment's runner (or resume one), run it and print its before/after scores.
    Bad input ends with one line naming what is wrong; Ctrl-C with the command that resumes."""
    from rlft.runtime.checkpoint import latest_checkpoint  # torch and the envs load here, not for --help
    from rlft.runtime.launch import build, summary
    from rlft.runtime.runner import RunError

    run_dir = _shown(Path(run_dir))
    try:
        runner, run_dir = build(cfg, run_dir)
    except USER_ERRORS as err:
        _remove_if_unused(run_dir)
        _error(str(err))
        sys.exit(2)
    except KeyboardInterrupt:
        _remove_if_unused(run_dir)
        print("\ninterrupted before the run started: nothing was saved", file=sys.stderr)
        sys.exit(130)
    try:
        results = runner.run()
    except USER_ERRORS as err:
        _error(str(err))
        sys.exit(2)
    except RunError as err:
        _error(str(err))
        sys.exit(1)
    except KeyboardInterrupt:
        if latest_checkpoint(run_dir / "checkpoints") is not None:
            print(f"\ninterrupted: continue from the last checkpoint with `rlft resume={run_dir}`", file=sys.stderr)
        else:
            print(f"\ninterrupted before the first checkpoint: nothing to resume in {run_dir}", file=sys.stderr)
        sys.exit(130)
    print(summary(results, run_dir))
    return results


@hydra.main(version_base="1.3", config_path="pkg://rlft.configs", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    run(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    """The console entry point: ``--list`` and ``--help`` are rlft's own; the rest is Hydra's."""
    args = sys.argv[1:]
    if "--list" in args:
        print(catalog.listing(), end="")
        return
    if "--help" in args or "-h" in args:
        print(catalog.help_text([a for a in args if a not in ("--help", "-h")]), end="")
        return
    problem = catalog.check_overrides(args)
    if problem:
        print(f"rlft: error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.exit(hydra_main())


if __name__ == "__main__":
    main()
