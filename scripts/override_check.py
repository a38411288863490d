"""The ``rlft`` command's check of its overrides before Hydra composes anything: a mistyped
experiment, group option or key gets one line naming it, the closest known names and where the
known ones are listed, instead of Hydra's multi-line output (whose ``+key`` advice is wrong for
rlft's typed sections), and no run folder is made.

    experiment=o2o/wsrl/hoper-medium  ->  no experiment 'o2o/wsrl/hoper-medium' (did you mean ...?)
    agent=sacc                        ->  agent=sacc: no such option of group 'agent' (did you mean 'sac'?)
    trainer.onlinesteps=5             ->  unknown key 'trainer.onlinesteps' (did you mean 'trainer.online_steps'?)
"""

from __future__ import annotations

from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlft.common.suggest import did_you_mean
from rlft.scripts.catalog import CONFIG_DIR, chosen_groups, config_groups, experiments, group_options

DEFAULT_EXPERIMENT = "demo"  # configs/config.yaml's experiment default


def check_overrides(args: list[str]) -> str | None:
    """The one-line message for the first override that names nothing rlft has, or ``None``.

    Checked in order: the experiment; each ``group=option``; a group the chosen experiment does not
    use; each ``key=value`` (no ``+``/``++``/``~``: those add or delete on purpose and rlft's typed
    sections check what they add). A resumed run's overrides are ignored (its folder's config
    decides), and a malformed override is left to Hydra, which names the character it fails at."""
    # overrides hold "=" (or start with "~"); Hydra's flags and their values (--cfg job) do not
    overrides = _parse([a for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))])
    if overrides is None or any(o.key_or_group == "resume" for o in overrides):
        return None
    groups = config_groups()
    experiment_values = [_values(o) for o in overrides if o.key_or_group == "experiment" and o.package is None]
    experiment_names = experiment_values[-1] if experiment_values else [DEFAULT_EXPERIMENT]
    known_experiments = [name for entries in experiments().values() for name, _ in entries]
    for name in experiment_names:
        if name not in known_experiments:
            return (f"no experiment '{name}'{did_you_mean(name, known_experiments)}; `rlft --list` shows every "
                    "experiment")
    plain = [o for o in overrides if o.type.name == "CHANGE" and o.key_or_group != "experiment"]
    for override in (o for o in plain if o.key_or_group in groups and o.package is None):
        options = group_options(override.key_or_group)
        for value in _values(override):
            if value not in options and value != "null":
                return (f"{override.key_or_group}={value}: no such option of group '{override.key_or_group}'"
                        f"{did_you_mean(value, options)}; its options: {', '.join(options)}")
    if len(experiment_names) > 1:
        return None  # a sweep over experiments: each composes in its own job
    experiment = experiment_names[0]
    chosen = [o for o in plain if o.key_or_group in groups and o.package is None]
    keys = [o for o in plain if o.key_or_group not in groups and not o.key_or_group.startswith("hydra")]
    if not chosen and not keys:
        return None
    try:
        cfg = _compose(experiment, [])
        picked = {k for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra") and v is not None}
        for override in chosen:
            if override.key_or_group not in picked:
                return _foreign_group(override.key_or_group, experiment, str(cfg.pipeline.name), picked)
        if chosen and keys:  # the keys of the groups as chosen
            cfg = _compose(experiment, [f"{o.key_or_group}={_values(o)[0]}" for o in chosen])
    except Exception:  # noqa: BLE001  Hydra's own errors for a config that does not compose are precise
        return None
    for override in keys:
        problem = _unknown_key(cfg, override.key_or_group, experiment)
        if problem:
            return problem
    return None


def _parse(args: list[str]) -> list[Override] | None:
    try:
        return OverridesParser.create().parse_overrides(args)
    except Exception:  # noqa: BLE001  Hydra reports a malformed override itself, pointing at the character
        return None


def _values(override: Override) -> list[str]:
    """The option(s) an override names: one, or each of a sweep's choices."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _compose(experiment: str, group_overrides: list[str]) -> DictConfig:
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", [f"experiment={experiment}", *group_overrides], return_hydra_config=True)


def _foreign_group(group: str, experiment: str, pipeline: str, picked: set[str]) -> str:
    """A group the experiment's pipeline does not use: which experiments do."""
    own = ", ".join(sorted(picked - {"experiment", "pipeline"}))
    pipeline_groups = {path.stem: set(chosen_groups(path)) for path in (CONFIG_DIR / "pipeline").glob("*.yaml")}
    users = [(p, name) for p, entries in experiments().items() for name, _ in entries
             if group in pipeline_groups.get(p, set())
             or group in chosen_groups(CONFIG_DIR / "experiment" / f"{name}.yaml")]
    if not users:
        return f"'{group}' is not chosen by any experiment; `rlft --list` shows every experiment."
    pipelines = ", ".join(sorted({p for p, _ in users}))
    return (f"'{group}' is not a group of experiment '{experiment}' (pipeline {pipeline}; its groups: {own}). "
            f"It belongs to the {pipelines} pipeline: e.g. rlft experiment={users[0][1]} {group}=... "
            "(`rlft --list` shows every experiment).")


def _unknown_key(cfg: DictConfig, key: str, experiment: str) -> str | None:
    """A message when ``key`` (dotted) is not in the composed config, naming the closest keys of the
    deepest section that exists; ``None`` when it is there. Inside a free-form mapping that is empty
    (``env.env_kwargs``) a new key is legitimate and the message says to add it with ``+``."""
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if isinstance(node, DictConfig) and part in node.keys():  # `in` alone misses a mandatory ??? value
            node = None if OmegaConf.is_missing(node, part) else node[part]
            continue
        section = ".".join(parts[:depth])
        if isinstance(node, DictConfig) and len(node) == 0 and section:
            return (f"{key}: '{section}' is an empty mapping; add a key to it with +{key}=<value> "
                    f"(experiment '{experiment}')")
        known = sorted(str(k) for k in node.keys() if k != "hydra") if isinstance(node, DictConfig) else []
        hint = did_you_mean(part, known, prefix=f"{section}." if section else "")
        where = f"section '{section}'" if section else "the top level"
        listed = f"; the keys of {where}: {', '.join(known)}" if known and len(known) <= 12 else ""
        return (f"unknown key '{key}' for experiment '{experiment}' (pipeline {cfg.pipeline.name}){hint}{listed}; "
                f"`rlft experiment={experiment} --cfg job` prints every key")
    return None

