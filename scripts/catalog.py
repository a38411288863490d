"""What ``rlft --list`` and ``rlft --help`` show: the experiments by pipeline, and an experiment's
groups and their options."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hydra import compose, initialize_config_module

import rlft.configs

CONFIG_DIR = Path(rlft.configs.__file__).resolve().parent
DEFAULT_PIPELINE = "o2o"  # configs/config.yaml's pipeline default
PIPELINES = {
    "o2o": "offline-to-online: pretraining on a dataset, then online fine-tuning (world models too)",
    "finetune": "behaviour cloning on demonstrations, then PPO fine-tuning",
    "llm": "SFT of a language or vision-language(-action) policy, then RL (PPO over turns, GRPO, ArCHer, iRe-VLA)",
    "peer": "a peer library's learner (stable-baselines3) evaluated as rlft evaluates, for peer comparisons",
}
ROOT_KEYS = "seed, device, threads, progress, resume=<run dir>, init_from=<run dir>, tracker.*"
# a sentence ends at ". " before a capital, but not after an abbreviation ("Sec. 5", "et al. 2024", "e.g. X")
SENTENCE_END = re.compile(r"(?<!\bSec)(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bEq)(?<!\bFig)(?<!\bvs)(?<!\bApp)\.\s+(?=[A-Z(])")


def _defaults(path: Path) -> list:
    return (yaml.safe_load(path.read_text()) or {}).get("defaults", []) or []


def _description(path: Path, width: int = 110) -> str:
    """The first sentence of the comment block after the package line, cut to ``width``."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if "@package" not in line:
            words.append(line.lstrip("# ").strip())
    text = " ".join(words)
    sentence = SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rstrip() + "..."


def chosen_groups(path: Path) -> dict[str, str]:
    """group -> option of a config file's defaults list (``override`` and the leading ``/`` dropped)."""
    return {key.replace("override ", "").strip().lstrip("/"): str(value)
            for entry in _defaults(path) if isinstance(entry, dict) for key, value in entry.items()}


def experiment_pipeline(path: Path) -> str:
    """The pipeline an experiment file chooses (``override /pipeline: X``), or the one of an
    experiment it builds on (a ``/experiment/<name>`` default), else the default."""
    chosen = chosen_groups(path).get("pipeline")
    if chosen is not None:
        return chosen
    for entry in _defaults(path):
        if isinstance(entry, str) and entry.startswith("/experiment/"):
            return experiment_pipeline(CONFIG_DIR / f"{entry.lstrip('/')}.yaml")
    return DEFAULT_PIPELINE


def experiments() -> dict[str, list[tuple[str, str]]]:
    """Every experiment as (name, description), grouped by pipeline."""
    root = CONFIG_DIR / "experiment"
    grouped: dict[str, list[tuple[str, str]]] = {p: [] for p in PIPELINES}
    for path in sorted(root.rglob("*.yaml")):
        name = path.relative_to(root).with_suffix("").as_posix()
        grouped.setdefault(experiment_pipeline(path), []).append((name, _description(path)))
    return grouped


def group_options(group: str) -> list[str]:
    return sorted(p.relative_to(CONFIG_DIR / group).with_suffix("").as_posix()
                  for p in (CONFIG_DIR / group).rglob("*.yaml"))


def config_groups() -> set[str]:
    """The top-level config groups (folders of ``configs/``)."""
    return {p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")}


def choices(experiment: str) -> tuple[str, dict[str, str]]:
    """The pipeline and the group choices (group -> option) of an experiment as composed."""
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}"], return_hydra_config=True)
    picked = {k: v for k, v in cfg.hydra.runtime.choices.items()
              if not k.startswith("hydra") and "@" not in k and v is not None}
    return str(cfg.pipeline.name), picked


def listing() -> str:
    lines = ["rlft experiments by pipeline (run one with: rlft experiment=<name>)", ""]
    for pipeline, entries in experiments().items():
        lines.append(f"{pipeline}: {PIPELINES.get(pipeline, '')}")
        width = max((len(n) for n, _ in entries), default=0)
        lines += [f"  {name:<{width}}  {text}" for name, text in entries]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _chosen_experiment(overrides: list[str]) -> str:
    picked = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    return picked[-1] if picked else "demo"


def help_text(overrides: list[str]) -> str:
    experiment = _chosen_experiment(overrides)
    pipeline, picked = choices(experiment)
    lines = [
        "rlft: one command for every pipeline (a Hydra app).",
        "",
        "  rlft [experiment=<name>] [<group>=<option> ...] [<key>=<value> ...]",
        "  rlft resume=<run dir>          continue a run from its newest checkpoint",
        "  rlft -m seed=0,1,2 ...          a sweep (Hydra multirun; launchers: +launcher=ray|slurm)",
        "  rlft --list                     every experiment, grouped by pipeline",
        "  rlft experiment=<name> --help   this help for that experiment",
        "  rlft ... --cfg job              print the composed config and exit",
        "",
        f"experiment {experiment}: pipeline {pipeline} ({PIPELINES.get(pipeline, '')})",
        "groups you can choose for it (now chosen: *):",
    ]
    for group in sorted(g for g in picked if g not in ("experiment", "pipeline")):
        options = ", ".join(f"*{o}" if o == picked[group] else o for o in group_options(group))
        lines.append(f"  {group}: {options}")
    lines += ["", f"keys of every run: {ROOT_KEYS}; the pipeline's own keys: rlft experiment={experiment} --cfg job"]
    return "\n".join(lines) + "\n"
