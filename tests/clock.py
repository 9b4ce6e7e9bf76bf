"""A controllable wall clock: tests move time forward instead of sleeping."""

from __future__ import annotations

import time


class FakeClock:
    """Starts at the real time; only ``advance`` moves it."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
