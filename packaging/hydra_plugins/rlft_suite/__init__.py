"""rlft's suite sweeper as a Hydra plugin. Hydra instantiates sweepers only from the
``hydra_plugins`` namespace and scans it at every start, so this module stays light: the class
defers everything to :mod:`rlft.suites.sweeper`, imported when a suite actually runs.

    rlft-bench run o2o tier=smoke     # selects hydra/sweeper=rlft_suite (configs/hydra/sweeper/)
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class SuiteSweeper(Sweeper):
    """Runs the jobs of one suite tier (``configs/suite/<suite>.yaml``) on the configured launcher,
    skipping finished runs and resuming interrupted ones; see :class:`rlft.suites.sweeper.SuiteSweep`."""

    def __init__(self, suite: str, tier: str, seeds: Any = None, out: str | None = None,
                 max_batch_size: int | None = None):
        from rlft.suites.sweeper import SuiteSweep

        self.sweep_run = SuiteSweep(suite=suite, tier=tier, seeds=seeds, out=out, max_batch_size=max_batch_size)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.sweep_run.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweep_run.sweep(arguments)
