"""Real-tree-sized installs through pkgate: run by hand, prints a table of times, bytes and hits.

    .venv/bin/python -m tests.benchmarks.tree_bench [--packages 340] [--clients npm,pnpm,yarn,bun]
                                                    [--profiles fast,internet] [--rounds 3]

The script generates a tree shaped like a real front-end project (``--packages`` packages whose
packuments add up to ~86 MB of JSON, four of them multi-megabyte like next, typescript, axe-core
and react-dom; full and abbreviated forms, sha512-verified tarballs) and serves it from its own
fake upstream, which answers like the public registry does: gzip when accepted, ETags, the same
caching headers, and optionally a fixed delay per request and a shared bandwidth limit.  For
each network profile and each client it installs the whole tree with an empty client cache: once
through a fresh pkgate (cold), then ``--rounds`` turns of straight from the upstream (direct) and
through the same pkgate again (warm), alternating; direct and warm figures are the medians of the
turns.  Last, pkgate is stopped and started again on the same data directory and the tree
installed once more (restarted): memory is empty, the metadata cache's disk tier and the
artifact store are not.

Profiles: ``fast`` (loopback, no added latency) and ``internet`` (30 ms per request, 20 MB/s
shared), as a real upstream across the internet.  pkgate runs ``pkgate serve`` with its defaults
except ``--metadata-ttl 3600`` (so that a slow cold install does not age the entries the warm one
should hit) and its access log in a file, from which the bytes sent and the cache outcomes of
each install are read (the upstream counts its own bytes for direct installs).

Not collected by pytest and never part of the pass/fail of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

TOP = Path(__file__).resolve().parents[2]
PY = sys.executable
CORGI = "application/vnd.npm.install-v1+json"
# Packument JSON sizes of the biggest documents of the tree (MB), as in the real one.
GIANTS = {"next": 18.8, "typescript": 9.4, "axe-core": 7.4, "react-dom": 6.3}
TOTAL_MB = 86.5
PROFILES = {"fast": (0.0, 0), "internet": (0.030, 20_000_000)}
# Caching headers as a public registry sends them (clients store cacheable answers, which costs
# them time: a fake upstream without them would make direct installs cheaper than real ones).
DOCUMENT_CACHING = {"Cache-Control": "public, max-age=300"}
TARBALL_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Cache-Control": "public, immutable, max-age=31557600",
}


# ---------------------------------------------------------------- the tree


def _hex(seed: str, n: int) -> str:
    out = ""
    while len(out) < n:
        out += hashlib.sha512((seed + str(len(out))).encode()).hexdigest()
    return out[:n]


def _manifest(name: str, version: str, deps: dict[str, str], rng: random.Random) -> dict[str, Any]:
    """A full version manifest shaped like the registry's (hashes and all)."""
    return {
        "name": name,
        "version": version,
        "description": f"The {name} package, version {version}, for the benchmark tree",
        "main": "index.js",
        "license": "MIT",
        "keywords": ["bench", name, "tree"],
        "repository": {"type": "git", "url": f"git+https://git.example/{name}.git"},
        "bugs": {"url": f"https://git.example/{name}/issues"},
        "homepage": f"https://git.example/{name}#readme",
        "scripts": {"build": "tsc -p .", "test": "node --test", "lint": "eslint ."},
        "dependencies": deps,
        "devDependencies": {
            f"dev-tool-{rng.randrange(200)}": f"^{rng.randrange(30)}.{rng.randrange(10)}.0"
            for _ in range(rng.randrange(4, 25))
        },
        "engines": {"node": ">=18"},
        "gitHead": _hex(name + version + "g", 40),
        "_id": f"{name}@{version}",
        "_nodeVersion": "20.11.1",
        "_npmVersion": "10.2.4",
        "_npmUser": {"name": "release-bot", "email": "release@example.com"},
        "maintainers": [{"name": "release-bot", "email": "release@example.com"}],
        "_hasShrinkwrap": False,
    }


def _dist(tarball_url: str, integrity: str, shasum: str, seed: str) -> dict[str, Any]:
    return {
        "tarball": tarball_url,
        "integrity": integrity,
        "shasum": shasum,
        "fileCount": 42,
        "unpackedSize": 123456,
        "signatures": [{"keyid": "SHA256:benchkey", "sig": _hex(seed + "s", 96)}],
    }


CORGI_FIELDS = (
    "name", "version", "dependencies", "optionalDependencies", "devDependencies",
    "peerDependencies", "bin", "directories", "dist", "engines", "_hasShrinkwrap",
)  # fmt: skip


STAMP = "2024-02-01T00:00:00.000Z"


def _corgi(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest[k] for k in CORGI_FIELDS if k in manifest}


def _tgz(name: str, version: str, deps: dict[str, str]) -> bytes:
    manifest = json.dumps({"name": name, "version": version, "main": "index.js",
                           "dependencies": deps}).encode()  # fmt: skip
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path, data in (("package/package.json", manifest), ("package/index.js", b"1;\n")):
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_tree(root: Path, count: int) -> list[str]:
    """Write ``count`` packages (gzipped full and abbreviated packuments, tarballs) under root."""
    rng = random.Random(340)
    names = list(GIANTS) + [f"bench-{i:03d}" for i in range(count - len(GIANTS))]
    rest = max(TOTAL_MB - sum(GIANTS.values()), 1.0) * 1e6 * count / 340
    weights = [rng.lognormvariate(0, 1.2) for _ in names[len(GIANTS) :]]
    sizes = {n: GIANTS[n] * 1e6 * count / 340 for n in GIANTS}
    sizes |= {
        n: w / sum(weights) * rest for n, w in zip(names[len(GIANTS) :], weights, strict=True)
    }
    (root / "meta").mkdir(parents=True)
    (root / "files").mkdir()
    for index, name in enumerate(names):
        # A few dependencies on packages later in the list: a tree, not only a flat list.
        later = names[index + 1 :]
        deps = {d: "^1.0.0" for d in rng.sample(later, min(len(later), rng.randrange(0, 4)))}
        full_versions: dict[str, Any] = {}
        times: dict[str, str] = {}
        size = 0
        i = 0
        latest = ""
        while size < sizes[name] or i == 0:
            version = f"1.0.{i}"
            manifest = _manifest(name, version, deps, rng)
            encoded = len(json.dumps(manifest)) + 400
            full_versions[version] = manifest
            times[version] = f"2024-01-{1 + i % 28:02d}T00:00:00.000Z"
            size += encoded
            latest = version
            i += 1
        tarball = _tgz(name, latest, deps)
        file = f"{name}-{latest}.tgz"
        (root / "files" / file).write_bytes(tarball)
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
        for version, manifest in full_versions.items():
            url = f"UPSTREAM/{name}/-/{name}-{version}.tgz"
            if version == latest:
                manifest["dist"] = _dist(url, integrity, hashlib.sha1(tarball).hexdigest(), version)
            else:
                fake = (
                    "sha512-"
                    + base64.b64encode(
                        hashlib.sha512(f"{name}{version}".encode()).digest()
                    ).decode()
                )
                manifest["dist"] = _dist(url, fake, _hex(name + version, 40), name + version)
        full = {
            "_id": name, "name": name, "description": f"The {name} package",
            "dist-tags": {"latest": latest}, "versions": full_versions,
            "time": {"created": STAMP, "modified": STAMP, **times},
            "maintainers": [{"name": "release-bot", "email": "release@example.com"}],
            "readme": f"# {name}\n\n" + "A package of the benchmark tree. " * 40, "license": "MIT",
        }  # fmt: skip
        corgi = {
            "name": name, "modified": STAMP, "dist-tags": {"latest": latest},
            "versions": {v: _corgi(m) for v, m in full_versions.items()},
        }  # fmt: skip
        for form, doc in (("full", full), ("corgi", corgi)):
            body = json.dumps(doc, separators=(",", ":")).encode()
            (root / "meta" / f"{name}.{form}.json.gz").write_bytes(gzip.compress(body, 6))
    (root / "names.json").write_text(json.dumps(names))
    return names


# ---------------------------------------------------------------- the upstream


def run_upstream(root: Path, port: int, latency: float, rate: int) -> None:
    """The fake public registry: gzip when asked, ETags and 304s, latency and a shared link."""
    import uvloop
    from aiohttp import web

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    base = f"http://127.0.0.1:{port}"
    docs: dict[tuple[str, str], tuple[bytes, str]] = {}
    for path in (root / "meta").iterdir():
        name, form = path.name.removesuffix(".json.gz").rsplit(".", 1)
        body = gzip.decompress(path.read_bytes()).replace(b"UPSTREAM", base.encode())
        docs[(name, form)] = (gzip.compress(body, 6), '"' + hashlib.md5(body).hexdigest() + '"')
    sent = [0]
    link = {"free_at": 0.0}

    async def throttle(size: int) -> None:
        # One shared link: each piece is scheduled after the previous one has gone out.
        if not rate:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, link["free_at"])
        link["free_at"] = start + size / rate
        if link["free_at"] > now:
            await asyncio.sleep(link["free_at"] - now)

    async def send(
        request: web.Request, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        for start in range(0, len(body), 65536):
            piece = body[start : start + 65536]
            await throttle(len(piece))
            await resp.write(piece)
            sent[0] += len(piece)
        await resp.write_eof()
        return resp

    async def handle(request: web.Request) -> web.StreamResponse:
        if latency:
            await asyncio.sleep(latency)
        path = request.path
        if path == "/-/bench/bytes":
            count, sent[0] = sent[0], 0
            return web.json_response({"bytes": count})
        if "/-/" in path:
            name, _, file = path.strip("/").partition("/-/")
            target = root / "files" / file
            if not target.is_file():
                return web.json_response({"error": "not found"}, status=404)
            return await send(request, target.read_bytes(), TARBALL_HEADERS)
        name = path.strip("/").replace("%2f", "/").replace("%2F", "/")
        form = "corgi" if CORGI in request.headers.get("Accept", "") else "full"
        found = docs.get((name, form))
        if found is None:
            return web.json_response({"error": "Not found"}, status=404)
        body, etag = found
        headers = {"ETag": etag, "Vary": "Accept, Accept-Encoding", **DOCUMENT_CACHING,
                   "Content-Type": CORGI if form == "corgi" else "application/json"}  # fmt: skip
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
        else:
            body = gzip.decompress(body)
        return await send(request, body, headers)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    import socket

    proc = subprocess.Popen(args, cwd=TOP, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[:4]} exited with {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("nothing listening")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------- installs


def configure(project: Path, client: str, registry: str, token: str | None) -> None:
    registry = registry.rstrip("/")
    if client in ("npm", "pnpm"):
        lines = [f"registry={registry}/"]
        if token:
            lines.append(f"//{registry.split('://', 1)[1]}/:_authToken={token}")
        (project / ".npmrc").write_text("\n".join(lines) + "\n")
    elif client == "yarn":
        config: dict[str, Any] = {
            "npmRegistryServer": registry,
            "unsafeHttpWhitelist": ["127.0.0.1"],
            "enableGlobalCache": False,
            "enableTelemetry": False,
            "enableImmutableInstalls": False,
            "nodeLinker": "node-modules",
        }
        if token:
            config |= {"npmAuthToken": token, "npmAlwaysAuth": True}
        (project / ".yarnrc.yml").write_text(json.dumps(config) + "\n")
    else:
        auth = f', token = "{token}"' if token else ""
        (project / "bunfig.toml").write_text(
            f'[install]\nregistry = {{ url = "{registry}/"{auth} }}\n'
        )


def install(work: Path, tools: Path, client: str, names: list[str], registry: str,
            token: str | None, tag: str) -> float:  # fmt: skip
    """One install of the whole tree with an empty client cache; seconds taken."""
    project, home = work / f"proj-{tag}", work / f"home-{tag}"
    project.mkdir()
    home.mkdir()
    (project / "package.json").write_text(json.dumps(
        {"name": "tree", "version": "1.0.0", "private": True,
         "dependencies": {n: "^1.0.0" for n in names}}))  # fmt: skip
    configure(project, client, registry, token)
    env = {
        "PATH": f"{tools}:{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local"),
        "npm_config_userconfig": str(home / ".npmrc"),
        "npm_config_cache": str(home / ".npm"),
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "BUN_INSTALL_CACHE_DIR": str(home / ".bun-cache"),
    }
    command = {
        "npm": ["npm", "install", "--no-audit", "--no-fund"],
        "pnpm": ["pnpm", "install", "--store-dir", str(home / "store")],
        "yarn": ["yarn", "install"],
        "bun": ["bun", "install"],
    }[client]
    # The previous install's files (and their removal) are written out first, so that no
    # install pays for the one before it in the disk's write-back.
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{client} {tag} failed: {(done.stdout + done.stderr)[-1500:]}")
    if not (project / "node_modules" / "next" / "package.json").exists():
        raise RuntimeError(f"{client} {tag}: next was not installed")
    shutil.rmtree(project, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    return took


def token(data: Path, name: str) -> tuple[str, str]:
    """A token (id, secret) in pkgate's store at ``data``."""

    async def make() -> tuple[str, str]:
        sys.path.insert(0, str(TOP))
        from tokenapi.issue import ensure_user, issue_token
        from tokenapi.store import Store

        store = await Store.open(data / "pkgate.db")
        try:
            user = await ensure_user(store, "bench@example.com")
            made, secret = await issue_token(store, user, name=name)
            return made.id, secret
        finally:
            await store.close()

    return asyncio.run(make())


def log_figures(log: Path, token_id: str) -> tuple[int, int, int]:
    """(bytes sent, package requests, answers from pkgate's caches) of one token's lines in an
    access log: a hit, or a document built from the disk tier without the upstream."""
    sent = requests = hits = 0
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("token_id") != token_id:
            continue
        sent += record["bytes"]
        if record["path"].startswith("/npm/") and not record["path"].startswith("/npm/-/"):
            requests += 1
            hits += record["cache"] in ("hit", "disk")
    return sent, requests, hits


@dataclass
class Result:
    profile: str
    client: str
    direct: float
    cold: float
    warm: float
    direct_bytes: int
    cold_bytes: int
    warm_bytes: int
    warm_requests: int
    warm_hits: int
    cache_mb: float
    cache_json_mb: float
    # CPU seconds the upstream spent on the direct install, pkgate on the cold and the warm one
    # (client and servers share the machine's cores: this is time the client did not get).
    direct_cpu: float = 0.0
    cold_cpu: float = 0.0
    warm_cpu: float = 0.0
    rounds: int = 1  # direct and warm: medians of this many alternating turns
    # One install through a new pkgate process on the same data directory (a restart): its
    # time, and how many of its package requests the caches answered (metadata from the disk
    # tier, artifacts from the store).
    restarted: float = 0.0
    restarted_requests: int = 0
    restarted_hits: int = 0
    # The restarted pkgate's CPU seconds over that install, and how many documents it restored
    # from the entries the disk tier keeps and how many it built again from the upstream's bytes.
    restarted_cpu: float = 0.0
    restored: int = 0
    rebuilt: int = 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_profile(work: Path, tree: Path, names: list[str], tools: Path, profile: str,
                clients: list[str], rounds: int) -> list[Result]:  # fmt: skip
    """Each client: one cold install through a fresh pkgate, then ``rounds`` turns of a direct
    install and a warm one (same pkgate), alternating so that a burst of load elsewhere on the
    machine hits both alike; times and CPU are the medians of the turns, bytes and cache hits
    those of the first warm install (the one right after the cold)."""
    latency, rate = PROFILES[profile]
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    results = []
    serve = [PY, __file__, "--serve", str(tree), str(up_port), str(latency), str(rate)]
    with process(serve, up_port) as up:
        for client in clients:
            tag = f"{profile}-{client}"
            data = work / f"data-{tag}"
            kinds = ["cold", *(f"warm{n}" for n in range(rounds)), "restarted"]
            ids = {}
            secrets = {}
            for kind in kinds:
                ids[kind], secrets[kind] = token(data, kind)
            port = free_port()
            log = data / "access.log"
            args = [PY, "-m", "proxy", "serve", "--port", str(port), "--data-dir", str(data),
                    "--npm-upstream", upstream + "/", "--metadata-ttl", "3600",
                    "--access-log-file", str(log), "--log-level", "warning"]  # fmt: skip
            registry = f"http://127.0.0.1:{port}/npm/"
            direct: list[float] = []
            direct_cpu: list[float] = []
            direct_bytes = 0
            warm: list[float] = []
            warm_cpu: list[float] = []
            with process(args, port) as gate:
                before = cpu_seconds(gate.pid)
                cold = install(work, tools, client, names, registry, secrets["cold"], f"{tag}-cold")
                cold_cpu = cpu_seconds(gate.pid) - before
                for n in range(rounds):
                    http_json(f"{upstream}/-/bench/bytes")
                    before = cpu_seconds(up.pid)
                    direct.append(
                        install(work, tools, client, names, upstream, None, f"{tag}-direct{n}")
                    )
                    direct_cpu.append(cpu_seconds(up.pid) - before)
                    sent = http_json(f"{upstream}/-/bench/bytes")["bytes"]
                    direct_bytes = direct_bytes or sent
                    before = cpu_seconds(gate.pid)
                    secret = secrets[f"warm{n}"]
                    warm.append(
                        install(work, tools, client, names, registry, secret, f"{tag}-w{n}")
                    )
                    warm_cpu.append(cpu_seconds(gate.pid) - before)
                metrics = _metrics(f"http://127.0.0.1:{port}/metrics")
            with process(args, port) as gate:  # restarted: memory empty, disk tier and store kept
                before = cpu_seconds(gate.pid)
                restarted = install(
                    work, tools, client, names, registry, secrets["restarted"], f"{tag}-restart"
                )
                restarted_cpu = cpu_seconds(gate.pid) - before
                disk = _metrics(f"http://127.0.0.1:{port}/metrics")
            _, restarted_requests, restarted_hits = log_figures(log, ids["restarted"])
            cold_bytes, _, _ = log_figures(log, ids["cold"])
            warm_bytes, warm_requests, warm_hits = log_figures(log, ids["warm0"])
            cache_mb = metrics.get("pkgate_metadata_cache_bytes", 0) / 1e6
            json_mb = metrics.get("pkgate_metadata_cache_identity_bytes", 0) / 1e6
            result = Result(profile, client, median(direct), cold, median(warm), direct_bytes,
                            cold_bytes, warm_bytes, warm_requests, warm_hits, cache_mb, json_mb,
                            median(direct_cpu), cold_cpu, median(warm_cpu),
                            rounds, restarted, restarted_requests, restarted_hits,
                            restarted_cpu, int(disk.get("pkgate_metadata_disk_restored_total", 0)),
                            int(disk.get("pkgate_metadata_disk_rebuilt_total", 0)))  # fmt: skip
            print(f"  {result} direct {direct} warm {warm}", file=sys.stderr, flush=True)
            results.append(result)
            shutil.rmtree(data, ignore_errors=True)
    return results


def _metrics(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def table(results: list[Result]) -> str:
    head = ("profile", "client", "direct", "cold", "warm", "restarted",
            "MB on the wire direct/cold/warm", "from cache warm/restarted",
            "metadata cache MB (JSON MB)", "server CPU s direct/cold/warm/restarted",
            "restarted: restored/rebuilt")  # fmt: skip
    rows = [head]
    for r in results:
        rows.append((
            r.profile, r.client, f"{r.direct:.1f} s",
            f"{r.cold:.1f} s ({r.cold / r.direct:.2f}x)",
            f"{r.warm:.1f} s ({r.warm / r.direct:.2f}x)",
            f"{r.restarted:.1f} s ({r.restarted / r.direct:.2f}x)",
            f"{r.direct_bytes / 1e6:.1f} / {r.cold_bytes / 1e6:.1f} / {r.warm_bytes / 1e6:.1f}",
            f"{r.warm_hits}/{r.warm_requests} / {r.restarted_hits}/{r.restarted_requests}",
            f"{r.cache_mb:.1f} ({r.cache_json_mb:.1f})",
            f"{r.direct_cpu:.1f} / {r.cold_cpu:.1f} / {r.warm_cpu:.1f} / {r.restarted_cpu:.1f}",
            f"{r.restored}/{r.rebuilt}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--packages", type=int, default=340)
    parser.add_argument("--clients", default="npm,pnpm,yarn,bun")
    parser.add_argument("--profiles", default="fast,internet")
    parser.add_argument("--rounds", type=int, default=3, help="direct/warm turns per client")
    parser.add_argument("--tools", default=os.environ.get("PKGATE_TOOLS", str(TOP / ".tools")))
    ns = parser.parse_args()
    if ns.serve:
        root, port, latency, rate = ns.serve
        return run_upstream(Path(root), int(port), float(latency), int(rate))
    tools = Path(ns.tools) / "bin"
    with tempfile.TemporaryDirectory(prefix="pkgate-tree-") as tmp:
        work = Path(tmp)
        print(f"building a {ns.packages}-package tree ...", file=sys.stderr, flush=True)
        names = build_tree(work / "tree", ns.packages)
        json_mb = (
            sum(
                len(gzip.decompress(p.read_bytes()))
                for p in (work / "tree" / "meta").glob("*.full.json.gz")
            )
            / 1e6
        )
        print(f"  full packuments: {json_mb:.1f} MB of JSON", file=sys.stderr, flush=True)
        results: list[Result] = []
        try:
            for profile in ns.profiles.split(","):
                results += run_profile(work, work / "tree", names, tools, profile,
                                       ns.clients.split(","), ns.rounds)  # fmt: skip
        finally:
            print(table(results))


if __name__ == "__main__":
    main()
