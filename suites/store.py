"""Where a suite tier keeps its runs and what it keeps of each.

``<out>/<suite>/<tier>/`` holds ``runs/<task>/<method>/seed<k>/`` (the ``rlft`` run folders:
checkpoints, ignored by git) and ``summaries/<task>/<method>/seed<k>.json`` (a finished run's
evaluations, protocol values and compute, a few kB: committed as each run lands, so a suite
continues on another machine or in another session from what is committed). A job is finished
when its summary exists and was made with the overrides the suite asks for today; a summary made
with other overrides is refused by name rather than mixed into a report.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlft.runtime.run_folder import CLAIM_FILE
from rlft.suites.spec import Job, Suite, SuiteError

SUMMARY_VERSION = 1
LAUNCH_RECORD = "suite-job.json"  # in a run folder: the overrides the sweeper first launched it with
HISTORY_KEYS = ("step", "phase", "return_mean", "normalized_score", "success_rate")


class JobState(enum.Enum):
    DONE = "done"  # its summary is there
    RESUME = "resume"  # its run folder holds a checkpoint: continue from it
    START = "start"  # nothing usable yet
    BUSY = "busy"  # another live process is running it (its run folder's lock is held)


def tier_dir(out: str | Path, suite: Suite, tier: str) -> Path:
    """The tier's folder: ``<out>/<suite>/<tier>``."""
    return Path(out) / suite.name / tier


def run_dir(folder: Path, job: Job) -> Path:
    return folder / "runs" / job.key


def summary_path(folder: Path, job: Job) -> Path:
    return folder / "summaries" / f"{job.key}.json"


def _check_identity(what: Path, recorded: dict[str, Any], job: Job, fix: str) -> None:
    """:class:`SuiteError` unless ``recorded`` (a summary or a run folder's record) was made for
    ``job`` as the suite defines it today: the same overrides and, for a job that starts from
    another's checkpoint, the same overrides of that run."""
    for key, ours, whose in (("overrides", job.overrides, ""), ("parent_overrides", job.parent_overrides,
                                                                  f" of the run it starts from ({job.prerequisite})")):
        theirs = recorded.get(key, ())
        if set(theirs) != set(ours):
            raise SuiteError(f"{what} was run with other overrides{whose} than the suite now asks for (only there: "
                             f"{sorted(set(theirs) - set(ours))}; only in the suite: {sorted(set(ours) - set(theirs))})"
                             f"; {fix}")


def read_summary(folder: Path, job: Job) -> dict[str, Any] | None:
    """The job's summary, or ``None`` when it has none; one made for other overrides than the
    job's (or, for a job that starts from another's run, that run's) is a :class:`SuiteError`
    saying which differ and how to re-run."""
    path = summary_path(folder, job)
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    _check_identity(path, summary, job, f"delete it and its run folder {run_dir(folder, job)} to run it again, or "
                                        "write the results to another out=")
    return summary


def record_launch(folder: Path, job: Job) -> None:
    """Write into the job's run folder, before its first launch, what it is launched as (read by
    :func:`write_summary`, so a run folder never passes for a job it was not run as)."""
    run = run_dir(folder, job)
    run.mkdir(parents=True, exist_ok=True)
    record = {"overrides": list(job.overrides), "parent_overrides": list(job.parent_overrides)}
    (run / LAUNCH_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def job_state(folder: Path, job: Job) -> JobState:
    """Finished (summary), interrupted (a checkpoint to resume) or not started. A run folder that
    finished but was never summarised is summarised now; one without a checkpoint is removed
    (a start killed before its first save has nothing worth keeping, and a fresh start refuses a
    folder holding another run's files)."""
    if read_summary(folder, job) is not None:
        return JobState.DONE
    run = run_dir(folder, job)
    if _held(run):
        return JobState.BUSY
    if run_finished(folder, job):
        write_summary(folder, job)
        return JobState.DONE
    if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step_*")):
        return JobState.RESUME
    if run.exists():
        shutil.rmtree(run)
    return JobState.START


def run_finished(folder: Path, job: Job) -> bool:
    """Whether the job's run folder holds the ``eval.json`` of a finished run."""
    path = run_dir(folder, job) / "eval.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("done"))


def _held(run: Path) -> bool:
    """Whether a live process holds the run folder's lock (``.rlft-run``, see ``runtime/run_folder.py``)."""
    claim = run / CLAIM_FILE
    if not claim.is_file():
        return False
    with open(claim) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def has_pretrained(folder: Path, job: Job) -> bool:
    """Whether the job's run folder holds the pretrained checkpoint another job starts from."""
    return (run_dir(folder, job) / "pretrained_checkpoint").is_dir()


def write_summary(folder: Path, job: Job) -> dict[str, Any]:
    """Summarise the job's finished run folder into ``summaries/`` (atomically) and return it; a
    run folder launched as another job (its :data:`LAUNCH_RECORD`) is refused."""
    run = run_dir(folder, job)
    if (run / LAUNCH_RECORD).is_file():
        _check_identity(run, json.loads((run / LAUNCH_RECORD).read_text()), job,
                        f"delete {run} to run it again as the suite now defines it")
    results = json.loads((run / "eval.json").read_text())
    config = OmegaConf.load(run / "config.yaml")
    summary = {
        "version": SUMMARY_VERSION,
        "task": job.task, "method": job.method, "seed": job.seed,
        "overrides": list(job.overrides),
        "init_from": job.prerequisite,
        "parent_overrides": list(job.parent_overrides),
        "pipeline": results["pipeline"], "env_task": results["task"], "source": results["source"],
        "metric": results["metric"], "axis": results["axis"],
        "history": [{key: record.get(key) for key in HISTORY_KEYS} for record in results["history"]],
        "before": results["before"] and {key: results["before"].get(key) for key in HISTORY_KEYS},
        "reference_score": (results.get("details") or {}).get("reference_score"),
        "splits": (results.get("details") or {}).get("splits") or {},
        "config": _portable(OmegaConf.to_container(config, resolve=False)),
        "compute": results.get("compute") or {},
    }
    path = summary_path(folder, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(summary, tmp, indent=1)
        tmp.write("\n")
    os.replace(tmp.name, path)
    return summary


PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # the rlft checkout (data/, benchmarks/ live in it)


def _portable(value: Any) -> Any:
    """``value`` with the checkout's absolute path written ``<rlft>``, so a committed summary names
    no machine's folders (dataset sources, ``init_from``)."""
    if isinstance(value, dict):
        return {key: _portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable(item) for item in value]
    if not isinstance(value, str):
        return value
    return "<rlft>" if value == PACKAGE_ROOT else value.replace(PACKAGE_ROOT + "/", "<rlft>/")


def override_path(path: Path) -> str:
    """``path`` as a Hydra override value: single-quoted when it holds characters the override
    grammar reads (a quoted value still resolves ``${...}``, so a path holding ``$`` is refused)."""
    text = str(path)
    if "$" in text:
        raise SuiteError(f"{text}: a path with '$' cannot be passed to Hydra; choose another out=")
    return text if all(c.isalnum() or c in "_-./:" for c in text) else "'" + text.replace("'", "\\'") + "'"


def config_value(summary: dict[str, Any], key: str) -> Any:
    """The value of a dotted config key in a summary's run config (``None`` when the run has none)."""
    node: Any = summary["config"]
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
