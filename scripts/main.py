"""The ``rlft`` console command: one Hydra app for every pipeline. The experiment names its
pipeline (``configs/pipeline/``), and the pipeline's runner does the rest.

    rlft                                        # experiment=demo: SPOT on the shipped hopper-weak data
    rlft experiment=finetune/dppo/mw-push       # BC -> PPO
    rlft experiment=llm/ppo/numberline          # SFT -> language RL
    rlft --list                                 # every experiment, grouped by pipeline
    rlft resume=runs/demo/<timestamp>
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rlft.runtime import resolvers  # noqa: F401  registers ${rlft_or:} and ${rlft_data:} for Hydra
from rlft.scripts import catalog
from rlft.scripts.override_check import check_overrides

if TYPE_CHECKING:
    from rlft.runtime.run_identity import RunOrigin

# bad input that ends a run before it starts with one line (DatasetError is a ValueError)
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, TypeError)
# the machine's storage refusing a write: one line naming the folder and what to do, never a traceback
DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system"}
ACCESS_ERRORS = (errno.EACCES, errno.EPERM)  # a file or folder this user may not read or write
INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT)


def _error(message: str) -> None:
    print(f"rlft: error: {message}", file=sys.stderr)
    if os.environ.get("RLFT_TRACEBACK"):
        raise
    print("  (RLFT_TRACEBACK=1 shows the traceback)", file=sys.stderr)


def _disk_error(error: OSError, run_dir: Path, started: bool, resuming: bool) -> str:
    """One line for a write the storage refused: what, where, and what to do (a run that saved a
    checkpoint continues from it; the save that failed left the newest one as it was)."""
    from rlft.runtime.checkpoint import latest_checkpoint
    from rlft.runtime.run_folder import resume_command

    where = error.filename or run_dir
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free space on that file system" if full else f"make {run_dir} writable"
    newest = latest_checkpoint(run_dir / "checkpoints") if started or resuming else None
    if newest is not None:
        then = f"then continue with `{resume_command(run_dir)}` (the newest checkpoint, {newest.name}, is intact)"
    elif started:
        then = "then start again (the run saved no checkpoint yet)"
    else:
        fix, then = ("free space there" if full else "choose a writable folder"), "e.g. with hydra.run.dir=<folder>"
    return f"{DISK_ERRORS[error.errno]} writing {where}: {fix}, {then}"


def _os_error(error: OSError, run_dir: Path, started: bool, resuming: bool) -> tuple[str, int] | None:
    """The one line and exit status for an ``OSError`` the machine raised (storage full or
    read-only: 1; a path this user may not use: 2), or ``None`` for one of another kind."""
    if error.errno in DISK_ERRORS:
        return _disk_error(error, run_dir, started, resuming), 1
    if error.errno in ACCESS_ERRORS:
        return (f"permission denied: {error.filename or run_dir}: give this user access to it, or choose another "
                "path"), 2
    return None


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies inside it (shorter to read and paste)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def run(cfg: DictConfig, run_dir: str | Path, origin: RunOrigin | None = None) -> dict | None:
    """Build the experiment's runner (or resume one), run it and print its before/after scores.
    Bad input ends with one line naming what is wrong; Ctrl-C with the command that resumes."""
    from rlft.runtime.run_folder import remove_unstarted  # torch loads with it: here, not for --help

    run_dir = _shown(Path(run_dir))
    resuming = bool(cfg.get("resume"))
    try:
        # torch and the envs load here, not for --help; an interrupt while they load is still "before the run"
        from rlft.runtime.checkpoint import latest_checkpoint
        from rlft.runtime.launch import build, summary
        from rlft.runtime.run_folder import resume_command
        from rlft.runtime.runner import RunError

        runner, run_dir = build(cfg, run_dir, origin)
    except USER_ERRORS as err:
        if not resuming:
            remove_unstarted(run_dir)
        _error(str(err))
        sys.exit(2)
    except OSError as err:
        said = _os_error(err, run_dir, started=False, resuming=resuming)
        if said is None:
            raise
        if not resuming:
            remove_unstarted(run_dir)
        _error(said[0])
        sys.exit(said[1])
    except KeyboardInterrupt:
        if not resuming:
            remove_unstarted(run_dir)
        print("\ninterrupted before the run started: nothing was saved", file=sys.stderr)
        sys.exit(INTERRUPTED)
    try:
        results = runner.run()
    except USER_ERRORS as err:
        if not resuming:
            remove_unstarted(run_dir, claimed=runner.claimed)
        _error(str(err))
        sys.exit(2)
    except OSError as err:
        said = _os_error(err, run_dir, started=True, resuming=resuming)
        if said is None:
            raise
        _error(said[0])
        sys.exit(said[1])
    except RunError as err:
        _error(str(err))
        sys.exit(1)
    except KeyboardInterrupt:
        if latest_checkpoint(run_dir / "checkpoints") is not None:
            print(f"\ninterrupted: continue from the last checkpoint with `{resume_command(run_dir)}`",
                  file=sys.stderr)
        else:
            print(f"\ninterrupted before the first checkpoint: nothing to resume in {run_dir}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    print(summary(results, run_dir))
    return results


def final_score(results: dict | None) -> float | None:
    """The run's last evaluation in its pipeline's metric (a success rate in %), or ``None``."""
    after = (results or {}).get("after")
    if not after or after.get(results["metric"]) is None:
        return None
    value = float(after[results["metric"]])
    return 100.0 * value if results["metric"] == "success_rate" else value


class RunFailed(RuntimeError):
    """A run of a sweep ended with an error (already printed); the sweep goes on with its other runs."""


def hydra_origin() -> RunOrigin:
    """How Hydra's current job was asked for: experiment, group choices, overrides, command line."""
    from rlft.runtime.run_identity import RunOrigin

    hydra_cfg = HydraConfig.get()
    choices = {k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    return RunOrigin(experiment=choices.get("experiment"), choices=choices,
                     overrides=tuple(hydra_cfg.overrides.task), command=tuple(sys.argv))


@hydra.main(version_base="1.3", config_path="pkg://rlft.configs", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """One run; in a sweep, its final score is the job's return value (the objective of
    ``+sweeper=optuna``)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        run(cfg, hydra_cfg.runtime.output_dir, hydra_origin())
        return None
    try:  # one run of a sweep: its failure is the launcher's to record, not the end of every other run
        return final_score(run(cfg, hydra_cfg.runtime.output_dir, hydra_origin()))
    except SystemExit as exit_:
        if exit_.code == INTERRUPTED:  # Ctrl-C stops the whole sweep, not just this run
            raise KeyboardInterrupt from None
        if exit_.code:
            raise RunFailed(f"the run in {hydra_cfg.runtime.output_dir} stopped with status {exit_.code} (its error "
                            "is printed above)") from None


def main() -> None:
    """The console entry point: ``--list`` and ``--help`` are rlft's own; the rest is Hydra's."""
    args = sys.argv[1:]
    if "--list" in args:
        print(catalog.listing(), end="")
        return
    if "--help" in args or "-h" in args:
        print(catalog.help_text([a for a in args if a not in ("--help", "-h")]), end="")
        return
    problem = check_overrides(args) or check_run_dir(args)
    if problem:
        print(f"rlft: error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(hydra_main())
    except KeyboardInterrupt:
        if set(args) & {"-m", "--multirun"}:  # a sweep: finished runs keep their folders
            print("\ninterrupted: the sweep stopped (each run's folder says how far it got)", file=sys.stderr)
        else:  # while Hydra composes the config, before rlft's run() is called
            print("\ninterrupted before the run started: nothing was saved", file=sys.stderr)
        sys.exit(INTERRUPTED)


def check_run_dir(args: list[str]) -> str | None:
    """A message when the run folder cannot be made (``hydra.run.dir`` names a file, or a folder
    on a read-only or unwritable file system), said before Hydra tries and fails with a traceback."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if set(args) & {"-m", "--multirun", "-c", "--cfg", "-i", "--info", "--hydra-help", "--shell-completion"}:
        return None  # sweeps make their own folders; printing the config or Hydra's information makes none
    resume = [a for a in args if a.startswith("resume=")]
    given = resume or [a for a in args if a.lstrip("+").startswith("hydra.run.dir=")]
    try:
        value = OverridesParser.create().parse_override(given[-1]).value() if given else "runs"
    except Exception:  # noqa: BLE001  a malformed override: Hydra says what is wrong with it
        return None
    if resume:  # a folder to continue: it must exist (else Hydra would create it), and is checked when it is held
        if isinstance(value, str) and not Path(value).is_dir():
            return f"cannot resume: {value} is no folder (is it an rlft run folder? `rlft resume=<run dir>`)"
        return None
    if not isinstance(value, str) or "${" in value:
        return None
    target = Path(value)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    key = f"hydra.run.dir={value}" if given else "the run folder"
    if existing.exists() and not existing.is_dir():
        return (f"{key}: {existing} is a file, not a folder; give a folder for the run (one that does not exist "
                "yet, or an empty one)")
    if not os.access(existing, os.W_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        return (f"{key}: cannot create {target}: {existing} is on a read-only file system" if read_only
                else f"{key}: cannot create {target}: {existing} is not writable") + \
            "; choose a writable folder with hydra.run.dir=<folder>"
    return None


if __name__ == "__main__":
    main()
