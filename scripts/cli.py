"""What the ``rlft`` and ``rlft-finetune`` commands share: start or resume a run folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Protocol

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlft.runtime.experiment import load_run_config


class Resumable(Protocol):
    def resume(self) -> bool: ...

    def run(self) -> dict[str, Any]: ...


def run_or_resume(
    cfg: DictConfig, run_dir: str | Path, build: Callable[[DictConfig, Path], Resumable], command: str
) -> tuple[dict[str, Any], Path]:
    """Run ``build(cfg, run_dir)``; with ``cfg.resume`` set, continue that folder with its saved
    config instead. Returns the results and the run folder actually used."""
    run_dir = Path(run_dir)
    resume = cfg.get("resume")
    if resume:
        run_dir = Path(resume)
        cfg = load_run_config(run_dir)
        print(f"resuming {run_dir} with its saved config (other overrides are ignored)")
    experiment = build(cfg, run_dir)
    if resume and not experiment.resume():
        raise FileNotFoundError(f"cannot resume: no checkpoint in {run_dir / 'checkpoints'}")
    try:
        return experiment.run(), run_dir
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue from the last checkpoint with `{command} resume={run_dir}`", file=sys.stderr)
        raise


def console_entry(config_name: str, run: Callable[[DictConfig, str], Any]) -> Callable[[], None]:
    """A console entry point: the Hydra app over ``configs/<config_name>.yaml`` that calls
    ``run(cfg, run_dir)`` with Hydra's output folder as the run folder."""

    @hydra.main(version_base="1.3", config_path="pkg://rlft.configs", config_name=config_name)
    def hydra_main(cfg: DictConfig) -> None:
        run(cfg, HydraConfig.get().runtime.output_dir)

    def main() -> None:
        sys.exit(hydra_main())

    return main
