"""A benchmark suite as a config: ``configs/suite/<name>.yaml`` read into a :class:`Suite`, and the
grid of one tier expanded into :class:`Job` s (one ``rlft`` run each).

A suite file holds (every key checked; an unknown or ill-typed one is refused naming the file,
the key and what it takes)::

    description: what the suite measures (one paragraph)
    metric: normalized_score          # the evaluation record key every score reads
    score_last: 3                     # a run's score: mean of the last 3 evaluations of its final phase
    seeds: [0, 1, 2]                  # default seeds (rlft-bench ... seeds=[3,4] runs others)
    tasks: [hopper-medium-local]      # the grid's columns; {task} in a method's experiment names it
    overrides: [...]                  # optional: every run of every tier ({task} names the column)
    methods:                          # the grid's rows, in the order of the report
      iql: {experiment: o2o/iql/{task}, overrides: [...], label: IQL, control: iql-control}
      iql-control: {experiment: ..., init_from: iql, overrides: [trainer.offline_control=true],
                    baseline: offline-only control}   # iql's own control: the verdict's first bar
      no-warmup: {experiment: ..., init_from: wsrl}   # fine-tunes the wsrl run's pretrained checkpoint
      archer: {experiment: ..., tasks: [numberline]}  # only on some of the tasks
    tiers:                            # smoke (CI), cpu (2 cores, hours), paper (the authors' budgets)
      cpu:
        overrides: [...]              # every run of the tier
        tasks: [...]                  # optional: a subset of the tasks
        methods: [...]                # optional: a subset of the methods
        seeds: [...]                  # optional: the tier's default seeds
        task_overrides: {hopper-medium-local: [...]}
        method_overrides: {wsrl: [...]}
        cell_overrides: {hopper-medium-local/iql: [...]}   # one task's run of one method
        note: why this tier differs from the paper's protocol
    protocol:                         # what the report states per tier, read from each run's config
      offline updates: trainer.offline_steps
      evaluation: {value: deterministic}   # a fact of every run, not a config key
      env steps: [trainer.online_steps, loop.steps]   # runs of different pipelines: the first key a run has
    references:                       # published numbers, each with provenance and protocol
      - {method: iql, task: hopper-medium-local, value: 66.3, source: "arXiv 2110.06169, Table 1", protocol: {...}}
    compare_to: sac                   # optional: P(improvement) of every method over this one (default: the first)
    verdict_against: [rlpd, sac]      # optional: a method with a control "fine-tunes" on a task only if its final
                                      # interval lies above its control's and above each of these methods'
    splits: [semantic, visual]        # optional: each run's final policy on other tasks (llm pipeline: loop.splits)
    dip_window: 5000                  # optional: each run's drop below its start in its first 5000 fine-tuning steps
    readme: {title: ..., tier: cpu, columns: [start, score, ci]}   # optional: the README table made from the report

A job's overrides are, in order (a later value of a key replaces an earlier one): ``progress=false
threads=1`` (periodic progress lines, one torch thread per run: the CPU facts in the README), the
method's experiment, the suite's overrides, the tier's overrides, the tier's task overrides, the
method's own overrides, the tier's overrides for that method and for that cell, and ``seed``;
``{task}`` in any of them names the column.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import rlft.configs

TIERS = ("smoke", "cpu", "paper")
RUN_OVERRIDES = ("progress=false", "threads=1")  # every suite run: periodic progress lines, one torch thread
RESERVED = frozenset({"runs", "summaries", "model", "base_model", "tb", "checkpoints"})  # folder names taken
_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")  # suite, method and task names: folder names, no spaces


class SuiteError(ValueError):
    """A suite file (or a request to run one) that cannot be used as it is; the message names the
    file, the key and the fix."""


def suites_dir() -> Path:
    """The folder of the shipped suite files (``configs/suite/``)."""
    return Path(rlft.configs.__file__).resolve().parent / "suite"


def suite_names() -> list[str]:
    """Every shipped suite, by name."""
    return sorted(path.stem for path in suites_dir().glob("*.yaml"))


@dataclass(frozen=True)
class Method:
    """One row of the grid."""

    name: str
    experiment: str  # ``{task}`` is replaced by the column's task
    overrides: tuple[str, ...] = ()
    label: str = ""  # the row's name in reports (default: ``name``)
    init_from: str | None = None  # a method whose run (same task and seed) this one fine-tunes from
    baseline: str | None = None  # an in-suite baseline, and which (e.g. "offline-only control")
    tasks: tuple[str, ...] | None = None  # the tasks it runs on (default: every task of the suite)
    control: str | None = None  # its offline-only control (a method of the suite): the verdict's first bar

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Tier:
    """A budget level of the suite: what every run of it overrides, on which part of the grid."""

    name: str
    overrides: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    task_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    method_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cell_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "<task>/<method>" -> overrides
    note: str = ""


@dataclass(frozen=True)
class Reference:
    """A published number, where it comes from and the protocol it was measured at."""

    method: str
    task: str
    value: float
    source: str  # paper table or repository file (with commit)
    protocol: dict[str, Any]
    spread: str = ""  # the published spread as printed ("± 3.8 std over 5 seeds")
    note: str = ""


@dataclass(frozen=True)
class Job:
    """One ``rlft`` run of a suite: a (task, method, seed) cell of a tier's grid."""

    task: str
    method: str
    seed: int
    overrides: tuple[str, ...]
    init_from: str | None = None  # the method whose run of the same task and seed it starts from
    parent_overrides: tuple[str, ...] = ()  # that run's overrides: part of this job's identity

    @property
    def key(self) -> str:
        """``<task>/<method>/seed<k>``: the job's folder under ``runs/`` and ``summaries/``."""
        return f"{self.task}/{self.method}/seed{self.seed}"

    @property
    def prerequisite(self) -> str | None:
        """The key of the job whose run this one is initialised from."""
        return f"{self.task}/{self.init_from}/seed{self.seed}" if self.init_from else None


@dataclass(frozen=True)
class Suite:
    """A suite file, checked."""

    name: str
    path: Path
    description: str
    metric: str
    score_last: int
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    methods: dict[str, Method]
    tiers: dict[str, Tier]
    protocol: dict[str, str | list[str] | dict[str, Any]]  # name -> config key (or keys: the first a run has),
    # or {value: what every run does}
    references: tuple[Reference, ...] = ()
    readme: dict[str, Any] | None = None
    compare_to: str = ""  # the method every other one's probability of improvement is measured against
    splits: tuple[str, ...] = ()  # other evaluations of each run's final policy to report (eval.json details.splits)
    overrides: tuple[str, ...] = ()  # every run of every tier ({task} names the column)
    dip_window: int | None = None  # report the drop below the start within this many steps of fine-tuning
    verdict_against: tuple[str, ...] = ()  # the bars besides its control a method must clear to "fine-tune"

    def tier(self, name: str) -> Tier:
        if name not in self.tiers:
            raise SuiteError(f"suite {self.name} has no tier {name!r}; its tiers are {sorted(self.tiers)} "
                             f"({self.path})")
        return self.tiers[name]

    def jobs(self, tier: str, seeds: tuple[int, ...] | None = None) -> list[Job]:
        """The tier's grid on ``seeds`` (default: the tier's, else the suite's), prerequisites
        before the jobs that start from them."""
        chosen = self.tier(tier)
        seeds = tuple(seeds if seeds is not None else chosen.seeds if chosen.seeds is not None else self.seeds)
        tasks = chosen.tasks if chosen.tasks is not None else self.tasks
        methods = chosen.methods if chosen.methods is not None else tuple(self.methods)
        missing = sorted({m.init_from for name in methods if (m := self.methods[name]).init_from} - set(methods))
        if missing:
            raise SuiteError(f"{self.path}: tier {tier} runs methods that start from {missing}, which it does not run; "
                             f"add them to tiers.{tier}.methods")
        jobs: list[Job] = []
        by_key: dict[str, Job] = {}
        for task in tasks:
            for name in _dependency_order(self.methods, methods):
                method = self.methods[name]
                if method.tasks is not None and task not in method.tasks:
                    continue
                levels = (self.overrides, chosen.overrides, chosen.task_overrides.get(task, ()), method.overrides,
                          chosen.method_overrides.get(name, ()), chosen.cell_overrides.get(f"{task}/{name}", ()))
                given = [override.replace("{task}", task) for level in levels for override in level]
                for seed in seeds:
                    overrides = [*RUN_OVERRIDES, f"experiment={method.experiment.replace('{task}', task)}", *given,
                                 f"seed={seed}"]
                    parent = by_key[f"{task}/{method.init_from}/seed{seed}"].overrides if method.init_from else ()
                    job = Job(task, name, seed, merge_overrides(overrides), method.init_from, parent)
                    by_key[job.key] = job
                    jobs.append(job)
        return jobs


def _dependency_order(methods: dict[str, Method], chosen: tuple[str, ...]) -> list[str]:
    """``chosen`` with each method after the one it starts from (the file's order otherwise)."""
    ordered: list[str] = []

    def place(name: str, seen: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in seen:
            raise SuiteError(f"methods {' -> '.join(seen + (name,))} start from each other in a circle")
        parent = methods[name].init_from
        if parent:
            place(parent, seen + (name,))
        ordered.append(name)

    for name in chosen:
        place(name, ())
    return ordered


def override_key(override: str) -> str:
    """The key an override sets (``+a.b=1`` and ``a.b=1`` both set ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(overrides: list[str]) -> tuple[str, ...]:
    """The overrides with a later value of a key replacing an earlier one, in first-seen order
    (Hydra itself refuses a key given twice on one command line)."""
    merged: dict[str, str] = {}
    for override in overrides:
        merged[override_key(override)] = override
    return tuple(merged.values())


# ------------------------------------------------------------------------------------------- loading
def load_suite(name_or_path: str | Path) -> Suite:
    """The suite ``configs/suite/<name>.yaml`` (or a suite file's path), checked."""
    path = Path(name_or_path)
    if path.suffix != ".yaml":
        path = suites_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SuiteError(f"no suite named {name_or_path!r}; the suites are {suite_names()} (configs/suite/)")
    elif not path.is_file():
        raise SuiteError(f"{path} does not exist: give a suite's name ({', '.join(suite_names())}) or a suite file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SuiteError(f"{path} is not readable YAML{where}: {getattr(error, 'problem', None) or error}; quote a "
                         "value that holds ': '") from None
    return _parse(path, data)


class _Reader:
    """Typed access to one mapping of a suite file, naming ``file: key`` in every error."""

    def __init__(self, path: Path, where: str, data: Any, allowed: set[str], required: set[str] = frozenset()):
        self.path, self.where = path, where
        if not isinstance(data, dict):
            raise SuiteError(f"{path}: {where or 'the file'} must be a mapping, not {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise SuiteError(f"{path}: unknown key(s) {unknown} in {where or 'the file'}; allowed: {sorted(allowed)}")
        missing = sorted(required - set(data))
        if missing:
            raise SuiteError(f"{path}: {where or 'the file'} needs {missing}")
        self.data = data

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.get(key, default)
        if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            raise SuiteError(f"{self.path}: {self.name(key)}={value!r} must be {_kind_name(kind)}")
        return value

    def strings(self, key: str, default: Any = ()) -> tuple[str, ...]:
        value = self.data.get(key, default)
        if value is default:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SuiteError(f"{self.path}: {self.name(key)} must be a list of strings, not {value!r}")
        return tuple(value)

    def seeds(self, key: str) -> tuple[int, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        return check_seeds(value, f"{self.path}: {self.name(key)}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join({str: "a string", int: "an integer", float: "a number", dict: "a mapping",
                        list: "a list"}.get(k, k.__name__) for k in kinds)


def check_seeds(value: Any, where: str) -> tuple[int, ...]:
    """A non-empty list of distinct non-negative integers."""
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
            or len(set(value)) != len(value)):
        raise SuiteError(f"{where}={value!r}: seeds are a non-empty list of distinct non-negative integers, "
                         "e.g. [0,1,2]")
    return tuple(value)


def _check_name(path: Path, where: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SuiteError(f"{path}: {where} name {name!r} must be lower-case letters, digits, '-', '_' or '.' "
                         "(it names folders)")
    if name in RESERVED:
        raise SuiteError(f"{path}: {where} name {name!r} names folders git ignores or a tier uses ({sorted(RESERVED)}):"
                         " choose another")
    return name


def _check_overrides(path: Path, where: str, overrides: tuple[str, ...]) -> tuple[str, ...]:
    for override in overrides:
        if "=" not in override or override_key(override) in {"seed", "experiment", "resume", "init_from"} \
                or override.startswith("hydra"):
            raise SuiteError(f"{path}: {where} has {override!r}: overrides are key=value, and a suite sets "
                             "experiment (the method's), seed, resume, init_from and hydra.* itself")
    return overrides


def _parse(path: Path, data: Any) -> Suite:
    top = _Reader(path, "", data, {"description", "metric", "score_last", "seeds", "tasks", "methods", "tiers",
                                   "protocol", "references", "readme", "compare_to", "splits", "overrides",
                                   "dip_window", "verdict_against"},
                  {"description", "metric", "seeds", "tasks", "methods", "tiers", "protocol"})
    tasks = top.strings("tasks")
    for task in tasks:
        _check_name(path, "task", task)
    methods: dict[str, Method] = {}
    raw_methods = top.get("methods", dict)
    for name, spec in raw_methods.items():
        _check_name(path, "method", name)
        reader = _Reader(path, f"methods.{name}", spec, {"experiment", "overrides", "label", "init_from", "baseline",
                                                         "tasks", "control"}, {"experiment"})
        method_tasks = reader.strings("tasks", None)
        if method_tasks is not None and (not method_tasks or set(method_tasks) - set(tasks)):
            raise SuiteError(f"{path}: methods.{name}.tasks={list(method_tasks)} must name some of {list(tasks)}")
        methods[name] = Method(name, reader.get("experiment", str),
                               _check_overrides(path, f"methods.{name}.overrides", reader.strings("overrides")),
                               reader.get("label", str, ""), reader.get("init_from", str), reader.get("baseline", str),
                               method_tasks, reader.get("control", str))
    for method in methods.values():
        if method.control is not None and (method.control not in methods or method.control == method.name):
            raise SuiteError(f"{path}: methods.{method.name}.control={method.control!r} must name another method of "
                             f"the suite ({sorted(set(methods) - {method.name})})")
        if method.init_from and method.init_from not in methods:
            raise SuiteError(f"{path}: methods.{method.name}.init_from={method.init_from!r} is no method of the suite "
                             f"({sorted(methods)})")
        parent = methods.get(method.init_from) if method.init_from else None
        if parent is not None and parent.tasks is not None and not set(method.tasks or tasks) <= set(parent.tasks):
            raise SuiteError(f"{path}: methods.{method.name} starts from {parent.name}, which runs only on "
                             f"{list(parent.tasks)}: give methods.{method.name}.tasks a subset of them")
    try:
        _dependency_order(methods, tuple(methods))
    except SuiteError as error:
        raise SuiteError(f"{path}: {error}") from None
    tiers: dict[str, Tier] = {}
    for name, spec in top.get("tiers", dict).items():
        if name not in TIERS:
            raise SuiteError(f"{path}: tier {name!r} is not one of {list(TIERS)}")
        reader = _Reader(path, f"tiers.{name}", spec or {}, {"overrides", "tasks", "methods", "seeds", "task_overrides",
                                                             "method_overrides", "cell_overrides", "note"})
        tier_tasks = reader.strings("tasks", None)
        tier_methods = reader.strings("methods", None)
        for kind, chosen, known in (("tasks", tier_tasks, tasks), ("methods", tier_methods, tuple(methods))):
            if chosen is not None and (not chosen or set(chosen) - set(known)):
                raise SuiteError(f"{path}: tiers.{name}.{kind}={list(chosen)} must name some of {list(known)}")
        per: dict[str, dict[str, tuple[str, ...]]] = {}
        cells = tuple(f"{t}/{m}" for t in tasks for m, spec in methods.items() if spec.tasks is None or t in spec.tasks)
        for kind, known in (("task_overrides", tasks), ("method_overrides", tuple(methods)), ("cell_overrides", cells)):
            table = reader.get(kind, dict, {})
            unknown = sorted(set(table) - set(known))
            if unknown:
                raise SuiteError(f"{path}: tiers.{name}.{kind} names {unknown}, which are not among {list(known)}")
            sub = _Reader(path, f"tiers.{name}.{kind}", table, set(table))
            per[kind] = {key: _check_overrides(path, sub.name(key), sub.strings(key)) for key in table}
        tiers[name] = Tier(name, _check_overrides(path, f"tiers.{name}.overrides", reader.strings("overrides")),
                           tier_tasks, tier_methods, reader.seeds("seeds"), per["task_overrides"],
                           per["method_overrides"], per["cell_overrides"], reader.get("note", str, "").strip())
    if "smoke" not in tiers:
        raise SuiteError(f"{path}: every suite has a smoke tier (CI runs it)")
    protocol = top.get("protocol", dict)
    if not all(isinstance(k, str) and (isinstance(v, str) or isinstance(v, dict) and set(v) == {"value"}
                                       or isinstance(v, list) and v and all(isinstance(x, str) for x in v))
               for k, v in protocol.items()):
        raise SuiteError(f"{path}: protocol maps a name to the config key it reads (e.g. 'offline updates: "
                         "trainer.offline_steps') or to a fixed {value: ...} (e.g. 'evaluation: {value: "
                         "deterministic}')")
    references = tuple(_reference(path, i, spec, methods, tasks) for i, spec in enumerate(top.get("references",
                                                                                                list, [])))
    score_last = top.get("score_last", int, 1)
    if score_last < 1:
        raise SuiteError(f"{path}: score_last={score_last} must be at least 1")
    readme = top.get("readme", dict)
    if readme is not None:
        reader = _Reader(path, "readme", readme, {"title", "tier", "tasks", "columns"}, {"title", "tier"})
        if reader.get("tier", str) not in tiers:
            raise SuiteError(f"{path}: readme.tier={readme['tier']!r} is not a tier of the suite ({sorted(tiers)})")
        readme_tasks = reader.strings("tasks", None)
        if readme_tasks is not None and (not readme_tasks or set(readme_tasks) - set(tasks)):
            raise SuiteError(f"{path}: readme.tasks={list(readme_tasks)} must name some of {list(tasks)}")
        columns = reader.strings("columns", ("start", "score"))
        if set(columns) - {"start", "score", "ci", "splits", "verdict"}:
            raise SuiteError(f"{path}: readme.columns={list(columns)} may hold start, score, ci, splits and verdict")
    dip_window = top.get("dip_window", int)
    if dip_window is not None and dip_window < 1:
        raise SuiteError(f"{path}: dip_window={dip_window} must be a positive number of steps")
    compare_to = top.get("compare_to", str, next(iter(methods), ""))
    if compare_to not in methods:
        raise SuiteError(f"{path}: compare_to={compare_to!r} is no method of the suite ({sorted(methods)})")
    against = top.strings("verdict_against")
    if set(against) - set(methods):
        raise SuiteError(f"{path}: verdict_against={list(against)} must name methods of the suite ({sorted(methods)})")
    if against and not any(m.control for m in methods.values()):
        raise SuiteError(f"{path}: verdict_against judges the methods that name a control, and none does: give "
                         "methods.<name>.control")
    return Suite(path.stem, path, top.get("description", str).strip(), top.get("metric", str), score_last,
                 top.seeds("seeds"), tasks, methods, tiers, dict(protocol), references, readme, compare_to,
                 top.strings("splits"), _check_overrides(path, "overrides", top.strings("overrides")),
                 dip_window, against)


def _reference(path: Path, index: int, spec: Any, methods: dict[str, Method], tasks: tuple[str, ...]) -> Reference:
    reader = _Reader(path, f"references[{index}]", spec, {f.name for f in dataclasses.fields(Reference)},
                     {"method", "task", "value", "source", "protocol"})
    method, task = reader.get("method", str), reader.get("task", str)
    if method not in methods or task not in tasks:
        raise SuiteError(f"{path}: references[{index}] is for {method} on {task}, which is no cell of the suite "
                         f"(methods {sorted(methods)}, tasks {list(tasks)})")
    return Reference(method, task, float(reader.get("value", (int, float))), reader.get("source", str),
                     reader.get("protocol", dict), reader.get("spread", str, ""), reader.get("note", str, ""))
