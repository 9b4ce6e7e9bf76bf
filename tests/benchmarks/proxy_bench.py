"""pkgate's proxy benchmark: run by hand, prints a table of ratios against same-run baselines.

    .venv/bin/python tests/benchmarks/proxy_bench.py [--duration 5] [--connections 32] [--quick]

Everything is local: the script starts its own fake upstream registry (npm layout and a simple
index, real tarballs), a bare aiohttp server as the baseline, and pkgate itself as subprocesses;
load comes from wrk (installed with apt-get when missing) and curl.  Rows whose pkgate route does
not exist or is not cached yet print "n/a" with the reason.  Not collected by pytest (no test_
prefix) and never part of the pass/fail of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
PY = sys.executable
NPM_DEPS = 200
BIG = 100 * 1024 * 1024
MID = 20 * 1024 * 1024
# Every package manager sends this (and gets pkgate's stored gzip bytes); so does the load.
ACCEPT_GZIP = "Accept-Encoding: gzip, deflate"
# Row 8: a blocklist this large (none of it about the packages measured) and old publish times.
POLICY_ENTRIES = 10_000
OLD_TIME = "2024-01-02T00:00:00.000Z"


# ---------------------------------------------------------------- fake upstream and baseline


def _tgz(name: str, version: str) -> bytes:
    manifest = json.dumps({"name": name, "version": version, "main": "index.js"}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in (("package/package.json", manifest), ("package/index.js", b"1;\n")):
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _random_file(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        for _ in range(size // (1 << 20)):
            fh.write(os.urandom(1 << 20))


def build_upstream(root: Path) -> None:
    """Write packuments, tarballs, index pages and files the fake upstream serves."""
    (root / "npm").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "simple").mkdir()
    names = [f"dep{i:03d}" for i in range(NPM_DEPS)] + ["bench-pkg"]
    blobs: dict[str, Path] = {}
    for name in names:
        path = root / "files" / f"{name}-1.0.0.tgz"
        path.write_bytes(_tgz(name, "1.0.0"))
        blobs[name] = path
    for name, size in (("big-pkg", BIG), ("mid-pkg", MID)):
        blobs[name] = root / "files" / f"{name}-1.0.0.tgz"
        _random_file(blobs[name], size)
    for name, path in blobs.items():
        data = path.read_bytes()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        versions = {
            f"1.0.{p}": {
                "name": name,
                "version": f"1.0.{p}",
                "description": "x" * 200,
                "dist": {
                    "tarball": f"UPSTREAM/{name}/-/{path.name}",
                    "integrity": integrity,
                    "shasum": hashlib.sha1(data).hexdigest(),
                },
            }
            for p in range(40 if name == "bench-pkg" else 1)
        }
        # Every version points at the one real file; only 1.0.0 is installed.
        doc = {"name": name, "dist-tags": {"latest": "1.0.0"}, "versions": versions}
        (root / "npm" / f"{name}.json").write_text(json.dumps(doc))
        if name == "bench-pkg":
            # The same with publish times (row 8: the policy's age rule reads them).
            timed = {**doc, "name": "policy-pkg", "time": {v: OLD_TIME for v in versions}}
            (root / "npm" / "policy-pkg.json").write_text(json.dumps(timed))
        sha256 = hashlib.sha256(data).hexdigest()
        links = "".join(
            f'<a href="../../files/{path.name}#sha256={sha256}">{name}-1.0.{p}.tar.gz</a><br/>\n'
            for p in range(60)
        )
        (root / "simple" / f"{name}.html").write_text(
            f"<!DOCTYPE html><html><body>\n{links}</body></html>\n"
        )


def run_upstream(root: Path, port: int) -> None:
    """The fake upstream: npm layout at /, simple index at /simple/, files at /files/."""
    from aiohttp import web

    base = f"http://127.0.0.1:{port}"
    packuments = {
        p.stem: p.read_text().replace("UPSTREAM", base).encode() for p in (root / "npm").iterdir()
    }
    pages = {p.stem: p.read_bytes() for p in (root / "simple").iterdir()}

    async def packument(request: web.Request) -> web.StreamResponse:
        body = packuments.get(request.match_info["name"])
        if body is None:
            return web.json_response({"error": "Not found"}, status=404)
        return web.Response(body=body, content_type="application/json")

    async def tarball(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(root / "files" / request.match_info["file"])

    async def page(request: web.Request) -> web.StreamResponse:
        body = pages.get(request.match_info["name"])
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/simple/{name}/", page)
    app.router.add_get("/files/{file}", tarball)
    app.router.add_get("/{name}/-/{file}", tarball)
    app.router.add_get("/{name}", packument)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def run_bare(path: Path, content_type: str, port: int, encoding: str = "") -> None:
    """The baseline: a bare aiohttp handler returning fixed bytes, on uvloop like pkgate."""
    import uvloop
    from aiohttp import web

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    body = path.read_bytes()
    headers = {"Content-Encoding": encoding} if encoding else {}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- processes and measurements


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextlib.contextmanager
def process(
    args: list[str], port: int, env: dict[str, str] | None = None, start_timeout: float = 30
) -> Iterator[int]:
    proc = subprocess.Popen(
        args, cwd=TOP, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, proc, start_timeout)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure_tool(name: str, package: str) -> str:
    """The path of command ``name``, installed with apt-get (package ``package``) when missing."""
    found = shutil.which(name)
    if found:
        return found
    print(f"installing {package} with apt-get ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, capture_output=True)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is required (apt-get install {package})")
    return found


MIN_COUNTED = 10.0  # seconds of load counted by instructions_per_request


def instructions_per_request(
    work: Path, args: list[str], port: int, url: str, secret: str | None, duration: float
) -> float:
    """Instructions the server ``args`` executes per request of ``url`` (user space, counted by
    valgrind's callgrind): a count that other load on the machine does not move.

    The server starts uninstrumented; after a warm-up its instrumentation is switched on for
    ``duration`` seconds (at least ``MIN_COUNTED``) of load from 4 connections, then the count
    is dumped.  Under callgrind a server answers a few hundred requests a second, so a short
    window lets one background write (a download history flush, a WAL checkpoint) move the
    figure by a third; ten seconds spread it as the real load does.
    """
    duration = max(duration, MIN_COUNTED)
    valgrind = ensure_tool("valgrind", "valgrind")
    control = ensure_tool("callgrind_control", "valgrind")
    out = work / f"callgrind-{port}"
    cmd = [valgrind, "--tool=callgrind", "--instr-atstart=no",
           f"--callgrind-out-file={out}.%p", *args]  # fmt: skip
    with process(cmd, port, start_timeout=600) as pid:
        wrk(url, secret, 3, 4, headers=(ACCEPT_GZIP,))  # warm caches, uncounted
        subprocess.run([control, "-i", "on", str(pid)], check=True, capture_output=True)
        load = wrk(url, secret, duration, 4, headers=(ACCEPT_GZIP,))
        subprocess.run([control, "-i", "off", str(pid)], check=True, capture_output=True)
        subprocess.run([control, "-d", str(pid)], check=True, capture_output=True)
    total = 0
    for dump in work.glob(f"{out.name}.*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total / max(load.requests, 1)


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # server CPU time (user + system) per request, when its pid was given
    requests: int = 0


def pin_process(pid: int, cpus: set[int]) -> None:
    """Run every thread of process ``pid`` on ``cpus`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Return once the process uses under 2% of a CPU over half a second (or after timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.01:
            return


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]


def wrk(
    url: str,
    secret: str | None,
    duration: float,
    connections: int,
    pid: int | None = None,
    headers: tuple[str, ...] = (),
    pin: bool = False,
) -> WrkResult:
    """Load ``url`` with wrk; with ``pid``, also the server's CPU time per request.

    With ``pin`` (a single-process server ``pid`` on a machine of two CPUs or more), the server
    runs on one CPU and wrk on the others for the run, so that the servers compared take turns
    under the same conditions rather than wherever the scheduler puts them and their load.
    """
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url]
    for header in ((f"Authorization: Bearer {secret}",) if secret else ()) + headers:
        cmd[1:1] = ["-H", header]
    cpus = sorted(os.sched_getaffinity(0))
    load_cpus = None
    if pin and pid and len(cpus) >= 2:
        pin_process(pid, {cpus[-1]})
        load_cpus = set(cpus[:-1])
    cpu_before = cpu_seconds(pid) if pid else 0.0
    place = (lambda: os.sched_setaffinity(0, load_cpus)) if load_cpus else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=place).stdout
    if load_cpus:
        pin_process(pid, set(cpus))
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    if re.search(r"Non-2xx or 3xx responses: \d+", out):
        raise RuntimeError(f"errors under load on {url}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    return WrkResult(rps, p50, p99, cpu * 1e6 / total if total else 0.0, total)


def in_turns(
    targets: dict[str, tuple[str, str | None, int]], ns: argparse.Namespace
) -> tuple[dict[str, float], dict[str, float]]:
    """Each target (url, secret, server pid) loaded in turns, ``--rounds`` times, each server on
    a CPU of its own during its turn: the median req/s and CPU µs per request of each."""
    runs: dict[str, list[WrkResult]] = {label: [] for label in targets}
    for _ in range(ns.rounds):
        for label, (url, secret, pid) in targets.items():
            load = wrk(url, secret, ns.duration, ns.connections, pid, (ACCEPT_GZIP,), pin=True)
            runs[label].append(load)
    rps = {k: statistics.median(r.rps for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r.cpu_us for r in v) for k, v in runs.items()}
    return rps, cpu


def curl(url: str, secret: str | None = None, headers: tuple[str, ...] = ()) -> tuple[int, bytes]:
    cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", url]
    for h in ((f"Authorization: Bearer {secret}",) if secret else ()) + headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


def curl_headers(url: str, secret: str, *extra: str) -> dict[str, str]:
    auth = f"Authorization: Bearer {secret}"
    headers = [arg for header in (auth, *extra) for arg in ("-H", header)]
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-D", "-", *headers, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        k.strip().lower(): v.strip()
        for k, _, v in (ln.partition(":") for ln in out.splitlines()[1:])
        if k
    }


def download_rate(url: str, secret: str | None, repeat: int) -> float:
    """Median bytes/s of downloading ``url`` with curl."""
    rates = []
    for _ in range(repeat):
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}", url]
        if secret:
            cmd += ["-H", f"Authorization: Bearer {secret}"]
        speed, code = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
        if code != "200":
            raise RuntimeError(f"{url} answered {code}")
        rates.append(float(speed))
    return statistics.median(rates)


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def peak_rss_during(url: str, secret: str, pids: list[int], concurrency: int) -> float:
    """Peak resident memory of ``pids`` while ``concurrency`` clients download ``url``."""

    async def main() -> float:
        import aiohttp

        peak = rss_mb(pids)
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mb(pids))
                await asyncio.sleep(0.02)

        async def one(http: aiohttp.ClientSession) -> None:
            async with http.get(url, headers={"Authorization": f"Bearer {secret}"}) as resp:
                assert resp.status == 200, resp.status
                async for _ in resp.content.iter_chunked(1 << 16):
                    pass

        sampler = asyncio.create_task(sample())
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as http:
            await asyncio.gather(*(one(http) for _ in range(concurrency)))
        done.set()
        await sampler
        return peak

    return asyncio.run(main())


def children(pid: int) -> list[int]:
    out = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


# ---------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, work: Path, ns: argparse.Namespace) -> None:
        self.work, self.ns = work, ns
        self.rows: list[tuple[str, str, str, str]] = []
        self.serial = 0
        self.up_port = free_port()
        self.upstream = f"http://127.0.0.1:{self.up_port}"

    def row(self, item: str, pkgate: str, baseline: str, ratio: str) -> None:
        self.rows.append((item, pkgate, baseline, ratio))
        print(f"  {item}: {pkgate} vs {baseline} -> {ratio}", file=sys.stderr, flush=True)

    def pkgate(self, data: str, *extra: str, upstream: str | None = None) -> tuple[list[str], int]:
        """pkgate in its default configuration, its access log appended to a file.

        The rate limits stay on, set above the load offered (one token makes every request).
        """
        port = free_port()
        upstream = upstream or self.upstream
        args = [
            PY, "-m", "proxy", "serve",
            "--port", str(port),
            "--data-dir", str(self.work / data),
            "--npm-upstream", upstream + "/",
            "--pypi-upstream", upstream + "/simple/",
            "--access-log-file", str(self.work / data / "access.log"),
            "--log-level", "warning",
            "--registry-rate-per-token", "1000000",
            "--registry-rate-per-ip", "1000000",
            *extra,
        ]  # fmt: skip
        return args, port

    def token(self, data: str) -> str:
        out = subprocess.run(
            [PY, "-m", "proxy", "token", "create", "--email", "bench@example.com",
             "--data-dir", str(self.work / data)],
            cwd=TOP, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout.strip()

    def bare(self, body: bytes, content_type: str, encoding: str = "") -> tuple[list[str], int]:
        path = self.work / f"bare-{hashlib.sha1(body).hexdigest()}"
        path.write_bytes(body)
        port = free_port()
        return [PY, __file__, "--bare", str(path), content_type, str(port), encoding], port

    def run(self) -> None:
        up_root = self.work / "upstream"
        print("building the fake upstream ...", file=sys.stderr, flush=True)
        build_upstream(up_root)
        upstream_cmd = [PY, __file__, "--upstream", str(up_root), str(self.up_port)]
        rows = {
            1: lambda: self.warm_metadata(
                "1. warm packument req/s", "/npm/bench-pkg", "application/json"
            ),
            2: lambda: self.warm_metadata(
                "2. warm index page req/s", "/pypi/simple/bench-pkg/", "text/html"
            ),
            3: self.cold_latency,
            4: self.artifact_throughput,
            5: self.artifact_memory,
            6: self.npm_install,
            7: self.workers,
            8: self.policy_overhead,
            9: lambda: self.warm_metadata(
                "9. warm small tarball req/s",
                "/npm/dep001/-/dep001-1.0.0.tgz",
                "application/octet-stream",
            ),
        }
        with process(upstream_cmd, self.up_port):
            for number, measure in rows.items():
                if not self.ns.only or number in self.ns.only:
                    measure()

    def warm_metadata(self, item: str, path: str, content_type: str) -> None:
        """Default pkgate (log to a file) and pkgate with the log off, vs a bare uvloop handler.

        The three servers run side by side and are measured in turns, ``--rounds`` times; each
        figure is the median of its turns, so a burst of load elsewhere on the machine hits all
        three alike.  Besides req/s, each row gives the server's CPU time per request, which
        other load on a shared machine disturbs much less.
        """
        ns = self.ns
        targets: dict[str, tuple[str, str | None, int]] = {}
        # How to start each server again, for --instructions: args, port, url, secret.
        launch: dict[str, tuple[list[str], int, str, str | None]] = {}
        body = b""
        encoding = ""
        with contextlib.ExitStack() as stack:
            for label, extra in (("on", ()), ("off", ("--access-log", "false"))):
                self.serial += 1
                data = f"warm{self.serial}"
                secret = self.token(data)
                args, port = self.pkgate(data, *extra)
                pid = stack.enter_context(process(args, port))
                url = f"http://127.0.0.1:{port}{path}"
                status, body = curl(url, secret, (ACCEPT_GZIP,))
                if status != 200:
                    return self.row(item, f"n/a (route answered {status})", "", "")
                answer = curl_headers(url, secret, ACCEPT_GZIP)
                if "x-cache" not in answer:
                    return self.row(item, "n/a (handler not cached yet)", "", "")
                encoding = answer.get("content-encoding", "")
                targets[label] = (url, secret, pid)
                launch[label] = (args, port, url, secret)
            bare_args, bare_port = self.bare(body, content_type, encoding)
            pid = stack.enter_context(process(bare_args, bare_port))
            targets["bare"] = (f"http://127.0.0.1:{bare_port}/", None, pid)
            launch["bare"] = (bare_args, bare_port, targets["bare"][0], None)
            rps, cpu = in_turns(targets, ns)
        on, off, base = rps["on"], rps["off"], rps["bare"]

        def both(a: str, b: str) -> str:
            return f"{rps[a] / rps[b]:.2f}x ({cpu[b] / cpu[a]:.2f}x by CPU)"

        def fig(k: str) -> str:
            return f"{rps[k]:,.0f}/s, {cpu[k]:.0f} µs CPU"

        self.row(f"{item}, default (log to file)", fig("on"), fig("bare") + " bare uvloop",
                 both("on", "bare"))  # fmt: skip
        self.row(f"{item}, access log off", fig("off"), fig("bare") + " bare uvloop",
                 both("off", "bare"))  # fmt: skip
        self.row(f"{item}, access log on vs off", fig("on"), fig("off") + " log off",
                 both("on", "off"))  # fmt: skip
        del on, off, base
        if ns.instructions:
            self.instructions(item, launch)

    def instructions(
        self, item: str, launch: dict[str, tuple[list[str], int, str, str | None]]
    ) -> None:
        """The rows of ``warm_metadata`` again, as instructions per request (``--instructions``)."""
        counts = {
            label: instructions_per_request(self.work, args, port, url, secret, self.ns.duration)
            for label, (args, port, url, secret) in launch.items()
        }

        def fig(k: str) -> str:
            return f"{counts[k] / 1000:,.0f}k instructions"

        for label, against, name in (("on", "bare", "bare uvloop"), ("off", "bare", "bare uvloop"),
                                     ("on", "off", "log off")):  # fmt: skip
            what = {"on": "default (log to file)", "off": "access log off"}[label]
            if against == "off":
                what = "access log on vs off"
            self.row(f"{item}, {what}, per request", fig(label), f"{fig(against)} {name}",
                     f"{counts[against] / counts[label]:.2f}x")  # fmt: skip

    def policy_overhead(self) -> None:
        """Row 8 (SPEC 13): warm metadata with the supply-chain policy on (a 10,000-entry
        blocklist, min_release_age 3d) vs off, measured in turns like rows 1-2."""
        feed = self.work / "feed-10k.json"
        records = [
            {
                "id": f"MAL-2026-{i:05d}",
                "summary": f"Malicious code in mal-{i} (npm)",
                "affected": [
                    {
                        "package": {"ecosystem": "npm" if i % 2 else "PyPI", "name": f"mal-{i}"},
                        "versions": [f"1.0.{i % 7}"],
                    }
                ],
            }
            for i in range(POLICY_ENTRIES)
        ]
        feed.write_text(json.dumps(records))
        policy = ("--blocklist-feeds", str(feed), "--min-release-age", "3d")
        for item, path, content_type in (
            ("8. warm packument, policy on vs off", "/npm/policy-pkg", "application/json"),
            ("8. warm index page, policy on vs off", "/pypi/simple/bench-pkg/", "text/html"),
        ):
            self.turns(item, path, content_type, {"off": (), "on": policy})

    def turns(
        self, item: str, path: str, content_type: str, configs: dict[str, tuple[str, ...]]
    ) -> None:
        """pkgate in each of ``configs`` side by side, measured in turns; ratio on/off."""
        ns = self.ns
        targets: dict[str, tuple[str, str | None, int]] = {}
        with contextlib.ExitStack() as stack:
            for label, extra in configs.items():
                self.serial += 1
                data = f"turns{self.serial}"
                secret = self.token(data)
                args, port = self.pkgate(data, *extra)
                pid = stack.enter_context(process(args, port))
                url = f"http://127.0.0.1:{port}{path}"
                status, _ = curl(url, secret)
                if status != 200:
                    return self.row(item, f"n/a ({label}: route answered {status})", "", "")
                # Start-up work (a first feed load hands every entry to the breach notifier,
                # which looks each up in the store) must be over before measuring.
                wait_idle(pid)
                targets[label] = (url, secret, pid)
            rps, cpu = in_turns(targets, ns)
        self.row(
            item,
            f"{rps['on']:,.0f}/s, {cpu['on']:.0f} µs CPU",
            f"{rps['off']:,.0f}/s, {cpu['off']:.0f} µs CPU policy off",
            f"{rps['on'] / rps['off']:.2f}x ({cpu['off'] / cpu['on']:.2f}x by CPU)",
        )

    def cold_latency(self) -> None:
        ns = self.ns
        secret = self.token("cold")
        args, port = self.pkgate("cold", "--cache", "false")
        with process(args, port):
            url = f"http://127.0.0.1:{port}/npm/bench-pkg"
            status, _ = curl(url, secret)
            if status != 200:
                return self.row("3. cold path latency", f"n/a (route answered {status})", "", "")
            got = wrk(url, secret, ns.duration, 4)
        base = wrk(f"{self.upstream}/bench-pkg", None, ns.duration, 4)
        self.row(
            "3. cold packument p50 (cache off)",
            f"{got.p50_ms:.2f} ms",
            f"{base.p50_ms:.2f} ms direct",
            f"+{got.p50_ms - base.p50_ms:.2f} ms ({got.p50_ms / base.p50_ms:.2f}x)",
        )
        self.row(
            "3. cold packument p99 (cache off)",
            f"{got.p99_ms:.2f} ms",
            f"{base.p99_ms:.2f} ms direct",
            f"+{got.p99_ms - base.p99_ms:.2f} ms ({got.p99_ms / base.p99_ms:.2f}x)",
        )

    # How an artifact reaches the client: (label, extra pkgate arguments, cache filled first).
    ARTIFACT_MODES = (
        ("relayed, cache off", ("--cache", "false"), False),
        ("cold: cache on, first download", (), False),
        ("warm: cache on, sendfile", (), True),
    )

    @contextlib.contextmanager
    def artifact_server(
        self, extra: tuple[str, ...], warm: bool, path: str
    ) -> Iterator[tuple[str, str, int] | str]:
        """A pkgate with an empty cache (filled with ``path`` when ``warm``): (url, secret, pid).

        Yields a reason string instead when the route cannot be measured.
        """
        self.serial += 1
        data = f"art{self.serial}"
        secret = self.token(data)
        args, port = self.pkgate(data, *extra)
        with process(args, port) as pid:
            url = f"http://127.0.0.1:{port}{path}"
            if warm:
                status, _ = curl(url, secret)
                if status != 200:
                    yield f"n/a (route answered {status})"
                    return
                if curl_headers(url, secret).get("x-cache") != "HIT":
                    yield "n/a (handler not cached yet)"
                    return
            yield url, secret, pid

    def artifact_throughput(self) -> None:
        repeat = 1 if self.ns.quick else 3
        path = "/npm/big-pkg/-/big-pkg-1.0.0.tgz"
        direct = download_rate(f"{self.upstream}/big-pkg/-/big-pkg-1.0.0.tgz", None, repeat)
        for label, extra, warm in self.ARTIFACT_MODES:
            rates = []
            # A cold download needs an empty cache each time: one server per repetition.
            for _ in range(1 if warm else repeat):
                with self.artifact_server(extra, warm, path) as got:
                    if isinstance(got, str):
                        self.row(f"4. 100 MB artifact ({label})", got, "", "")
                        break
                    url, secret, _ = got
                    rates.append(download_rate(url, secret, repeat if warm else 1))
            if not rates:
                continue
            rate = statistics.median(rates)
            self.row(
                f"4. 100 MB artifact ({label})",
                f"{rate / 2**20:,.0f} MiB/s",
                f"{direct / 2**20:,.0f} MiB/s direct",
                f"{rate / direct:.2f}x",
            )

    def artifact_memory(self) -> None:
        many = 50 if self.ns.quick else 200
        path = "/npm/mid-pkg/-/mid-pkg-1.0.0.tgz"
        for label, extra, warm in self.ARTIFACT_MODES:
            peaks = {}
            for concurrency in (1, many):
                with self.artifact_server(extra, warm, path) as got:
                    if isinstance(got, str):
                        break
                    url, secret, pid = got
                    peaks[concurrency] = peak_rss_during(url, secret, children(pid), concurrency)
            if len(peaks) < 2:
                self.row(f"5. RSS, 20 MB downloads ({label})", "n/a", "", "")
                continue
            one, lots = peaks[1], peaks[many]
            self.row(
                f"5. RSS, 20 MB downloads ({label})",
                f"{lots:,.0f} MB with {many}",
                f"{one:,.0f} MB with 1",
                f"{lots - one:+,.0f} MB",
            )

    def npm_install(self) -> None:
        project = self.work / "project"
        project.mkdir()
        deps = {f"dep{i:03d}": "1.0.0" for i in range(NPM_DEPS)}
        (project / "package.json").write_text(
            json.dumps({"name": "bench", "version": "1.0.0", "dependencies": deps})
        )

        def install(registry: str, secret: str | None, tag: str) -> float:
            home = self.work / f"home-{tag}"
            home.mkdir()
            rc = home / ".npmrc"
            lines = [f"registry={registry}"]
            if secret:
                lines.append(f"//{registry.split('://', 1)[1]}:_authToken={secret}")
            rc.write_text("\n".join(lines) + "\n")
            shutil.rmtree(project / "node_modules", ignore_errors=True)
            (project / "package-lock.json").unlink(missing_ok=True)
            env = {
                "PATH": os.environ["PATH"],
                "HOME": str(home),
                "npm_config_userconfig": str(rc),
                "npm_config_cache": str(home / ".npm"),
                "npm_config_audit": "false",
                "npm_config_fund": "false",
                "npm_config_update_notifier": "false",
            }
            start = time.perf_counter()
            done = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund"], cwd=project, env=env,
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            return time.perf_counter() - start

        if shutil.which("npm") is None:
            return self.row("6. npm install", "n/a (npm not on PATH)", "", "")
        direct = install(self.upstream + "/", None, "direct")
        secret = self.token("npm")
        args, port = self.pkgate("npm")
        with process(args, port):
            registry = f"http://127.0.0.1:{port}/npm/"
            try:
                cold = install(registry, secret, "cold")
                warm = install(registry, secret, "warm")
            except RuntimeError as exc:
                return self.row("6. npm install", f"n/a (failed: {str(exc)[-80:]!r})", "", "")
        self.row(f"6. npm install {NPM_DEPS} deps, cold", f"{cold:.1f} s", f"{direct:.1f} s direct",
                 f"{cold / direct:.2f}x")  # fmt: skip
        self.row(f"6. npm install {NPM_DEPS} deps, warm", f"{warm:.1f} s", f"{direct:.1f} s direct",
                 f"{warm / direct:.2f}x")  # fmt: skip

    def workers(self) -> None:
        ns = self.ns
        secret = self.token("workers")
        results = {}
        for n in (1, 2):
            args, port = self.pkgate("workers", "--workers", str(n))
            with process(args, port):
                url = f"http://127.0.0.1:{port}/npm/-/whoami"
                # Both workers must be up before measuring.
                deadline = time.monotonic() + 30
                while curl(url, secret)[0] != 200 and time.monotonic() < deadline:
                    time.sleep(0.05)
                results[n] = wrk(url, secret, ns.duration, ns.connections * 2).rps
        self.row(
            "7. whoami req/s, --workers 2 vs 1",
            f"{results[2]:,.0f}/s",
            f"{results[1]:,.0f}/s",
            f"{results[2] / results[1]:.2f}x",
        )

    def table(self) -> str:
        head = ("item", "pkgate", "baseline (same run)", "ratio")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in self.rows:
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            )
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--bare", nargs=4, metavar=("FILE", "TYPE", "PORT", "ENC"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and downloads")
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns per server in rows 1-2 (median reported)"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="rows 1, 2 and 9 also as instructions per request under callgrind (slow, steady)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: {int(n) for n in text.split(",")},
        default=set(),
        help="comma-separated row numbers to measure (default: all)",
    )
    ns = parser.parse_args()
    if ns.upstream:
        return run_upstream(Path(ns.upstream[0]), int(ns.upstream[1]))
    if ns.bare:
        return run_bare(Path(ns.bare[0]), ns.bare[1], int(ns.bare[2]), ns.bare[3])
    global WRK
    WRK = ensure_tool("wrk", "wrk")
    with tempfile.TemporaryDirectory(prefix="pkgate-bench-") as work:
        bench = Bench(Path(work), ns)
        try:
            bench.run()
        finally:
            print(bench.table())


WRK = "wrk"

if __name__ == "__main__":
    main()
