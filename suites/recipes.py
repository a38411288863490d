"""The reference recipes against rlft's configs, value by value (``rlft-bench recipes``).

``suites/recipes.yaml`` names, for each recipe (RL4VLM's PPO, RL4VLA's PPO, SimpleVLA-RL's GRPO,
ArCHer, online filtered BC), the experiment that runs it and, row by row, where the reference code
sets a value and what it is. rlft's value is read from the composed experiment (``key``), or for a
mechanism stated in words with the test that checks it (``rlft`` + ``test``). The rendered table
(``benchmarks/recipes.md``) says "same" only where the values are equal and "rlft's: <why>"
elsewhere; a row that would say neither (a difference without a reason, a reason without a
difference, a mechanism without its test) is refused, so a recipe cannot drift from its claim.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

RECIPES_YAML = Path(__file__).parent / "recipes.yaml"
RECIPES_MD = Path("benchmarks/recipes.md")


class RecipeError(ValueError):
    """A row of ``suites/recipes.yaml`` that cannot be rendered honestly."""


@dataclass(frozen=True)
class Row:
    what: str
    at: str  # the reference's file:line
    value: Any  # the reference's value
    key: str | None = None  # dotted path(s) in the composed experiment, "a * b" multiplies
    rlft: str | None = None  # a mechanism in words, instead of a key
    same: bool | None = None  # for a mechanism: whether it is the reference's
    why: str | None = None  # the reason rlft differs
    test: str | None = None  # tests/<file>.py::<test> that checks a mechanism
    shown: str | None = None  # how the reference's value reads, where ``value`` is its comparable form


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    source: str  # owner/repo@commit
    experiment: str
    rows: tuple[Row, ...]


def load_recipes(path: Path = RECIPES_YAML) -> list[Recipe]:
    data = yaml.safe_load(path.read_text())
    recipes = []
    for name, entry in data.items():
        try:
            rows = tuple(Row(**row) for row in entry["rows"])
            recipes.append(Recipe(name, entry["title"], entry["source"], entry["experiment"], rows))
        except (KeyError, TypeError) as err:
            raise RecipeError(f"{path}: recipe {name!r}: {err} (each needs title, source, experiment and rows of "
                              "what, at, value, and key or rlft)") from None
    return recipes


def _lookup(cfg: Any, key: str) -> Any:
    values = []
    for part in key.split("*"):
        value = OmegaConf.select(cfg, part.strip(), throw_on_missing=True, default="<missing>")
        if value == "<missing>":
            raise RecipeError(f"no {part.strip()!r} in the composed experiment")
        values.append(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    return math.prod(values) if len(values) > 1 else values[0]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        return f"{value:.0e}".replace("e-0", "e-")
    return str(value)


def _test_exists(test: str, root: Path) -> bool:
    file, _, name = test.partition("::")
    path = root / file
    return path.is_file() and re.search(rf"^def {re.escape(name)}\(", path.read_text(), re.MULTILINE) is not None


def _compose(experiment: str) -> Any:
    from hydra import compose, initialize_config_module

    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", [f"experiment={experiment}"])


def render_row(recipe: Recipe, row: Row, cfg: Any, root: Path) -> str:
    where = f"recipe {recipe.name!r}, row {row.what!r}"
    if (row.key is None) == (row.rlft is None):
        raise RecipeError(f"{where}: give exactly one of key (a config path) and rlft (a mechanism in words)")
    if row.key is not None:
        ours = _lookup(cfg, row.key)
        same = _equal(row.value, ours)
        ours_text = f"{_shown(ours)} (`{row.key}`)"
    else:
        if row.same is None:
            raise RecipeError(f"{where}: a mechanism row says whether it is the reference's (same: true|false)")
        same, ours_text = row.same, row.rlft
        if same and not row.test:
            raise RecipeError(f"{where}: a mechanism claimed the same needs the test that checks it (test: file::name)")
    if row.test and not _test_exists(row.test, root):
        raise RecipeError(f"{where}: no test {row.test} (tests/<file>.py::<function>)")
    if same and row.why:
        raise RecipeError(f"{where}: the values match ({_shown(row.value)}) but the row gives a reason for a difference")
    if not same and not row.why:
        raise RecipeError(f"{where}: rlft has {ours_text}, the reference {_shown(row.value)}: say why (why: ...)")
    verdict = "same" if same else f"rlft's: {row.why}"
    if row.test:
        verdict += f" (`{row.test}`)"
    reference = row.shown if row.shown is not None else _shown(row.value)
    cells = [row.what, row.at, reference, ours_text, verdict]
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def render(recipes: list[Recipe], root: Path = Path(".")) -> str:
    lines = ["# The reference recipes, value by value", "",
             "Written by `rlft-bench recipes` from `suites/recipes.yaml` and the composed experiments (`--check` "
             "compares; a test runs it). \"same\": rlft's composed config holds the reference's value; \"rlft's\": it "
             "differs, for the reason given. Reference paths are relative to the repository at the named commit.", ""]
    for recipe in recipes:
        cfg = _compose(recipe.experiment)
        rows = [render_row(recipe, row, cfg, root) for row in recipe.rows]
        differ = sum("| rlft's: " in r for r in rows)
        lines += [f"## {recipe.title}", "",
                  f"`rlft experiment={recipe.experiment}` against {recipe.source}: {len(rows) - differ} values the "
                  f"same, {differ} rlft's.", "",
                  "| value | reference (file:line) | reference's | rlft's | same? |",
                  "| --- | --- | --- | --- | --- |", *rows, ""]
    return "\n".join(lines)


def write(path: Path = RECIPES_MD, check: bool = False) -> bool:
    """Write (or with ``check`` compare) ``benchmarks/recipes.md``; True when it is up to date."""
    text = render(load_recipes())
    if check:
        return path.is_file() and path.read_text() == text
    path.write_text(text)
    return True
