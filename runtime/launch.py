"""Start or resume a run of any pipeline: the config names its runner (``pipeline.runner``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_data:} and ${rlft_or:}
from rlft.runtime.run_folder import CONFIG_FILE
from rlft.runtime.runner import Runner


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config a run folder was started with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (is {run_dir} an rlft run folder?)")
    return OmegaConf.load(path)


def runner_class(cfg: DictConfig) -> type[Runner]:
    """The :class:`Runner` subclass the config's pipeline names."""
    if "pipeline" not in cfg or "runner" not in cfg.pipeline:
        raise ValueError("the config names no pipeline (pipeline.runner); choose an experiment (rlft --list)")
    cls = get_class(cfg.pipeline.runner)
    if not issubclass(cls, Runner):
        raise TypeError(f"pipeline.runner {cfg.pipeline.runner} is not an rlft Runner")
    return cls


def build(cfg: DictConfig, run_dir: str | Path) -> tuple[Runner, Path]:
    """The runner for ``cfg`` in ``run_dir``; with ``cfg.resume`` set, the runner of that folder
    with its saved config and newest checkpoint loaded instead."""
    run_dir = Path(run_dir)
    resume = cfg.get("resume")
    if resume:
        run_dir = Path(resume)
        cfg = load_run_config(run_dir)
        print(f"resuming {run_dir} with its saved config (other overrides are ignored)")
    runner = runner_class(cfg)(cfg, run_dir)
    if resume and not runner.resume():
        raise FileNotFoundError(f"cannot resume: no checkpoint in {run_dir / 'checkpoints'}")
    return runner, run_dir


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def summary(results: dict[str, Any], run_dir: str | Path) -> str:
    """The before/after lines every pipeline prints at the end of a run."""
    lines = [f"\n{results['method']} on {results['task']} ({results['pipeline']}) | {results['source']}"]
    for label, record in (("before fine-tuning", results.get("before")), ("after fine-tuning", results.get("after"))):
        if record is None:
            continue
        parts = []
        if results["metric"] == "normalized_score" and _finite(record["normalized_score"]):
            parts.append(f"normalised score {record['normalized_score']:6.1f} ± {record['normalized_score_std']:5.1f}")
        if _finite(record["success_rate"]):
            parts.append(f"success {100 * record['success_rate']:5.1f}%")
        parts.append(f"return {record['return_mean']:.1f}")
        lines.append(f"  {label} ({record['phase']})".ljust(36) + "   ".join(parts)
                     + f"   ({len(record['returns'])} episodes, step {record['step']})")
    lines.append(f"  run folder: {run_dir}")
    return "\n".join(lines)
