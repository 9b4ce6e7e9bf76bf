"""Connects the blocklist's new-entry hook to the breach notifier (tokenapi never imports proxy).

Each ``NewEntry`` of a refresh becomes a ``tokenapi.breach.BreachEntry``; manual blocks all carry
the advisory id ``manual``, so theirs is made per package (``manual:<ecosystem>:<package>``) and
every manual block mails its downloaders once.  The notifier does its work in the background:
the hook only hands the entries over.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from tokenapi.breach import BreachEntry
from tokenapi.keys import breach_key

from .supplychain.blocklist import Blocklist, NewEntry


def breach_entries(fresh: Sequence[NewEntry]) -> list[BreachEntry]:
    out = []
    for e in fresh:
        advisory = e.advisory
        if advisory == "manual":
            advisory = f"manual:{e.ecosystem}:{e.package}"
        out.append(
            BreachEntry(advisory, e.summary, e.ecosystem, e.package, e.matches, e.first_seen)
        )
    return out


def connect(app: web.Application, blocklist: Blocklist) -> None:
    """Mail downloaders of what each refresh of ``blocklist`` newly blocks."""
    early: list[BreachEntry] = []  # reported before the notifier existed (start-up order)

    def hook(fresh: Sequence[NewEntry]) -> None:
        early.extend(breach_entries(fresh))
        notifier = app.get(breach_key)
        if notifier is not None:
            notifier.entries_added(early)
            early.clear()

    blocklist.new_entry_hooks.append(hook)
