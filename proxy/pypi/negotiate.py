"""Server-driven content negotiation over an ``Accept`` header (RFC 9110 §12.5.1).

Pure functions, no aiohttp: the simple index uses them to pick PEP 691 JSON or PEP 503 HTML.
Clients send the same few Accept headers over and over, so ``choose`` remembers its recent answers
(the warm path of a cached page then costs one dictionary lookup here).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

MAX_ACCEPT_ITEMS = 64
# Bounds what the memo keeps: a client cannot grow it with endless distinct or huge headers.
CHOICES_REMEMBERED = 256
MAX_REMEMBERED_HEADER = 1024


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One ``type/subtype;q=`` item of an Accept header."""

    type: str
    subtype: str
    q: float

    def specificity(self, media_type: str) -> int:
        """How precisely this range names ``media_type``: -1 no match, 0 */*, 1 type/*, 2 exact."""
        mtype, _, msub = media_type.partition("/")
        if self.type == "*" and self.subtype == "*":
            return 0
        if self.type != mtype:
            return -1
        if self.subtype == "*":
            return 1
        return 2 if self.subtype == msub else -1


def _quality(params: list[str]) -> float | None:
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            if not 0.0 <= q <= 1.0:
                return None
            return q
    return 1.0


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header; an absent or empty header means ``*/*``.

    Malformed items are skipped rather than failing the request, as most servers do.
    """
    if header is None or not header.strip():
        return [MediaRange("*", "*", 1.0)]
    ranges: list[MediaRange] = []
    for item in header.split(",")[:MAX_ACCEPT_ITEMS]:
        media, *params = item.split(";")
        mtype, sep, msub = media.strip().lower().partition("/")
        if not sep or not mtype or not msub or (mtype == "*" and msub != "*"):
            continue
        q = _quality(params)
        if q is None:
            continue
        ranges.append(MediaRange(mtype, msub, q))
    return ranges


def quality_of(media_type: str, ranges: Sequence[MediaRange]) -> float:
    """The q-value the client gives ``media_type``: the most specific matching range decides."""
    best_specificity = -1
    q = 0.0
    for r in ranges:
        s = r.specificity(media_type)
        if s > best_specificity or (s == best_specificity and s >= 0 and r.q > q):
            best_specificity, q = s, r.q
    return q if best_specificity >= 0 else 0.0


def choose(header: str | None, offers: Sequence[str]) -> str | None:
    """The offer the client prefers most (ties: the earlier offer); None if none is acceptable."""
    if isinstance(offers, tuple) and (header is None or len(header) <= MAX_REMEMBERED_HEADER):
        return _remembered_choice(header, offers)
    return _choose(header, offers)


@functools.lru_cache(maxsize=CHOICES_REMEMBERED)
def _remembered_choice(header: str | None, offers: tuple[str, ...]) -> str | None:
    return _choose(header, offers)


def _choose(header: str | None, offers: Sequence[str]) -> str | None:
    ranges = parse_accept(header)
    best: str | None = None
    best_q = 0.0
    for offer in offers:
        q = quality_of(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    return best


__all__ = ["MediaRange", "choose", "parse_accept", "quality_of"]
