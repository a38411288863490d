"""Metric logging to ``metrics.csv``, TensorBoard and the optional trackers
(:mod:`rlft.runtime.trackers`), resumable without duplicate rows."""

from __future__ import annotations

import csv
import math
import threading
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from rlft.runtime.trackers import Tracker, finite_scalars, flat_hparams

STEP_KEY = "step"


class MetricLogger:
    """Writes one CSV row per :meth:`log` call and mirrors scalars to TensorBoard.

    The CSV header grows as new keys appear (the file is rewritten then; metrics files
    are small). ``resume_step`` drops rows logged after that step, so a run resumed from a
    checkpoint does not keep the rows of the interrupted tail twice.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None,
                 trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)
        self.path = Path(run_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, float | str]] = []
        self._fields: list[str] = [STEP_KEY]
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self._fields = list(reader.fieldnames or [STEP_KEY])
                # a row with fewer or more fields than the header (cut short by a kill) is dropped
                self._rows = [row for row in reader if None not in row and None not in row.values()
                              and int(float(row[STEP_KEY])) <= resume_step]
            self._rewrite()
        elif self.path.exists():
            raise FileExistsError(f"{self.path} exists: a fresh run never overwrites another run's metrics")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        """Record ``metrics`` at ``step``."""
        row: dict[str, float | str] = {STEP_KEY: step, **metrics}
        new_keys = [k for k in row if k not in self._fields]
        self._rows.append(row)
        if new_keys:
            self._fields.extend(new_keys)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._fields).writerow(row)
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
        scalars = finite_scalars(metrics)
        for tracker in self.trackers:
            tracker.log(step, scalars)

    def describe_run(self, cfg: DictConfig) -> None:
        """TensorBoard's record of what the run is: the resolved config as text (TEXT tab) and
        its scalar values as hyperparameters (HPARAMS tab), written once at a fresh start."""
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        self._writer.add_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```", 0)
        values = {k: v for k, v in flat_hparams(cfg).items() if isinstance(v, (int, float, str, bool))}
        for summary in hparams(values, {"eval/return": float("nan")}):
            self._writer.file_writer.add_summary(summary)

    @property
    def tracker_ids(self) -> dict[str, str]:
        """Each tracker's run id (saved in checkpoints: resume re-opens the same tracker runs)."""
        return {t.name: t.run_id for t in self.trackers if t.run_id is not None}

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._fields)
            writer.writeheader()
            writer.writerows(self._rows)
        tmp.replace(self.path)

    def close(self, timeout: float = 10.0) -> None:
        """Close TensorBoard's writer, waiting at most ``timeout`` seconds: an interrupt that struck
        inside its locks must not hang the exit (``metrics.csv`` is complete row by row anyway)."""
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
        if self._writer is not None:
            closer = threading.Thread(target=self._writer.close, daemon=True, name="tensorboard-close")
            closer.start()
            closer.join(timeout)


class MeanAccumulator:
    """Averages the scalar dicts returned by ``update`` between two log calls.

    Tensor values (0-dim, possibly on an accelerator) are summed as tensors, on their device; they
    become floats only in :meth:`pop` and :meth:`state_dict`, so adding never waits on the device.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float | torch.Tensor] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: Mapping[str, float | torch.Tensor]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + (value.detach() if isinstance(value, torch.Tensor) else float(value))
            self.counts[key] += 1

    def pop(self) -> dict[str, float]:
        """The means so far; the accumulator is emptied."""
        means = {k: float(self.sums[k]) / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return means

    def state_dict(self) -> dict[str, dict]:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, dict]) -> None:
        self.sums = defaultdict(float, state["sums"])
        self.counts = defaultdict(int, state["counts"])
