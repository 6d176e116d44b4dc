"""A one-line progress display on stderr, redrawn at most five times a second (only on a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 28


class ProgressBar:
    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval_seconds: float = 0.2,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._clock = clock
        self._started = clock()
        self._last_drawn = float("-inf")
        self._min_interval = min_interval_seconds
        self._width = 0

    def update(self, done: int, detail: str = "", *, force: bool = False) -> None:
        """Show ``done`` units (of ``total`` when known) and a short detail text."""
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._last_drawn < self._min_interval:
            return
        self._last_drawn = now
        elapsed = max(now - self._started, 1e-9)
        if self.total:
            share = min(1.0, done / self.total)
            filled = int(share * BAR_WIDTH)
            bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} {done:,}/{self.total:,}"
        else:
            bar = f"{done:,}"
        line = f"{self.label} {bar} {done / elapsed:,.0f}/s {detail}".rstrip()
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
