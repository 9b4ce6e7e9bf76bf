"""``pkgate blocklist status`` and ``pkgate blocklist refresh``.

``status`` reads what the servers last wrote after a refresh (``<data_dir>/blocklist/status.json``)
so it needs no running server and no credentials.  ``refresh`` writes a request into the database;
every server watching it re-reads its feeds within a second (``--wait`` waits for that status).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tokenapi.store import Store

from ..settings import Settings
from .admin import with_iso_times
from .blocklist import STATUS_FILE

POLL = 0.2


def status_path(settings: Settings) -> Path:
    return settings.data_dir / "blocklist" / STATUS_FILE


def read_status(settings: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads(status_path(settings).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(status: dict[str, Any]) -> str:
    """A few lines for people: outcome, counts, one line per source."""
    shown = with_iso_times(status)
    lines = [
        f"blocklist: {shown.get('outcome')}, {shown.get('entries', 0)} entries for "
        f"{shown.get('packages', 0)} packages (kinds {shown.get('kinds')}), "
        f"last refresh {shown.get('last_refresh') or 'never'}"
    ]
    for source in shown.get("sources", []):
        line = (
            f"  {source.get('kind')}: {source.get('source')}: {source.get('outcome')}, "
            f"{source.get('entries')} entries, {source.get('malformed')} malformed, "
            f"serving {source.get('serving')}, last success {source.get('last_success') or 'never'}"
        )
        if source.get("error"):
            line += f"\n    error: {source['error']}"
        lines.append(line)
    breach = shown.get("breach_notifications")
    if isinstance(breach, dict):
        counts = breach.get("notifications", {})
        lines.append(
            "breach mails: "
            + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("sent", "pending", "failed", "skipped"))
        )
        for f in breach.get("failing", []):
            lines.append(
                f"  {f['advisory_id']} to {f['email']}: {f['attempts']} attempts, {f['error']}"
            )
    return "\n".join(lines)


def blocklist_status(settings: Settings, as_json: bool, extra: dict[str, Any] | None = None) -> int:
    """Print the last status a server wrote, with ``extra`` (e.g. breach mails) merged in."""
    status = read_status(settings)
    if status is None:
        if not settings.blocklist_feeds and settings.blocklist_file is None:
            print("blocklist: off (set blocklist_feeds and/or blocklist_file)", file=sys.stderr)
        else:
            print(f"blocklist: no server has refreshed it yet ({status_path(settings)})")
        return 1
    status.update(extra or {})
    print(json.dumps(with_iso_times(status), indent=2) if as_json else describe(status))
    return 1 if status.get("errors") else 0


async def blocklist_refresh(
    settings: Settings, open_store: Callable[[Settings], Awaitable[Store]], wait: float
) -> int:
    store = await open_store(settings)
    try:
        requested = time.time()
        number = await store.request_blocklist_refresh()
    finally:
        await store.close()
    print(f"blocklist refresh #{number} requested", file=sys.stderr)
    if wait <= 0:
        return 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = read_status(settings)
        if status is not None and (status.get("last_refresh") or 0) >= requested:
            print(describe(status))
            return 1 if status.get("errors") else 0
        await asyncio.sleep(POLL)
    print(f"pkgate: no server finished a refresh within {wait:g}s", file=sys.stderr)
    return 1


def add_commands(
    sub: Any,
    store_args: Callable[[argparse.ArgumentParser], None],
    status_func: Callable[[argparse.Namespace], int],
    refresh_coro: Callable[[argparse.Namespace], Awaitable[int]],
) -> None:
    """The ``blocklist`` command group (``sub`` is the top-level subparsers object)."""
    group = sub.add_parser("blocklist", help="supply-chain blocklist").add_subparsers(
        dest="action", required=True
    )
    status = group.add_parser("status", help="sources, counts, last refresh and errors")
    status.add_argument("--json", action="store_true")
    store_args(status)
    status.set_defaults(func=status_func)
    refresh = group.add_parser("refresh", help="make running servers re-read their feeds now")
    refresh.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for a server's refresh (0: no)"
    )
    store_args(refresh)
    refresh.set_defaults(coro=refresh_coro)
