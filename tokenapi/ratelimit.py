"""An in-memory rate limiter keyed by string: ``limit`` events per ``period`` seconds, with bursts.

It is a GCRA (generic cell rate algorithm): each key holds one number, its theoretical arrival
time, so memory per key is constant.  Keys live in a plain dict kept in the order they were last
counted (a ``hit`` is one lookup and one re-insertion: the registry's warm path pays it twice per
request): a key whose arrival time has passed has no effect left and is dropped from the front as
soon as it is the oldest, and when ``max_keys`` are held the least recently counted key goes.
State is per process (the registry's request throttles); ``StoreLimiter`` keeps its state in
the store instead, for the limits that must hold across workers and instances.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .store import Store, limits

DEFAULT_MAX_KEYS = 100_000


class RateLimiter:
    """``hit(key)`` counts an event and answers None, or the whole seconds to wait when over."""

    def __init__(
        self,
        limit: int,
        period: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._interval = period / limit
        self._clock = clock
        self._max_keys = max_keys
        # key -> theoretical arrival time, in the order keys were last counted.
        self._tat: dict[str, float] = {}

    def check(self, key: str) -> int | None:
        """Would an event for ``key`` be allowed now?  None if so, else seconds to wait."""
        return self.hit(key, count=False)

    def hit(self, key: str, *, count: bool = True) -> int | None:
        """Count one event for ``key`` unless over the limit; None if allowed, else seconds.

        One call on the registry's warm path (which pays it twice per request): the arithmetic
        and the bookkeeping are written out here rather than in helpers.
        """
        now = self._clock()
        held = self._tat
        tat = held.get(key, now)
        if tat < now:
            tat = now
        new_tat = tat + self._interval
        excess = new_tat - now - self.period
        # Tolerance: with limit 1, (now + period) - now - period may round to a hair above 0.
        if excess > 1e-6:
            return max(1, math.ceil(excess))
        if not count:
            return None
        # Kept as the most recently counted key; a new key makes room, oldest first, dropping
        # keys whose time has passed.
        if held.pop(key, None) is None:
            while held:
                oldest = next(iter(held))
                if held[oldest] > now and len(held) < self._max_keys:
                    break
                del held[oldest]
        held[key] = new_tat
        return None

    def refund(self, key: str) -> None:
        """Give back one event counted by ``hit`` (an attempt reserved up front that did not
        turn out to be a failure)."""
        tat = self._tat.get(key)
        if tat is None:
            return
        tat -= self._interval
        if tat <= self._clock():
            del self._tat[key]
        else:
            self._tat[key] = tat

    def reset(self, key: str) -> None:
        """Forget ``key`` (e.g. after a successful login)."""
        self._tat.pop(key, None)

    def __len__(self) -> int:
        return len(self._tat)


@dataclass(frozen=True, slots=True)
class StoreLimiter:
    """A limit whose count lives in the store: every worker and instance sharing the database
    shares it (the limits that protect accounts: registrations, logins, resets, token creation).
    Same interface as ``RateLimiter`` but awaited, with the store passed in."""

    name: str
    limit: int
    period: float

    def _key(self, key: str) -> str:
        return f"{self.name}:{key}"

    async def hit(self, store: Store, key: str) -> int | None:
        """Count one event for ``key`` unless over: None if allowed, else seconds to wait."""
        return await limits.hit(store, self._key(key), self.limit, self.period)

    async def refund(self, store: Store, key: str) -> None:
        await limits.refund(store, self._key(key), self.limit, self.period)

    async def reset(self, store: Store, key: str) -> None:
        await limits.reset(store, self._key(key))
