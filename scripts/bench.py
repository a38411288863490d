"""``rlft-bench``: benchmark suites (``configs/suite/<suite>.yaml``).

    rlft-bench list                                   suites, their tiers and how many runs each has done
    rlft-bench run o2o tier=smoke                     run (or continue) a tier, then write its report
    rlft-bench run o2o tier=cpu +launcher=local       two runs at a time on this machine
    rlft-bench run o2o tier=cpu seeds=[3,4]           the same suite on other seeds
    rlft-bench run o2o tier=paper +launcher=slurm hydra.launcher.partition=gpu
    rlft-bench report o2o tier=cpu                    re-make the report from the committed summaries
    rlft-bench readme [--check]                       the README's tables from the reports (--check: only compare)
    rlft-bench recipes [--check]                      benchmarks/recipes.md: the reference recipes, value by value

``run`` is a Hydra multirun of the ``rlft`` app with rlft's suite sweeper
(``hydra/sweeper=rlft_suite``): any Hydra launcher runs the jobs, finished runs are skipped and
interrupted ones resumed, so the same command continues a suite in a later session. Besides
``tier=``, ``seeds=`` and ``out=`` (default ``benchmarks``), it takes launcher choices and Hydra
settings (``+launcher=...``, ``hydra/launcher=...``, ``hydra.launcher.*``, ``hydra.sweeper.max_batch_size``);
the runs' own settings are the suite file's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlft.suites import readme, recipes, report, store
from rlft.suites.spec import SuiteError, check_seeds, load_suite, suite_names

OURS = ("tier", "seeds", "out")
HYDRA_PREFIXES = ("+launcher=", "launcher=", "hydra/launcher=", "hydra.launcher.", "+hydra.launcher.",
                  "hydra.sweeper.max_batch_size=")
README = Path("README.md")


def _split(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """(``tier``/``seeds``/``out`` values, Hydra arguments); anything else is refused."""
    ours, hydra_args = {}, []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in OURS and value:
            ours[key] = value
        elif arg.startswith(HYDRA_PREFIXES):
            hydra_args.append(arg)
        else:
            raise SuiteError(f"rlft-bench does not take {arg!r}: it takes tier=, seeds=[..], out= and launcher "
                             "settings (+launcher=local|slurm|ray, hydra/launcher=..., hydra.launcher.<key>=...); a "
                             "run's own settings are the suite file's (configs/suite/)")
    return ours, hydra_args


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.strip("[]").split(",") if v.strip()]
    except ValueError:
        raise SuiteError(f"seeds={text}: give a list of integers, e.g. seeds=[0,1,2]") from None
    return check_seeds(values, "seeds")


def run(name: str, args: list[str]) -> None:
    """Run a tier through Hydra: ``rlft -m hydra/sweeper=rlft_suite ...`` in this process."""
    from rlft.scripts import main as rlft_main

    ours, hydra_args = _split(args)
    suite = load_suite(name)
    tier = ours.get("tier", "smoke")
    seeds = _seeds(ours.get("seeds"))
    jobs = suite.jobs(tier, seeds)  # a bad tier or seed list is refused before Hydra starts
    out = ours.get("out", "benchmarks")
    folder = store.tier_dir(out, suite, tier).absolute()
    given = name if name in suite_names() else str(suite.path)  # a suite file outside configs/suite/ by its path
    sweeper = ["hydra/sweeper=rlft_suite",
               f"hydra.sweeper.suite={store.override_path(Path(given)) if '/' in given else given}",
               f"hydra.sweeper.tier={tier}", f"hydra.sweeper.out={store.override_path(Path(out).absolute())}",
               f"hydra.sweep.dir={store.override_path(folder / 'runs')}"]
    if seeds is not None:
        sweeper.append(f"hydra.sweeper.seeds=[{','.join(map(str, seeds))}]")
    print(f"{suite.name} [{tier}]: {len(jobs)} runs ({len({j.task for j in jobs})} tasks, "
          f"{len({j.method for j in jobs})} methods, {len({j.seed for j in jobs})} seeds) in {folder}")
    sys.argv = ["rlft", "-m", *sweeper, *hydra_args]
    rlft_main.main()


def make_report(name: str, args: list[str]) -> Path:
    ours, hydra_args = _split(args)
    if hydra_args:
        raise SuiteError(f"rlft-bench report takes tier=, seeds= and out=, not {' '.join(hydra_args)}")
    suite = load_suite(name)
    tier = ours.get("tier", "smoke")
    jobs = suite.jobs(tier, _seeds(ours.get("seeds")))
    folder = store.tier_dir(ours.get("out", "benchmarks"), suite, tier)
    return report.write_report(suite, tier, folder, jobs)


def listing(out: str = "benchmarks") -> str:
    lines = []
    for name in suite_names():
        suite = load_suite(name)
        tiers = []
        for tier in suite.tiers:
            jobs = suite.jobs(tier)
            folder = store.tier_dir(out, suite, tier)
            done = stale = 0
            for job in jobs:
                try:
                    done += store.read_summary(folder, job) is not None
                except SuiteError:  # made with other overrides than the suite now asks for
                    stale += 1
            tiers.append(f"{tier} {done}/{len(jobs)}" + (f" ({stale} stale)" if stale else ""))
        lines.append(f"{name:16s} {', '.join(tiers):40s} {suite.description.splitlines()[0][:70]}")
    return "\n".join(lines) + "\n"


def update_readme(check: bool, path: Path = README, benchmarks: Path = Path("benchmarks")) -> int:
    text = path.read_text()
    if check:
        stale = readme.stale_blocks(text, benchmarks)
        if stale:
            print(f"{path}: the tables of {', '.join(stale)} differ from their reports; run `rlft-bench readme`",
                  file=sys.stderr)
            return 1
        print(f"{path}: every suite table matches its report")
        return 0
    new = readme.render(text, benchmarks)
    path.write_text(new)
    print(f"{path}: {len(readme.BLOCK.findall(text))} suite table(s) written")
    return 0


def update_recipes(check: bool) -> int:
    if check:
        if not recipes.write(check=True):
            print(f"{recipes.RECIPES_MD} differs from suites/recipes.yaml and the configs; run `rlft-bench recipes`",
                  file=sys.stderr)
            return 1
        print(f"{recipes.RECIPES_MD}: matches suites/recipes.yaml and the configs")
        return 0
    recipes.write()
    print(f"{recipes.RECIPES_MD}: written")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    verb, rest = args[0], args[1:]
    try:
        if verb == "list":
            print(listing(), end="")
        elif verb == "readme":
            sys.exit(update_readme(check="--check" in rest))
        elif verb == "recipes":
            sys.exit(update_recipes(check="--check" in rest))
        elif verb in ("run", "report"):
            if not rest or "=" in rest[0]:
                raise SuiteError(f"rlft-bench {verb} <suite> [tier=...]: name a suite ({', '.join(suite_names())})")
            if verb == "run":
                run(rest[0], rest[1:])
            else:
                print(f"report: {make_report(rest[0], rest[1:])}")
        else:
            raise SuiteError(f"unknown rlft-bench command {verb!r}: list, run, report or readme (rlft-bench --help)")
    except SuiteError as error:
        print(f"rlft-bench: error: {error}", file=sys.stderr)
        sys.exit(2)



if __name__ == "__main__":
    main()
