"""The layout stays true: imports between rlft's folders only point down the floors of
``docs/architecture.md``, so no folder imports one above it and no two folders import each other.

    scripts -> suites -> api -> export -> runtime -> agents -> offline -> policies -> envs -> common

``deploy`` (the torch-free runner) imports no other folder, and ``configs`` holds YAML only.
Every ``import``/``from ... import`` counts, also those inside functions (imported lazily, they
are still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["common", "envs", "policies", "offline", "agents", "runtime", "export", "api", "suites", "scripts"]  # bottom to top
ALONE = {"deploy", "configs"}  # import no other folder


def _folder_imports() -> list[tuple[str, str, int, str]]:
    """(importing module's file, imported folder, line, imported module) for every import of another folder."""
    found = []
    for folder in [*FLOORS, *ALONE]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "rlft" and len(parts) > 1 and parts[1] != folder:
                        found.append((str(path.relative_to(ROOT)), parts[1], node.lineno, name))
    return found


def test_imports_between_folders_only_point_down():
    rank = {name: i for i, name in enumerate(FLOORS)}
    wrong = []
    for file, target, line, module in _folder_imports():
        source = file.split("/")[0]
        if source in ALONE:
            wrong.append(f"{file}:{line} imports {module}, but {source}/ imports no other folder")
        elif target in rank and rank[target] > rank[source]:
            wrong.append(f"{file}:{line} imports {module}, a floor above {source}/")
        elif target not in rank and target not in ALONE:
            wrong.append(f"{file}:{line} imports {module}, a folder outside the layout")
    assert not wrong, "\n".join(wrong)


def test_the_floors_are_every_package_folder():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(FLOORS) | ALONE, packages ^ (set(FLOORS) | ALONE)
