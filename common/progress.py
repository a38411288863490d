"""Progress of long work: a bar with rate and ETA on a terminal, plain periodic lines elsewhere.

Carriage-return bars turn CI logs and ``> run.log`` files into one enormous line, so when standard
error is not a terminal :class:`Progress` prints a line like
``offline  4000/10000 (40%)  52.1 it/s  eta 1m55s  score=3.1`` every ``interval`` seconds and
once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

PLAIN_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """``update(n)`` as work is done, ``set_postfix(score=...)`` for the latest result, ``close()``.

    ``enabled=False`` prints nothing; ``plain`` forces (or forbids) the line mode; by default it
    is used when standard error is not a terminal. ``leave=False`` removes the bar when done (and
    prints no closing line), for short repeated work such as evaluations.
    """

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True, unit: str = "it",
                 plain: bool | None = None, interval: float = PLAIN_INTERVAL_S, leave: bool = True):
        self.total, self.desc, self.done, self.unit = total, desc, initial, unit
        self.enabled, self.leave = enabled, leave
        self.plain = (not sys.stderr.isatty()) if plain is None else plain
        self.interval = interval
        self.postfix: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._first = initial
        self._last_print = self._started
        self._bar = None
        if enabled and not self.plain:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0, dynamic_ncols=True,
                             leave=leave)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.plain and time.perf_counter() - self._last_print >= self.interval:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.plain and self.leave and self.done > self._first:
            self._print(final=True)

    def line(self, final: bool = False) -> str:
        """The plain progress line for the work done so far."""
        elapsed = time.perf_counter() - self._started
        rate = (self.done - self._first) / max(elapsed, 1e-9)
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        if final:
            timing = f"done in {_duration(elapsed)}"
        else:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            timing = f"eta {_duration(eta)}" if eta != float("inf") else "eta ?"
        extra = "".join(f"  {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}  {self.done}/{self.total}{share}  {rate:.1f} {self.unit}/s  {timing}{extra}"

    def _print(self, final: bool = False) -> None:
        print(self.line(final), file=sys.stderr, flush=True)
        self._last_print = time.perf_counter()
