"""The suite sweep: one tier of a suite as Hydra jobs on whatever launcher the command chose
(Hydra's own in this process, ``+launcher=local`` for two processes, ``+launcher=slurm`` or
``+launcher=ray``), skipping finished runs and resuming interrupted ones.

Hydra calls :meth:`SuiteSweep.sweep` through the plugin shim
``packaging/hydra_plugins/rlft_suite`` (``hydra/sweeper=rlft_suite``; ``rlft-bench run`` selects
it). Jobs whose prerequisite (``init_from``) is not finished wait for a later batch; each batch
goes to the launcher whole (``max_batch_size`` caps it), and a watcher thread prints the progress
line whenever a run of the tier finishes, so the line comes on every launcher that shares the
file system. Finished runs are summarised into ``summaries/`` (what is committed) and the report
is written at the end, failures or not; failed jobs are named.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlft.suites import report, store
from rlft.suites.spec import Job, SuiteError, check_seeds, load_suite
from rlft.suites.store import JobState

PROGRESS_EVERY = 600.0  # seconds between progress lines while nothing finishes
WATCH_EVERY = 5.0  # seconds between looks at the tier's run folders


def parse_seeds(value: Any) -> tuple[int, ...] | None:
    """``seeds`` as the sweeper receives it (``null``, a list, or Hydra's list of an override)."""
    if value is None:
        return None
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    return check_seeds(value, "seeds")


class SuiteSweep:
    """What :class:`hydra_plugins.rlft_suite.SuiteSweeper` does (kept out of the plugin module,
    which Hydra imports at every start)."""

    def __init__(self, suite: str, tier: str, seeds: Any = None, out: str | None = None,
                 max_batch_size: int | None = None):
        self.suite = load_suite(suite)
        self.tier = tier
        self.jobs = self.suite.jobs(tier, parse_seeds(seeds))
        self.folder = store.tier_dir(out or "benchmarks", self.suite, tier).absolute()
        self.max_batch_size = max_batch_size
        self.launcher_choice: list[str] = []  # +launcher=<preset>, passed on to every job as Hydra's sweepers do
        self.launcher: Any = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # ------------------------------------------------------------------------------------ the sweep
    def sweep(self, arguments: list[str]) -> list[Any]:
        """Launch the tier's unfinished jobs batch by batch, then write the report; a suite error
        (a stale summary, run overrides) is one line, not Hydra's traceback."""
        try:
            return self._sweep(arguments)
        except SuiteError as error:
            print(f"rlft-bench: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    def _sweep(self, arguments: list[str]) -> list[Any]:
        # a launcher preset (+launcher=local) arrives as an override of the job's config: it only sets hydra.*
        others = [a for a in arguments if not a.lstrip("+").startswith("launcher=")]
        if others:
            raise SuiteError(f"rlft-bench takes no run overrides ({' '.join(others)}): a suite's runs are what its "
                             f"file says ({self.suite.path}); change a tier there, or add a tier")
        self.launcher_choice = list(arguments)
        returns: list[Any] = []
        failed: dict[str, str | None] = {}  # job key -> why it failed (None: its prerequisite failed)
        index = 0
        watcher = _Watcher(self)
        watcher.start()
        try:
            while True:
                batch = self.ready_jobs(failed)
                if not batch:
                    break
                watcher.say(force=True)
                # Hydra's own launcher runs one job after another here: hand it one, so each summary lands at once
                batch = batch[: self.max_batch_size or (1 if self.parallel_runs() == 1 else len(batch))]
                results = self.launcher.launch([self.job_overrides(job) for job in batch], initial_job_idx=index)
                index += len(batch)
                returns.append(results)
                for job, result in zip(batch, results):
                    if result.status.name == "COMPLETED" and store.run_finished(self.folder, job):
                        store.write_summary(self.folder, job)  # also replaces a re-run prerequisite's old one
                    else:
                        why = result._return_value if result.status.name == "FAILED" else "it did not finish"
                        failed[job.key] = str(why)
        finally:
            watcher.stop()
        watcher.say(force=True)
        made = report.write_report(self.suite, self.tier, self.folder, self.jobs)
        print(f"report: {made}")
        held = [job.key for job in self.jobs if store.job_state(self.folder, job) is JobState.BUSY]
        waiting = [job.key for job in self.jobs if job.prerequisite in held]
        if held:
            print(f"rlft-bench: {len(held)} run(s) are held by another process ({', '.join(held)})"
                  + (f" and {len(waiting)} wait on them" if waiting else "") + ": run this command again when it ends",
                  file=sys.stderr)
        if failed:  # said as one message, not a traceback: Hydra prints the traceback of an exception
            lines = [f"  {job.key}: {(failed[job.key] or 'failed').splitlines()[0]}" for job in self.jobs
                     if failed.get(job.key)]
            blocked = [key for key, why in failed.items() if why is None]
            print(f"rlft-bench: error: {len(failed) - len(blocked)} run(s) of {self.suite.name} [{self.tier}] failed:\n"
                  + "\n".join(lines) + (f"\n  waiting on them: {', '.join(blocked)}" if blocked else "")
                  + "\n  the same command continues after a fix (finished runs are kept)", file=sys.stderr)
            raise SystemExit(1)
        if held:
            raise SystemExit(1)
        return returns

    def ready_jobs(self, failed: dict[str, str | None]) -> list[Job]:
        """The jobs to launch next: not finished, not failed, and with their prerequisite finished
        (a finished prerequisite whose run folder is gone, e.g. on a fresh clone that has only its
        summary, is run again for the checkpoint its dependants start from)."""
        states = {job.key: store.job_state(self.folder, job) for job in self.jobs}
        by_key = {job.key: job for job in self.jobs}
        ready: list[Job] = []
        for job in self.jobs:
            if states[job.key] in (JobState.DONE, JobState.BUSY) or job.key in failed:
                continue
            parent = job.prerequisite
            if parent is None:
                ready.append(job)
            elif states[parent] is JobState.DONE and parent not in failed:
                if store.has_pretrained(self.folder, by_key[parent]):
                    ready.append(job)
                elif store.run_dir(self.folder, by_key[parent]).is_dir():
                    failed[job.key] = (f"{parent} finished without a pretrained_checkpoint/ to start from (its "
                                       "experiment has no pretraining phase): choose another init_from")
                elif by_key[parent] not in ready:  # its summary stays until the new run replaces it
                    print(f"running {parent} again: {job.key} starts from its pretrained checkpoint, which this "
                          "machine does not have; its summary will be replaced by the new run's")
                    ready.append(by_key[parent])
            elif parent in failed:
                failed.setdefault(job.key, None)  # blocked, said with its prerequisite
        return ready

    def job_overrides(self, job: Job) -> list[str]:
        """The job's ``rlft`` overrides plus where it runs (and ``resume=`` / ``init_from=``)."""
        folder = store.run_dir(self.folder, job)
        extra = [f"hydra.sweep.subdir={job.key}"]
        if store.job_state(self.folder, job) is JobState.RESUME:
            extra.append(f"resume={store.override_path(folder)}")
        else:
            store.record_launch(self.folder, job)
            if job.prerequisite:
                parent = next(j for j in self.jobs if j.key == job.prerequisite)
                extra.append(f"init_from={store.override_path(store.run_dir(self.folder, parent))}")
        return [*job.overrides, *self.launcher_choice, *extra]

    # ------------------------------------------------------------------------------------- progress
    def parallel_runs(self) -> int | None:
        """How many runs the launcher runs at once (``None``: as many as it is given, a cluster)."""
        assert self.config is not None
        launcher = OmegaConf.select(self.config, "hydra.launcher._target_", default="")
        if launcher.endswith("BasicLauncher"):
            return 1
        n_jobs = OmegaConf.select(self.config, "hydra.launcher.n_jobs", default=None)
        return n_jobs if isinstance(n_jobs, int) and n_jobs > 0 else self.max_batch_size

    def progress_line(self) -> str:
        """``<suite> [<tier>]: d/N runs done (r started), ~T left (m min per run, p at a time)``."""
        done, seconds, resumable = [], {}, 0
        for job in self.jobs:
            summary_file = store.summary_path(self.folder, job)
            if summary_file.is_file():
                done.append(job)
                seconds.setdefault(job.method, []).append(_wall_seconds(summary_file))
            elif (store.run_dir(self.folder, job) / "checkpoints").is_dir():
                resumable += 1
        line = f"{self.suite.name} [{self.tier}]: {len(done)}/{len(self.jobs)} runs done"
        if resumable:
            line += f" ({resumable} started)"
        known = [s for values in seconds.values() for s in values]
        pending = [job for job in self.jobs if job not in done]
        if known and pending:
            mean = sum(known) / len(known)
            left = sum(np.mean(seconds[j.method]) if j.method in seconds else mean for j in pending)
            parallel = self.parallel_runs() or len(pending)
            line += (f", ~{_duration(left / min(parallel, len(pending)))} left ({mean / 60:.1f} min per finished run, "
                     f"{min(parallel, len(pending))} at a time)")
        return line


def _wall_seconds(path: Path) -> float:
    return float((json.loads(path.read_text()).get("compute") or {}).get("wall_seconds") or 0.0)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(seconds / 60, 1):.0f} min"


class _Watcher:
    """Prints the sweep's progress line when the count of finished runs changes (and every
    :data:`PROGRESS_EVERY` seconds), from a daemon thread that reads the tier's folders."""

    def __init__(self, sweep: SuiteSweep):
        self.sweep = sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="rlft-suite-progress")
        self._last: tuple[str, float] = ("", 0.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def say(self, force: bool = False) -> None:
        for job in self.sweep.jobs:  # runs the launcher finished since the last look get their summary
            if not store.summary_path(self.sweep.folder, job).is_file() and store.run_finished(self.sweep.folder, job):
                store.write_summary(self.sweep.folder, job)
        line = self.sweep.progress_line()
        counted = line.split(" runs done")[0]
        if force or counted != self._last[0].split(" runs done")[0] or time.time() - self._last[1] > PROGRESS_EVERY:
            print(line, flush=True)
            self._last = (line, time.time())

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY):
            try:
                self.say()
            except (OSError, ValueError):  # a file caught mid-write: the next look reads it whole
                continue
