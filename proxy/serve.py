"""Running the server: one process, or several sharing one listening socket."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from tokenapi.store import Store
from tokenapi.store.sqlite import close_leftover_connections

from . import logmask
from .accesslog import AccessLogSink, access_log_class, access_log_key, access_logger
from .app import create_app
from .server import run_app
from .settings import Settings
from .supervisor import Supervisor

log = logging.getLogger("pkgate")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The cyclic collector's thresholds in a serving process (Python's default: 700, 10, 10).
GC_THRESHOLD = (10_000, 10, 10)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # Every line, whoever logs it, is masked like the access log (issue 11, item 11).
    logmask.install(LOG_FORMAT)


def _listen(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _install_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a server that parses large documents.

    Parsing a multi-megabyte packument makes hundreds of thousands of dicts and lists that stay
    alive until it is rewritten; with the default thresholds the collector runs every 700 of
    them and walks them again and again (with every object the process holds, in full
    collections), which took 40% of a rewrite's time.  Collections every 10,000 allocations
    take most of that away; and what start-up made (modules, the application) is frozen, so
    that no collection walks it again.  Almost all garbage is freed by reference counting
    alone; cycles still are collected, a little later.  Measured: a restarted pkgate building
    340 packuments spent about 15% less CPU.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _run_worker(
    settings: Settings, sock: socket.socket, ready: Callable[[], None] | None = None
) -> None:
    _install_loop_policy()
    # Opened in the worker (after the fork): its writer thread belongs to this process.
    sink = AccessLogSink.for_settings(settings)
    app = create_app(settings)
    if sink is not None:
        app[access_log_key] = sink
    tune_gc()
    if ready is not None:

        async def started(_app: web.Application) -> None:
            ready()  # after every cleanup context started: store open, watches running

        app.on_startup.append(started)
    # On SIGTERM run_app stops listening, waits up to shutdown_grace for in-flight requests
    # (downloads included), then runs the cleanup contexts: last-used flush, store close.
    # The access log is written out last, once no request can add a line.
    try:
        run_app(
            app,
            sock=sock,
            access_log=access_logger() if sink is not None else None,
            access_log_class=access_log_class(settings, sink),
            shutdown_timeout=settings.shutdown_grace,
        )
    finally:
        if sink is not None:
            sink.close()
        # A store whose close failed (or never ran) would keep the process alive forever.
        left = close_leftover_connections()
        if left:
            log.warning("stopped %d database connection(s) left open at exit", left)


async def _migrate(settings: Settings) -> None:
    store = await Store.open(settings.database)
    await store.close()


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status."""
    configure_logging(settings)
    # Migrate once before any worker starts, and fail early on an unusable data directory.
    asyncio.run(_migrate(settings))
    sock = _listen(settings)
    host, port = sock.getsockname()[:2]
    log.info(
        "pkgate listening on http://%s:%s (public URL %s, npm upstream %s, PyPI upstream %s, "
        "%d worker(s))",
        host,
        port,
        settings.base_url,
        settings.npm_upstream or "-",
        settings.pypi_upstream or "-",
        settings.workers,
    )
    if settings.workers == 1:
        _run_worker(settings, sock)
        return 0
    supervisor = Supervisor(
        sock,
        settings.workers,
        lambda worker_sock, ready: _run_worker(settings, worker_sock, ready),
        grace=settings.shutdown_grace,
    )
    try:
        return supervisor.run()
    finally:
        sock.close()
