"""The ``npm-notice`` header of a packument the policy changed: what was withheld and why.

npm prints an ``npm-notice`` response header as ``npm notice <text>`` (npm-registry-fetch's
``check-response``; not for answers its cache holds, so the answer is ``no-store``), so
``npm install x@1.1.0`` of a withheld version shows the reason beside npm's "No matching version
found".  The text is made once per policy variant of a packument (``PackumentEntry.without``,
memoised in the metadata cache with the variant), never per request.  It is printable ASCII
only (advisory summaries come from feeds: anything else becomes ``?``), and at most
``MAX_NOTICE`` characters: versions that do not fit are counted as "and N more".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ..registry.policy import Refusal

NOTICE_HEADER: Final = "npm-notice"
# npm shows the notice only for answers it does not cache (see ``routes.with_notice``).
NOTICE_CACHE_CONTROL: Final = "private, no-store"
MAX_NOTICE: Final = 400
PREFIX: Final = "pkgate withheld "


def printable(text: str) -> str:
    """``text`` with every character outside printable ASCII replaced by ``?``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def withheld_notice(removed: Mapping[str, Refusal], limit: int = MAX_NOTICE) -> str | None:
    """One line naming each removed version's refusal, newest listed last; None when none."""
    if not removed:
        return None
    messages = [printable(refusal.message) for refusal in removed.values()]
    shown: list[str] = []
    used = len(PREFIX)
    for index, message in enumerate(messages):
        left = len(messages) - index - 1
        tail = f"; and {left} more" if left else ""
        cost = len(message) + (2 if shown else 0)
        if used + cost + len(tail) > limit:
            break
        shown.append(message)
        used += cost
    rest = len(messages) - len(shown)
    if not shown:
        return f"{PREFIX}{rest} versions"[:limit]
    text = PREFIX + "; ".join(shown)
    return f"{text}; and {rest} more" if rest else text


__all__ = ["MAX_NOTICE", "NOTICE_CACHE_CONTROL", "NOTICE_HEADER", "printable", "withheld_notice"]
