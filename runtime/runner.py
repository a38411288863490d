"""The runner skeleton every pipeline plugs into.

A pipeline (offline-to-online, BC -> PPO, SFT -> language RL, ...) is a list of :class:`Phase`
objects plus a few hooks: its own state for checkpoints, how it evaluates its current policy,
and how it takes the pretrained part of another run (``init_from``). The skeleton owns what
every pipeline shares, written once:

* the run folder (resolved ``config.yaml``, ``metrics.csv`` + TensorBoard),
* counters (phase, step inside the phase, the run's x-axis ``step``, the monotone ``work`` that
  names checkpoints), atomic checkpoints with RNG states, and exact ``resume``,
* ``pretrained_checkpoint/``: the state at the end of the pretraining phases, for ``init_from``,
* evaluations, ``eval.json`` (one schema for every pipeline), the learning-curve plot.

``step`` is the x-axis of a run's curves: offline updates then online environment steps,
environment steps, or training episodes, as the pipeline's ``axis`` says. Preparation phases
that are not on it (SPOT's VAE, behaviour cloning, SFT) log their losses at negative steps that
end at 0, so ``metrics.csv`` and TensorBoard stay monotone and the evaluated curve starts at 0.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from rlft.envs.factory import make_env
from rlft.envs.wrappers import native_action_space
from rlft.offline.dataset import TransitionDataset
from rlft.offline.loaders import load_task_dataset
from rlft.runtime.checkpoint import (STATE_FILE, CorruptCheckpointError, latest_checkpoint, list_checkpoints,
                                     load_checkpoint, quarantine, save_checkpoint)
from rlft.runtime.evaluation import Acting, EvalResult
from rlft.runtime.logger import MetricLogger
from rlft.runtime.plotting import plot_learning_curve
from rlft.runtime.run_identity import RunOrigin, write_run_record
from rlft.runtime.run_folder import EVAL_FILE, RunLock, claim_run_folder, open_run_folder, write_eval_json
from rlft.common.machine import device_description
from rlft.common.seeding import get_rng_state, seed_everything, set_rng_state
from rlft.common.typed_config import ConfigError, check_value, resolve_device

PRETRAINED_CHECKPOINT = "pretrained_checkpoint"  # the state at the end of pretraining, for init_from
EVAL_KEYS = ("pipeline", "task", "method", "seed", "source", "metric", "axis", "step", "done", "before", "after",
             "history", "details", "compute")  # eval.json's top-level keys, the same for every pipeline


_device_name = functools.cache(device_description)  # read /proc/cpuinfo once per process, not per evaluation


class RunError(RuntimeError):
    """The run stopped because it could not go on producing correct numbers (e.g. it diverged);
    the message says where, and the newest checkpoint still holds the last good state."""


UNCHECKED_UPDATES = 1000  # updates whose metrics wait at most for the divergence check
# what Runner.checkpoint writes, and of which type
CHECKPOINT_KEYS = {"pipeline": str, "counters": Mapping, "rng": Mapping, "eval_history": list, "config": str,
                   "state": Mapping}
COUNTER_KEYS = ("phase_index", "phase_step", "step", "work", "log_step")
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^]]*\])\) from "
                            r"checkpoint, the shape in current model is torch\.Size\((\[[^]]*\])\)")


def state_mismatch(error: Exception) -> str | None:
    """What ``load_state_dict``'s error says in one line (each tensor whose shape differs, with both
    shapes, or the keys missing / unexpected), or ``None`` for an error of another kind."""
    text = str(error)
    sizes = _SIZE_MISMATCH.findall(text)
    if sizes:
        module = re.search(r"loading state_dict for (\w+)", text)
        shown = "; ".join(f"{name} is {theirs} there and {ours} here" for name, theirs, ours in sizes[:3])
        return ((f"in its {module.group(1)}: " if module else "") + shown
                + (f"; and {len(sizes) - 3} more" if len(sizes) > 3 else ""))
    if "Missing key(s)" in text or "Unexpected key(s)" in text:
        return " ".join(line.strip() for line in text.splitlines()[1:])[:300]
    return None


def first_non_finite(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The first numeric entry of ``metrics`` (numbers or 0-dim tensors) that is NaN or infinite, as (key, value)."""
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return key, float(value)
    return None


def all_finite(metrics: list[Mapping[str, Any]]) -> bool:
    """Whether every numeric entry of every dict is finite: one device sync for all their tensors."""
    tensors = [v.detach().reshape(-1).float() for m in metrics for v in m.values()
               if isinstance(v, torch.Tensor) and v.numel() == 1]
    numbers = [v for m in metrics for v in m.values() if isinstance(v, (int, float))]
    return all(math.isfinite(v) for v in numbers) and (not tensors or bool(torch.cat(tensors).isfinite().all()))


def _nan_tensors(state: Any, prefix: str = "") -> list[str]:
    """The names of the floating-point tensors in a nested state that hold a NaN."""
    if isinstance(state, torch.Tensor):
        return [prefix] if state.is_floating_point() and bool(torch.isnan(state).any()) else []
    if isinstance(state, Mapping):
        return [n for k, v in state.items() for n in _nan_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(state, (list, tuple)):
        return [n for i, v in enumerate(state) for n in _nan_tensors(v, f"{prefix}[{i}]")]
    return []


@dataclass(frozen=True)
class Phase:
    """One stage of a pipeline. ``run`` works until the phase's budget is spent, advancing
    ``phase_step`` (and ``step`` / ``work``) and checkpointing through the runner as it goes."""

    name: str
    run: Callable[[], None]
    steps: int = 0  # the budget; off-axis phases log at phase_step - steps
    pretraining: bool = False  # before fine-tuning: its last evaluation is the run's "before" record
    on_axis: bool = True  # False: a preparation step with its own step count (VAE, BC, SFT)
    evaluate_at_end: bool = False  # the runner evaluates once when the phase ends


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (``None``: leave torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


class Runner(ABC):
    """Runs a pipeline's phases in a run folder, or resumes them from its newest checkpoint."""

    pipeline: ClassVar[str]  # the name in eval.json and in configs/pipeline/
    budget_key: ClassVar[str | None] = None  # the last phase's budget key: `rlft resume=<run> <key>=<more>` extends it
    axis: str  # what ``step`` counts (a pipeline may set it per run)
    plot_metric: ClassVar[str] = "normalized_score"

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = resolve_device(cfg.get("device"))
        self.show_progress = check_value("progress", cfg.get("progress", True), bool)
        apply_threads(check_value("threads", cfg.get("threads"), int | None))
        seed_everything(check_value("seed", cfg.get("seed"), int))
        self.phases: list[Phase] = []
        self.keep_checkpoints = 2  # pipelines set their config's value
        self.phase_index = self.phase_step = self.step = self.work = 0
        self.eval_history: list[dict[str, Any]] = []
        self.logger: MetricLogger | None = None
        self.lock: RunLock | None = None  # this process's hold on the run folder (resume, run)
        self.claimed = False  # this process started the run folder afresh (what rlft may remove if it is refused)
        self._resume_log_step: int | None = None
        self._tracker_ids: dict[str, str] = {}  # the trackers' run ids of the checkpoint resumed from
        self._initialised_from: Path | None = None  # the checkpoint init_from loaded (prepare_init_from)
        self._unchecked: list[tuple[str, int, int, Mapping[str, Any]]] = []  # (phase, phase_step, step, metrics)
        self._seconds_saved = 0.0  # wall-clock seconds of the work the loaded checkpoint holds (resume)
        self._started: float | None = None  # when this process began running phases
        self._reference: dict[str, Any] | None = None  # reference_score as eval.json records it ({}: none)
        self.origin: RunOrigin | None = None  # how the run was asked for (run.json); set by rlft.runtime.launch

    # ----------------------------------------------------------- pipeline hooks
    @abstractmethod
    def pipeline_state(self) -> dict[str, Any]:
        """Everything of the pipeline's own a checkpoint must hold to continue exactly."""

    @abstractmethod
    def load_pipeline_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`pipeline_state` (called by ``resume``, before the RNG states are set)."""

    @abstractmethod
    def evaluate_policy(self, phase: str) -> EvalResult:
        """Evaluate the policy of ``phase`` (the cloned one in pretraining phases) with the
        pipeline's evaluation settings (episodes, seeds, deterministic actions)."""

    @abstractmethod
    def load_pretrained(self, state: Mapping[str, Any], config: DictConfig, path: Path) -> None:
        """Take the pretrained part of another run's end-of-pretraining state (``init_from``);
        raise ``ValueError`` naming ``path`` when it cannot start this run."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """``task``, ``method``, ``source`` (dataset or model) and pipeline ``details`` for eval.json."""

    @classmethod
    def settings(cls, cfg: DictConfig) -> dict[str, Any]:
        """The pipeline's typed settings (budgets, method, ...) built from ``cfg`` with every value's
        type and range checked (:func:`rlft.common.typed_config.config_from_mapping`); nothing is
        built or loaded, so a bad value stops a run before it starts."""
        return {}

    def reference_score(self) -> tuple[str, float] | None:
        """A level to draw on the learning curve (e.g. the dataset's own score), as (label, value)."""
        return None

    @classmethod
    def acting(cls, cfg: DictConfig, saved: Mapping[str, Any], device: str, deterministic: bool = True) -> Acting:
        """The policy of a checkpoint (``saved``: what :meth:`checkpoint` wrote) with its env and
        the run's evaluation protocol, built without the run's dataset or buffer
        (``rlft.runtime.acting``); ``deterministic=False`` samples the policy's own exploration."""
        raise ValueError(f"loading a policy to act is not supported for {cls.pipeline!r} runs yet (o2o and finetune runs are)")

    def metric_limits(self) -> tuple[float, float] | None:
        """The range of :attr:`plot_metric` (bands are clipped to it), ``None`` when unbounded."""
        return None

    def finish(self) -> None:
        """Called once after the last phase (e.g. save the trained model)."""

    def check_budget(self, pretraining: Mapping[str, int], finetuning: Mapping[str, int]) -> None:
        """Refuse budgets that make no run (``ConfigError`` naming the keys): all zero, or a zero
        fine-tuning budget when ``init_from`` skips pretraining. Keys map to their checked values."""
        budgets = {**finetuning} if self.cfg.get("init_from") else {**pretraining, **finetuning}
        if not any(budgets.values()):
            given = " and ".join(f"{key}={value}" for key, value in budgets.items())
            why = " (init_from skips pretraining)" if self.cfg.get("init_from") else ""
            raise ConfigError(f"{given}: this run would train nothing{why}; give a budget > 0")

    # ----------------------------------------------------------------- counters
    @property
    def phase(self) -> Phase | None:
        return self.phases[self.phase_index] if self.phase_index < len(self.phases) else None

    @property
    def pretraining_phases(self) -> int:
        return sum(p.pretraining for p in self.phases)

    def log_step(self, phase_step: int | None = None) -> int:
        """The step a metric row gets now: ``step`` on the axis, ``phase_step - steps`` before it."""
        phase = self.phase
        if phase is None or phase.on_axis:
            return self.step
        return (self.phase_step if phase_step is None else phase_step) - phase.steps

    def log(self, metrics: Mapping[str, Any], phase_step: int | None = None) -> None:
        """One ``metrics.csv`` row (and TensorBoard scalars) for the current phase, once the updates
        since the last check are known to be finite (:meth:`check_updates`)."""
        self.check_updates()
        name = self.phase.name if self.phase is not None else "done"
        self.logger.log(self.log_step(phase_step), {"phase": name, **metrics})

    def check_update(self, metrics: Mapping[str, Any]) -> Mapping[str, Any]:
        """Queue one update's ``metrics`` for the divergence check and return them.

        The check runs at the next log row, evaluation or checkpoint (and after at most
        :data:`UNCHECKED_UPDATES` updates), for all queued updates with one device sync: an update
        never waits on an accelerator, and a diverged learner is stopped before anything it did is
        logged, evaluated or saved.
        """
        name = self.phase.name if self.phase is not None else "done"
        self._unchecked.append((name, self.phase_step, self.step, metrics))
        if len(self._unchecked) >= UNCHECKED_UPDATES:
            self.check_updates()
        return metrics

    def check_updates(self) -> None:
        """Stop the run with :class:`RunError` naming the first queued update with a NaN or infinite
        metric (a diverged learner must not train on, nor reach a checkpoint)."""
        queued, self._unchecked = self._unchecked, []
        if all_finite([metrics for *_, metrics in queued]):
            return
        name, phase_step, step, bad = next((n, p, s, b) for n, p, s, m in queued if (b := first_non_finite(m)))
        newest = latest_checkpoint(self.run_dir / "checkpoints")
        raise RunError(
            f"training diverged in phase {name} at step {phase_step} (run step {step}): "
            f"{bad[0]} = {bad[1]}; lower the learning rate or reward scale. The newest checkpoint "
            f"({newest if newest is not None else 'none yet'}) holds the last good state."
        )

    # --------------------------------------------------------------- evaluation
    def evaluate(self, phase: str | None = None) -> EvalResult:
        """Evaluate, record the result in the history and ``eval.json``, and log it."""
        self.check_updates()
        phase = phase or self.phase.name
        result = self.evaluate_policy(phase)
        record = {"step": self.step, "phase": phase, "phase_step": self.phase_step, **result.as_dict()}
        self.eval_history.append(record)
        self.logger.log(self.step, {"phase": phase, "eval/return": result.return_mean,
                                    "eval/normalized_score": result.normalized_score,
                                    "eval/success_rate": result.success_rate})
        self.write_eval_json()
        return result

    def results(self) -> dict[str, Any]:
        """The content of ``eval.json``."""
        pretraining = {p.name for p in self.phases if p.pretraining}
        before = [r for r in self.eval_history if r["phase"] in pretraining]
        last = self.phases[-1].name if self.phases else None
        after = [r for r in self.eval_history if r["phase"] == last]
        done = self.phase_index >= len(self.phases)
        info = self.describe()
        return {
            "pipeline": self.pipeline,
            "task": info["task"],
            "method": info["method"],
            "seed": int(self.cfg.seed),
            "source": info["source"],
            "metric": self.plot_metric,
            "axis": self.axis,
            "step": self.step,
            "done": done,
            "before": before[-1] if before else None,
            "after": after[-1] if (done and after) else None,
            "history": self.eval_history,
            "details": {**info.get("details", {}), "reference_score": self._reference_record()},
            "compute": self.compute(),
        }

    def write_eval_json(self) -> None:
        write_eval_json(self.run_dir, self.results())

    def _reference_record(self) -> dict[str, Any] | None:
        """:meth:`reference_score` as ``{"label", "value"}`` for ``eval.json`` (computed once)."""
        if self._reference is None:
            reference = self.reference_score()
            self._reference = ({"label": reference[0], "value": reference[1] if math.isfinite(reference[1]) else None}
                               if reference else {})
        return self._reference or None

    def wall_seconds(self) -> float:
        """Wall-clock seconds spent on this run's work: the sessions before the checkpoint it resumed
        from, plus this one (time lost to a kill after the last checkpoint is not counted: that work
        is done again)."""
        return self._seconds_saved + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def compute(self) -> dict[str, Any]:
        """``eval.json``'s ``compute``: wall-clock seconds, the device (CPU model or GPU name), torch
        threads and version: what a benchmark report states beside every number."""
        return {"wall_seconds": round(self.wall_seconds(), 2), "device": _device_name(str(self.device)),
                "threads": torch.get_num_threads(), "torch": torch.__version__}

    # -------------------------------------------------------------- checkpoints
    def checkpoint(self) -> Path:
        """Save the whole run state as ``checkpoints/step_<work>`` (atomic); a state holding a NaN
        is refused (:class:`RunError`), so the newest checkpoint is always a good one."""
        self.check_updates()
        pipeline_state = self.pipeline_state()
        broken = _nan_tensors(pipeline_state)
        if broken:
            raise RunError(f"not saving a checkpoint at step {self.step}: NaN in {', '.join(broken[:5])}"
                           f"{' ...' if len(broken) > 5 else ''} (the run diverged)")
        state = {
            "pipeline": self.pipeline,
            "counters": {"phase_index": self.phase_index, "phase_step": self.phase_step, "step": self.step,
                         "work": self.work, "log_step": self.log_step()},
            "rng": get_rng_state(),
            "eval_history": self.eval_history,
            "config": OmegaConf.to_yaml(self.cfg, resolve=True),
            "wall_seconds": self.wall_seconds(),
            "trackers": self.logger.tracker_ids if self.logger is not None else {},
            "state": pipeline_state,
        }
        return save_checkpoint(self.run_dir / "checkpoints", self.work, state, self.keep_checkpoints)

    def resume(self) -> bool:
        """Hold the run folder (:class:`RunLock`: another live process in it is refused) and load
        its newest good checkpoint; ``False`` when there is none."""
        if not self.run_dir.is_dir():
            return False
        self.lock = RunLock(self.run_dir)
        try:
            path, state = self._newest_good_checkpoint()
        except BaseException:
            self._release()
            raise
        if path is None:
            self._release()
            return False
        self.lock.announce()
        counters = state["counters"]
        self.phase_index, self.phase_step = counters["phase_index"], counters["phase_step"]
        self.step, self.work = counters["step"], counters["work"]
        self.eval_history = list(state["eval_history"])
        self._seconds_saved = float(state.get("wall_seconds", 0.0))  # checkpoints before 2026-12-07 have none
        self._resume_log_step = int(counters["log_step"])
        self._reopen_extended(state)
        self._tracker_ids = dict(state.get("trackers") or {})  # checkpoints before 2026-12-08 have none
        where = f"phase {self.phase.name}, {self.phase_step} steps into it" if self.phase else "finished"
        print(f"resumed from {path} ({where}; step {self.step})")
        n = self.pretraining_phases
        if self.phase_index == n and self.phase_step == 0 and not (self.run_dir / PRETRAINED_CHECKPOINT).is_dir():
            # killed between the end-of-pretraining save and keeping it: this checkpoint is that state
            self._keep_pretrained(path)
            print(f"  wrote the missing {PRETRAINED_CHECKPOINT}/ from it")
        return True

    def _reopen_extended(self, state: Mapping[str, Any]) -> None:
        """A finished run whose last phase's budget (:attr:`budget_key`) was raised on resume goes
        back into that phase where it stopped (``eval.json`` is not ``done`` until it ends again)."""
        if self.phase is not None or not self.phases or self.budget_key is None:
            return
        saved = OmegaConf.select(OmegaConf.create(state["config"]), self.budget_key)
        if saved is not None and self.phases[-1].steps > int(saved):
            self.phase_index, self.phase_step = len(self.phases) - 1, int(saved)

    def _release(self) -> None:
        """Give up the run folder (the run ended, or a resume found nothing to continue)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _newest_good_checkpoint(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The newest checkpoint that passes its checksum and loads into this run, and its state
        (loaded into the pipeline). A bad one (damaged, or whole but not a checkpoint of this
        pipeline's structure) is said by name, renamed to ``corrupt-step_*`` (kept, but out of the
        way of later saves) and skipped; one of another pipeline stops the resume."""
        bad = []
        for path in reversed(list_checkpoints(self.run_dir / "checkpoints")):
            try:
                state = load_checkpoint(path, self.device)
                self._check_pipeline(state, path, "cannot resume")
                self._check_structure(state, path)
                self._load_state(state, path)
                return path, state
            except CorruptCheckpointError as error:
                bad.append(quarantine(path).name)
                print(f"rlft: warning: skipping a corrupt checkpoint: {error}; renamed it to {bad[-1]}, "
                      f"falling back to the one before it", file=sys.stderr)
        if bad:
            raise CorruptCheckpointError(f"cannot resume {self.run_dir}: every checkpoint failed its check "
                                         f"({', '.join(bad)}); start a new run")
        return None, None

    @staticmethod
    def _check_structure(state: Mapping[str, Any], path: Path) -> None:
        """:class:`CorruptCheckpointError` unless ``state`` has what :meth:`checkpoint` writes."""
        missing = [key for key, kind in CHECKPOINT_KEYS.items() if not isinstance(state.get(key), kind)]
        if not missing:
            missing = [f"counters.{key}" for key in COUNTER_KEYS if not isinstance(state["counters"].get(key), int)]
        if missing:
            raise CorruptCheckpointError(f"{path}: its manifest matches but {', '.join(missing)} is missing or of "
                                         "another type, so it is not a checkpoint rlft wrote")

    def _load_state(self, state: Mapping[str, Any], path: Path) -> None:
        """:meth:`load_pipeline_state` and the RNG states, with a state that does not fit this run
        (missing entries, values of another type, other tensor shapes) raised as
        :class:`CorruptCheckpointError` naming the checkpoint. Other failures (out of memory, a Ray
        worker that does not start) say nothing about the file and are raised as they are, so a
        good checkpoint is never quarantined for them. A checkpoint that fails halfway is
        overwritten by the whole load of the one before it."""
        try:
            self.load_pipeline_state(state["state"])
            set_rng_state(state["rng"])
        except (KeyError, IndexError, TypeError) as error:
            raise CorruptCheckpointError(f"{path}: its state does not fit this run ({type(error).__name__}: "
                                         f"{error})") from None
        except RuntimeError as error:
            why = state_mismatch(error)
            if why is None:
                raise
            raise CorruptCheckpointError(f"{path}: its state does not fit this run ({why})") from None

    def _check_pipeline(self, state: Mapping[str, Any], path: Path, action: str) -> None:
        theirs = state.get("pipeline")
        if theirs is None:
            raise ValueError(f"{action} {path}: written by an older rlft that recorded no pipeline; start a new run")
        if theirs != self.pipeline:
            raise ValueError(f"{action} {path}: it holds a {theirs!r} run, not a {self.pipeline!r} one")

    def _keep_pretrained(self, path: Path) -> None:
        """Keep the end-of-pretraining checkpoint as ``pretrained_checkpoint/``: hard links (a copy
        where links fail) in a temporary folder, then a rename, so a crash never leaves half of one."""
        final, tmp = self.run_dir / PRETRAINED_CHECKPOINT, self.run_dir / f".tmp-{PRETRAINED_CHECKPOINT}"
        shutil.rmtree(tmp, ignore_errors=True)

        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(path, tmp, copy_function=link)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def prepare_init_from(self) -> None:
        """Load another run's pretrained state (``init_from``: a run folder's
        ``pretrained_checkpoint/``, or a checkpoint folder) and go straight to fine-tuning.
        Everything that can refuse it (a missing or damaged checkpoint, another pipeline, policy
        family or network size) is checked here, before the run folder is claimed, so a refused
        start leaves nothing behind (``rlft`` calls this from :func:`rlft.runtime.launch.build`)."""
        source = Path(self.cfg.init_from)
        path = source / PRETRAINED_CHECKPOINT if (source / PRETRAINED_CHECKPOINT).is_dir() else source
        path = path.parent if path.name == STATE_FILE and path.is_file() else path  # the state file itself named
        if not path.exists():
            raise FileNotFoundError(f"init_from={source}: no such run folder or checkpoint")
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"init_from={source}: neither a run folder with a {PRETRAINED_CHECKPOINT}/ nor a "
                                    "checkpoint folder (give the folder of a run that finished pretraining)")
        try:
            state = load_checkpoint(path, self.device)
        except CorruptCheckpointError as error:
            raise CorruptCheckpointError(f"init_from={source}: {error}") from None
        self._check_pipeline(state, path, "init_from")
        self._check_structure(state, path)
        counters, n = state["counters"], self.pretraining_phases
        if counters["phase_index"] < n:
            raise ValueError(f"init_from {path}: that checkpoint is from before the end of pretraining")
        try:
            self.load_pretrained(state["state"], OmegaConf.create(state["config"]), path)
        except KeyError as error:
            raise ValueError(f"init_from {path}: its state lacks {error}, so it cannot start this run") from None
        except RuntimeError as error:
            why = state_mismatch(error)
            if why is None:
                raise
            raise ValueError(f"init_from {path}: its networks do not fit this run's ({why}); start from a run "
                             "with the same network sizes, or give this run that run's sizes") from None
        self.phase_index, self.phase_step = n, 0
        self.step, self.work = counters["step"], counters["work"]
        self._initialised_from = path

    def _start_from_pretrained(self) -> None:
        """Evaluate the policy :meth:`prepare_init_from` loaded once, as the last pretraining phase."""
        print(f"initialised from {self._initialised_from} (pretrained to step {self.step})")
        self.evaluate(self.phases[self.pretraining_phases - 1].name)
        self.checkpoint()

    # ---------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Run every remaining phase, holding the run folder throughout; returns the content of ``eval.json``."""
        fresh = self._resume_log_step is None
        if fresh and self.cfg.get("init_from") and self._initialised_from is None:
            self.prepare_init_from()  # refused before the folder is claimed
        if fresh:
            self.lock = claim_run_folder(self.run_dir)
            self.claimed = True
        self._started = time.perf_counter()
        try:
            self._run_phases(fresh)
        finally:
            self._release()
        return json.loads((self.run_dir / EVAL_FILE).read_text())

    def _run_phases(self, fresh: bool) -> None:
        self.logger = open_run_folder(self.run_dir, self.cfg, self._resume_log_step, self._tracker_ids)
        write_run_record(self.run_dir, self.origin, fresh)
        try:
            if fresh and self.cfg.get("init_from"):
                self._start_from_pretrained()
            while self.phase is not None:
                phase = self.phase
                phase.run()
                if phase.evaluate_at_end:
                    self.evaluate()
                self.phase_index += 1
                self.phase_step = 0
                path = self.checkpoint()
                if phase.pretraining and self.phase_index == self.pretraining_phases:
                    self._keep_pretrained(path)
        finally:
            self.logger.close()
        self.write_eval_json()
        self.finish()
        results = self.results()
        boundary = results["before"]["step"] if results["before"] else None
        plot_learning_curve(
            self.eval_history, self.run_dir / "learning_curve.png",
            title=f"{results['method']} on {results['task']} (seed {results['seed']})",
            xlabel=self.axis, metric=self.plot_metric,
            phase_boundaries={"fine-tuning": boundary} if boundary and results["after"] else None,
            reference=self.reference_score(), limits=self.metric_limits(),
        )


class DatasetRunner(Runner):
    """A pipeline that learns from a dataset of transitions in a registered task (offline-to-online,
    BC -> PPO): it sets ``self.task`` and ``self.dataset`` (:meth:`load_dataset`); scores are the
    task's normalised ones, with the dataset's own score drawn on the learning curve."""

    method_key: ClassVar[str]  # the config group that names the method ("agent", "method")
    reference_label: ClassVar[str] = "dataset"

    def load_dataset(self, ds_cfg: DictConfig, env_cfg: DictConfig) -> TransitionDataset:
        """The dataset ``ds_cfg`` names, checked against ``self.task`` made as ``env_cfg`` says:
        its environment, action units (:func:`rlft.offline.loaders.load_task_dataset`) and shapes.
        A missing one's error shows the command that writes it (``collect:``)."""
        extra = env_cfg.get("env_kwargs") or {}
        probe = make_env(env_cfg)
        try:
            dataset = load_task_dataset(
                ds_cfg.source, self.task, ds_cfg.get("format", "auto"), ds_cfg.get("collect"),
                OmegaConf.to_container(extra, resolve=True) if isinstance(extra, DictConfig) else extra,
                native_action_space(probe))
            dataset.check_spaces(probe.observation_space.shape, probe.action_space.shape, self.task.env_id)
        finally:
            probe.close()
        return dataset

    def describe(self) -> dict[str, Any]:
        return {"task": self.task.name, "method": self.cfg[self.method_key].name, "source": self.dataset.source,
                "details": {"env_id": self.task.env_id, "dataset": self.dataset.summary()}}

    def reference_score(self) -> tuple[str, float] | None:
        returns = self.dataset.episode_returns()
        if not len(returns):
            return (self.reference_label, float("nan"))
        if self.dataset.ref_min_score is None:  # a task without reference returns: the metric is the return
            return (self.reference_label, float(returns.mean()))
        return (self.reference_label, float(self.dataset.normalize_score(returns).mean()))

    def metric_limits(self) -> tuple[float, float] | None:
        return (0.0, 100.0) if self.task.sparse_reward else None  # sparse tasks score their success rate
