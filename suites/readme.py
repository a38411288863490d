"""The README's result tables, generated from suite reports (``rlft-bench readme``).

A table in the README is a block between two markers naming its suite::

    <!-- rlft-bench table: o2o -->
    | ... written by rlft-bench readme ... |
    <!-- end rlft-bench table -->

Its rows are the suite's methods, its columns the tasks of the tier its ``readme:`` key names,
and each cell the IQM at the end of pretraining and at the end (with the 95 % interval and the
verdict, :func:`rlft.suites.report.verdict`, when the suite asks for them), read from
``benchmarks/<suite>/<tier>/results.json``; below the table, each task's protocol and every
published reference with its source and whether its protocol matches. ``--check`` says which blocks
differ from their reports (a test runs it), so a table never drifts from its numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rlft.suites.report import RESULTS_JSON, RESULTS_MD, verdict_word
from rlft.suites.spec import Suite, SuiteError, load_suite

BLOCK = re.compile(r"(<!-- rlft-bench table: (?P<suite>[^ ]+) -->\n)(?P<body>.*?)(<!-- end rlft-bench table -->)",
                   re.DOTALL)


def _number(stat: dict[str, Any]) -> str:
    return "-" if stat.get("iqm") is None else f"{stat['iqm']:.1f}"


def _cell(cell: dict[str, Any] | None, columns: tuple[str, ...]) -> str:
    if cell is None or cell["score"]["iqm"] is None:
        return "-"
    parts = []
    if "start" in columns and cell["start"]["iqm"] is not None:
        parts.append(f"{_number(cell['start'])} → ")
    parts.append(_number(cell["score"]))
    low, high = cell["score"]["ci"]
    if "ci" in columns and low is not None:
        parts.append(f" [{low:.1f}, {high:.1f}]")
    if "splits" in columns:
        parts.extend(f" / {_number(stat)}" for stat in cell["splits"].values())
    if "verdict" in columns and "verdict" in cell:
        parts.append(f" ({verdict_word(cell['verdict']['passes'])})")
    return "".join(parts)


def table(suite: Suite, benchmarks: Path) -> str:
    """The markdown table of ``suite``'s README tier, from its report."""
    if suite.readme is None:
        raise SuiteError(f"{suite.path} has no readme: key, so it has no README table")
    tier = suite.readme["tier"]
    path = benchmarks / suite.name / tier / RESULTS_JSON
    if not path.is_file():
        raise SuiteError(f"{path} does not exist: run `rlft-bench run {suite.name} tier={tier}` (or `rlft-bench "
                         f"report {suite.name} tier={tier}` if its runs are done)")
    results = json.loads(path.read_text())
    columns = tuple(suite.readme.get("columns", ("start", "score")))
    tasks = [t for t in suite.readme.get("tasks", results["tasks"]) if t in results["tasks"]]
    methods = [m for m in suite.methods if any(m in results["tasks"][t] for t in tasks)]
    shown = "start → end, " if "start" in columns else ""
    if "splits" in columns and results["splits"]:
        shown += f"then {' / '.join(results['splits'])}, "
    done, total = results["runs_done"].split("/")
    progress = "" if done == total else f"; {done} of {total} runs done, the rest still running"
    header = (f"| {suite.readme['title']} ({results['unit']}, {shown}IQM over seeds"
              f"{', [95 % CI]' if 'ci' in columns else ''}; `benchmarks/{suite.name}/{tier}/{RESULTS_MD}`{progress}) | "
              + " | ".join(tasks) + " |")
    lines = [header, "| --- |" + " ---: |" * len(tasks)]
    labels = {m: next(results["tasks"][t][m].get("label") or m for t in tasks if m in results["tasks"][t])
              for m in methods}  # as the runs were labelled: a renamed or re-recipied method keeps its old runs' name
    for method in methods:
        label = labels[method]
        cells = (_cell(results["tasks"][t].get(method), columns) for t in tasks)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if "verdict" in columns:
        against = " and ".join(suite.methods[m].title for m in suite.verdict_against)
        lines.append(f"* (fine-tunes): the final interval lies above the method's own offline-only control's"
                     f"{' and above ' + against + ' at as many online steps' if against else ''}; (no): it does not; "
                     "(not judged): an interval is missing.")
    for task in tasks:
        protocol = "; ".join(f"{k} {v}" for k, v in results["tasks"][task]["_task"]["protocol"].items())
        lines.append(f"* {task}: {protocol}.")
    for task in tasks:
        for method in methods:
            for ref in (results["tasks"][task].get(method) or {}).get("references", []):
                flag = "protocol matches" if ref["protocol_matches"] else f"protocol differs: {ref['differences']}"
                spread = f" {ref['spread']}" if ref["spread"] else ""
                lines.append(f"* published, {labels[method]} on {task}: {ref['value']:g}{spread} "
                             f"({ref['source']}; {flag})")
    return "\n".join(lines) + "\n"



def render(readme: str, benchmarks: Path) -> str:
    """``readme`` with every marked block replaced by its suite's table."""
    def replace(match: re.Match[str]) -> str:
        return match.group(1) + table(load_suite(match.group("suite")), benchmarks) + match.group(4)

    return BLOCK.sub(replace, readme)


def stale_blocks(readme: str, benchmarks: Path) -> list[str]:
    """The suites whose README block differs from the table their report makes."""
    return [m.group("suite") for m in BLOCK.finditer(readme)
            if m.group("body") != table(load_suite(m.group("suite")), benchmarks)]
