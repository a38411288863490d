"""Start or resume a run of any pipeline: the config names its runner (``pipeline.runner``)."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

import rlft.configs
from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_data:} and ${rlft_or:}
from rlft.runtime.run_folder import CONFIG_FILE
from rlft.runtime.run_identity import RunOrigin
from rlft.runtime.runner import Runner
from rlft.common.typed_config import ConfigError


def load_run_config(run_dir: str | Path, action: str = "resume") -> DictConfig:
    """The resolved config a run folder was started with; a missing, empty, cut-short or
    unparsable ``config.yaml`` is an error naming it and what could not be done (``action``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot {action}: {path} does not exist (is {run_dir} an rlft run folder?)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001  YAML and OmegaConf raise many types for a broken file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot {action}: {path} is not readable YAML ({first}); the run's config was damaged, "
                         "so start a new run (its checkpoints cannot be trusted to match another config)") from None
    if not isinstance(cfg, DictConfig) or "pipeline" not in cfg or "seed" not in cfg:
        raise ValueError(f"cannot {action}: {path} is empty or cut short (it names no pipeline or seed); the run's "
                         "config was damaged, so start a new run")
    return cfg


def runner_class(cfg: DictConfig) -> type[Runner]:
    """The :class:`Runner` subclass the config's pipeline names (only rlft's own: a config file is
    data, and importing a module it names would run that module's code)."""
    if "pipeline" not in cfg or "runner" not in cfg.pipeline:
        raise ValueError("the config names no pipeline (pipeline.runner); choose an experiment (rlft --list)")
    name = str(cfg.pipeline.runner)
    if not name.startswith("rlft.runtime."):
        raise ValueError(f"pipeline.runner={name!r}: not one of rlft's runners (rlft.runtime.*)")
    try:
        cls = get_class(name)
    except Exception:  # noqa: BLE001  Hydra wraps import failures in several types
        raise ValueError(f"pipeline.runner={name!r}: no such runner in rlft.runtime") from None
    if not isinstance(cls, type) or not issubclass(cls, Runner):
        raise TypeError(f"pipeline.runner {name} is not an rlft Runner")
    return cls


ROOT_KEYS = frozenset({"seed", "device", "threads", "progress", "resume", "init_from", "tracker", "pipeline", "hydra"})


@functools.cache
def config_groups() -> frozenset[str]:
    """The config groups: the folders of ``configs/``."""
    root = Path(rlft.configs.__file__).resolve().parent
    return frozenset(path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith("_"))


@functools.cache
def known_top_level_keys() -> frozenset[str]:
    """The top-level keys a shipped config can set: the config groups (folders of ``configs/``),
    :data:`ROOT_KEYS` and every key a ``# @package _global_`` file (pipelines, experiments) writes."""
    root = Path(rlft.configs.__file__).resolve().parent
    keys = set(ROOT_KEYS) | config_groups()
    for path in root.rglob("*.yaml"):
        text = path.read_text()
        if "@package _global_" in text and isinstance(content := yaml.safe_load(text), dict):
            keys.update(content)
    return frozenset(keys - {"defaults"})


def check_top_level_keys(cfg: DictConfig) -> None:
    """Refuse a top-level key no part of rlft reads (``+bogus=1``: Hydra's ``+`` adds any key),
    naming the keys there are; keys inside a section are checked by that section's dataclass."""
    unknown = sorted(set(cfg.keys()) - known_top_level_keys())
    if unknown:
        shown = sorted(ROOT_KEYS - {"hydra", "pipeline"})
        raise ConfigError(f"unknown top-level key(s) {unknown}: no part of rlft reads them; the keys of every run are "
                          f"{shown}, and each pipeline's sections are listed by `rlft experiment=<name> --cfg job`")


def check_recipe(cfg: DictConfig, choices: Mapping[str, str]) -> None:
    """Refuse an agent a recipe is not written for (``experiment=o2o/wsrl/... agent=iql`` would run
    IQL with WSRL's warm-up, UTD and data ratio under WSRL's name) unless
    ``recipe.allow_other_agents=true`` (then ``run.json`` records the mix)."""
    recipe, agent = cfg.get("recipe"), choices.get("agent")
    if recipe is None or agent is None or agent in recipe.agents or recipe.get("allow_other_agents"):
        return
    fits = " or ".join(str(a) for a in recipe.agents)
    raise ConfigError(f"agent={agent}: experiment '{choices.get('experiment')}' uses recipe '{recipe.name}', written "
                      f"for agent {fits}; its trainer settings (warm-up, updates per step, data ratio) would run {agent} "
                      f"unlike any reference. Choose an experiment of {agent} (`rlft --list`), or add "
                      "recipe.allow_other_agents=true to run the mix anyway (recorded in run.json)")


RESUME_SETTINGS = ("progress", "threads")  # how a resumed run shows and computes, not what it learns


def resume_config(saved: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The saved config of a run being resumed, with the overrides a resume may make: a larger
    fine-tuning budget (the runner's ``budget_key``: the run goes on, or a finished one re-opens
    its last phase), ``progress`` and ``threads``. An override that repeats the saved value is
    fine (the suites resume with the command that started the run); one that would change
    anything else is refused by name, since the checkpoints were made under the saved config.
    Group choices (``experiment=...``) are the run's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key = runner_class(saved).budget_key
    cfg = saved.copy()
    for override in OverridesParser.create().parse_overrides([o for o in overrides if "=" in o]):
        name = override.key_or_group
        if name == "resume" or name.startswith("hydra") or name in config_groups():
            continue  # the folder, Hydra's settings, and group choices: the saved config holds what they chose
        value = override.value()
        current = OmegaConf.select(saved, name, default=None)
        current = OmegaConf.to_container(current) if isinstance(current, (DictConfig, ListConfig)) else current
        if value == current:
            continue
        if name == key and isinstance(value, int) and isinstance(current, int) and value > current:
            OmegaConf.update(cfg, name, value)
            print(f"extending the run: {name} {current} -> {value}")
        elif name in RESUME_SETTINGS:
            OmegaConf.update(cfg, name, value)
        else:
            allowed = f"{key} (larger, to extend the run)" if key else "no budget"
            raise ConfigError(f"resume: {name}={override.get_value_element_as_str()} would change the run's config "
                              f"({name} is {current!r} there); a resume may change only {allowed}, "
                              f"{' and '.join(RESUME_SETTINGS)}. Start a new run (init_from=<run> reuses its "
                              "pretraining) for other settings")
    return cfg


def build(cfg: DictConfig, run_dir: str | Path, origin: RunOrigin | None = None) -> tuple[Runner, Path]:
    """The runner for ``cfg`` in ``run_dir``; with ``cfg.resume`` set, the runner of that folder
    with its saved config and newest checkpoint loaded instead. ``origin`` (how the run was asked
    for) is checked against the recipe and written to the folder's ``run.json``."""
    run_dir = Path(run_dir)
    resume = cfg.get("resume")
    if resume:
        run_dir = Path(resume)
        cfg = resume_config(load_run_config(run_dir), origin.overrides if origin else ())
        print(f"resuming {run_dir} with its saved config")
    else:
        check_top_level_keys(cfg)
        check_recipe(cfg, origin.choices if origin else {})
    runner = runner_class(cfg)(cfg, run_dir)
    runner.origin = origin
    if resume and not runner.resume():
        raise FileNotFoundError(f"cannot resume: no checkpoint in {run_dir / 'checkpoints'}")
    if not resume and cfg.get("init_from"):
        runner.prepare_init_from()
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
        lines.append(f"  {label} ({record['phase']})".ljust(36) + " " + "   ".join(parts)
                     + f"   ({len(record['returns'])} episodes, step {record['step']})")
    lines.append(f"  run folder: {run_dir}")
    if (Path(run_dir) / "learning_curve.png").is_file():
        lines.append(f"  learning curve: {Path(run_dir) / 'learning_curve.png'}")
    return "\n".join(lines)
