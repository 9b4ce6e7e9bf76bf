"""``pkgate serve --workers N``: a supervisor process that keeps N workers serving one socket.

The supervisor opens the listening socket, forks the workers (each runs the whole app in its own
event loop) and then only waits for signals, with SIGCHLD, SIGTERM and SIGINT blocked and taken
synchronously (``sigtimedwait``), so no signal can arrive between a check and a wait.

- A worker reports "ready" through a pipe once its app has started (store open, caches built).
- A worker that dies after it was ready is replaced at once (the others keep the port answering).
- A worker that dies before it was ready is a start-up failure: it is retried with back-off, and
  after ``MAX_BOOT_FAILURES`` in a row the supervisor stops everything with a clear error
  (exit status 3) instead of looping.
- SIGTERM or SIGINT: forwarded to every worker, which stops accepting, finishes in-flight requests,
  flushes last-used and closes the store; the supervisor waits for all of them (up to
  ``shutdown_grace`` plus a margin, then SIGKILL) and exits 0 when every worker exited cleanly.
- Workers get SIGTERM if the supervisor itself dies (``PR_SET_PDEATHSIG``).

gunicorn's arbiter does the same for WSGI/aiohttp workers, but its aiohttp worker builds its own
runner (losing pkgate's request-line error handling and shutdown order), so this is kept small and
in-house.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("pkgate.supervisor")

MAX_BOOT_FAILURES = 5
BOOT_BACKOFF = 0.1  # seconds before retrying a worker that failed at start-up, doubled each time
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
EXIT_BOOT_FAILURE = 3
PR_SET_PDEATHSIG = 1

RunWorker = Callable[[socket.socket, Callable[[], None]], None]


@dataclass
class _Worker:
    number: int
    pid: int
    ready_fd: int | None
    ready: bool = False


class Supervisor:
    def __init__(
        self, sock: socket.socket, count: int, run_worker: RunWorker, *, grace: float
    ) -> None:
        self.sock = sock
        self.count = count
        self.run_worker = run_worker
        self.grace = grace
        self.workers: dict[int, _Worker] = {}
        self.boot_failures = 0
        self._respawn_at: list[tuple[float, int]] = []  # (monotonic time, worker number)
        self._old_mask: set[int | signal.Signals] = set()

    # -- the worker side ------------------------------------------------------------------

    def _child(self, number: int, ready_w: int) -> None:  # pragma: no cover - in the child
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        code = 1

        def ready() -> None:
            with contextlib.suppress(OSError):
                os.write(ready_w, b"r")
                os.close(ready_w)

        try:
            self.run_worker(self.sock, ready)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d (pid %d) failed", number, os.getpid())
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stderr.flush()
            os._exit(code)

    def _spawn(self, number: int) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - in the child
            os.close(ready_r)
            for other in self.workers.values():
                if other.ready_fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(other.ready_fd)
            self._child(number, ready_w)
        os.close(ready_w)
        self.workers[pid] = _Worker(number, pid, ready_r)

    # -- the supervisor -------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT or repeated start-up failures; the exit status."""
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for number in range(1, self.count + 1):
                self._spawn(number)
            while True:
                # Poll the ready pipes often while a worker is starting; otherwise only signals.
                starting = any(w.ready_fd is not None for w in self.workers.values())
                timeout = 0.02 if starting else 0.5
                if self._respawn_at:
                    first = min(t for t, _ in self._respawn_at)
                    timeout = max(0.0, min(timeout, first - time.monotonic()))
                info = signal.sigtimedwait(SIGNALS, timeout)
                self._collect_ready()
                if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    log.info(
                        "%s: stopping %d worker(s)",
                        signal.Signals(info.si_signo).name,
                        len(self.workers),
                    )
                    return self._drain()
                if self._reap() == "stop":
                    self._drain(quiet=True)
                    return EXIT_BOOT_FAILURE
                self._respawn_due()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def _collect_ready(self) -> None:
        fds = {w.ready_fd: w for w in self.workers.values() if w.ready_fd is not None}
        if not fds:
            return
        readable, _, _ = select.select(list(fds), [], [], 0)
        for fd in readable:
            worker = fds[fd]
            data = b""
            with contextlib.suppress(OSError):
                data = os.read(fd, 1)
            if data == b"r" and not worker.ready:
                worker.ready = True
                self.boot_failures = 0
                log.info("worker %d ready (pid %d)", worker.number, worker.pid)
            self._close_ready(worker)

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(worker.ready_fd)
            worker.ready_fd = None

    def _reap(self) -> str | None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self._collect_ready_of(worker)
            how = _describe(status)
            if worker.ready:
                log.warning(
                    "worker %d (pid %d) %s; starting a replacement", worker.number, pid, how
                )
                self._spawn(worker.number)
                continue
            self.boot_failures += 1
            if self.boot_failures >= MAX_BOOT_FAILURES:
                log.error(
                    "workers keep failing at start-up (%d in a row, the last %s); stopping",
                    self.boot_failures,
                    how,
                )
                print(
                    f"pkgate: workers keep failing at start-up ({self.boot_failures} in a row, "
                    f"the last {how}); see the errors above",
                    file=sys.stderr,
                )
                return "stop"
            delay = BOOT_BACKOFF * 2 ** (self.boot_failures - 1)
            log.warning(
                "worker %d (pid %d) %s during start-up; retrying in %.1f s",
                worker.number,
                pid,
                how,
                delay,
            )
            self._respawn_at.append((time.monotonic() + delay, worker.number))

    def _collect_ready_of(self, worker: _Worker) -> None:
        """A worker may have said "ready" just before it died."""
        if worker.ready_fd is None:
            return
        readable, _, _ = select.select([worker.ready_fd], [], [], 0)
        if readable:
            with contextlib.suppress(OSError):
                if os.read(worker.ready_fd, 1) == b"r":
                    worker.ready = True
        self._close_ready(worker)

    def _respawn_due(self) -> None:
        now = time.monotonic()
        due = [n for t, n in self._respawn_at if t <= now]
        self._respawn_at = [(t, n) for t, n in self._respawn_at if t > now]
        for number in due:
            self._spawn(number)

    def _drain(self, *, quiet: bool = False) -> int:
        self._respawn_at = []
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 10.0
        status = 0
        while self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                for pid, late in self.workers.items():
                    log.error(
                        "worker %d (pid %d) did not stop in time; killing it", late.number, pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                status = 1
            signal.sigtimedwait(SIGNALS, min(max(left, 0.05), 0.5))
            while True:
                try:
                    pid, code = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    self.workers.clear()
                    break
                if pid == 0:
                    break
                worker = self.workers.pop(pid, None)
                if worker is None:
                    continue
                self._close_ready(worker)
                exit_code = os.waitstatus_to_exitcode(code)
                if exit_code != 0:
                    status = 1
                    if not quiet:
                        log.warning(
                            "worker %d (pid %d) %s while stopping",
                            worker.number,
                            pid,
                            _describe(code),
                        )
        return status


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
