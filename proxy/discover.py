"""Finding the upstreams on the machine when neither is set (SPEC §20).

- npm: ``npm config get registry`` when ``npm`` is on PATH (it reads the user's and the project's
  ``.npmrc`` and ``npm_config_registry``, exactly what npm itself would use);
- PyPI: the ``index-url`` of pip's configuration (``PIP_INDEX_URL``, ``[install]`` or ``[global]``
  of its config files, in pip's own order of precedence), or else the default index of the pip
  installed in pkgate's own environment, with that index's file storage origin.

Each answer says where it came from, so start-up can print it.  A URL that points back at pkgate
itself (a machine already set up to use it) or carries credentials is not taken.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from yarl import URL

from .settings import Settings, SettingsError

COMMAND_TIMEOUT = 30.0

# Run by pkgate's own interpreter: pip's configuration as pip reads it, and pip's default index.
# Prints one JSON object; never raises (an unusable pip is reported as an error field).
_PIP_PROBE = r"""
import configparser, json, os, sys
try:
    import pip
    from pip._internal.configuration import Configuration
    from pip._internal.models.index import PyPI
except Exception as exc:
    print(json.dumps({"error": "pip is not importable (%s)" % type(exc).__name__}))
    sys.exit(0)
out = {"pip": pip.__version__, "default": PyPI.simple_url,
       "files": "https://%s/" % PyPI.file_storage_domain if PyPI.file_storage_domain else None}
try:
    conf = Configuration(isolated=False)
    conf.load()
except Exception as exc:
    out["error"] = "pip's configuration cannot be read (%s)" % type(exc).__name__
    print(json.dumps(out))
    sys.exit(0)
def value(key):
    try:
        return conf.get_value(key)
    except Exception:
        return None
found = value(":env:.index-url")
if found:
    out["index_url"], out["source"] = found, "PIP_INDEX_URL"
else:
    for section in ("install", "global"):
        found = value(section + ".index-url")
        if not found:
            continue
        where = None
        files = dict(conf.iter_config_files())
        if files.get("env", [None])[0:1] != [os.devnull]:
            for variant in ("global", "user", "site", "env"):
                for name in files.get(variant, []):
                    parser = configparser.RawConfigParser()
                    try:
                        parser.read(name, encoding="utf-8")
                        if parser.get(section, "index-url", fallback=None) == found:
                            where = name
                    except Exception:
                        pass
        out["index_url"] = found
        out["source"] = "index-url in [%s] of %s" % (section, where or "pip's configuration")
        break
print(json.dumps(out))
"""


@dataclass(frozen=True, slots=True)
class Found:
    """One discovered upstream: its URL, where it came from, and extra file origins (PyPI)."""

    url: str
    source: str
    files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Missing:
    """Why an upstream was not discovered (one short phrase, never echoing a URL)."""

    reason: str


def _usable(text: str, own: URL) -> str | None:
    """Why ``text`` cannot be an upstream URL, or None when it can."""
    url = URL(text)
    if url.scheme not in {"http", "https"} or not url.host:
        return "is not an http(s) URL"
    if url.user or url.password:
        return "carries credentials (set the upstream yourself, without them)"
    if url.query_string or url.fragment:
        return "has a query or fragment"
    local = {"127.0.0.1", "localhost", "::1", (own.host or "").lower()}
    if url.origin() == own.origin() or (url.port == own.port and url.host.lower() in local):
        return "points at pkgate itself"
    return None


def _run(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv: npm from PATH or our own interpreter
        argv,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def npm_registry(env: Mapping[str, str], own: URL) -> Found | Missing:
    """The registry npm would use on this machine, from ``npm config get registry``."""
    npm = shutil.which("npm", path=env.get("PATH", os.defpath))
    if npm is None:
        return Missing("npm is not on PATH")
    try:
        done = _run([npm, "config", "get", "registry"], env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Missing(f"`npm config get registry` did not run ({type(exc).__name__})")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return Missing(f"`npm config get registry` failed (exit status {done.returncode})")
    text = lines[-1].strip()
    problem = _usable(text, own)
    if problem:
        return Missing(f"the registry from `npm config get registry` {problem}")
    return Found(_slash(text), f"`npm config get registry` ({npm})")


def pypi_index(env: Mapping[str, str], own: URL) -> Found | Missing:
    """The index pip in pkgate's own environment would use: its configuration, else its default."""
    try:
        done = _run([sys.executable, "-c", _PIP_PROBE], env)
        probe = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return Missing(f"pip in {sys.prefix} could not be asked ({type(exc).__name__})")
    if not isinstance(probe, dict):
        return Missing(f"pip in {sys.prefix} gave no answer")
    if probe.get("error") and "default" not in probe:
        return Missing(str(probe["error"]))
    configured = probe.get("index_url")
    if isinstance(configured, str) and configured:
        problem = _usable(configured, own)
        if problem:
            return Missing(f"the index-url from {probe.get('source')} {problem}")
        return Found(_slash(configured), str(probe.get("source")))
    if probe.get("error"):
        return Missing(str(probe["error"]))
    default = probe.get("default")
    if not isinstance(default, str) or _usable(default, own):
        return Missing(f"pip {probe.get('pip')} in {sys.prefix} names no usable default index")
    files = probe.get("files")
    return Found(
        _slash(default),
        f"the default index of pip {probe.get('pip')} in {sys.prefix}",
        (files,) if isinstance(files, str) and not _usable(files, own) else (),
    )


def _slash(text: str) -> str:
    return text if text.endswith("/") else text + "/"


def fill_upstreams(
    settings: Settings, env: Mapping[str, str], say: Callable[[str], None]
) -> Settings:
    """``settings`` with both upstreams discovered when neither is set and discovery is on.

    ``say`` gets one line per upstream: what was chosen and where from, or why none was.  An
    explicit setting always wins: with either upstream set nothing is discovered.
    """
    if not settings.discover or settings.npm_upstream or settings.pypi_upstream:
        return settings
    own = settings.base_url
    npm, pypi = npm_registry(env, own), pypi_index(env, own)
    if isinstance(npm, Missing) and isinstance(pypi, Missing):
        raise SettingsError(
            "no upstream configured and none discovered "
            f"(npm: {npm.reason}; PyPI: {pypi.reason}): set npm_upstream and/or pypi_upstream, "
            'e.g. --npm-upstream "$(npm config get registry)" or '
            "PKGATE_PYPI_UPSTREAM=<your simple index URL>"
        )
    changes: dict[str, object] = {}
    if isinstance(npm, Found):
        changes["npm_upstream"] = npm.url
        say(f"npm upstream {npm.url} (discovered from {npm.source}; --no-discover to turn off)")
    else:
        say(f"no npm upstream: {npm.reason} (set npm_upstream to serve npm)")
    if isinstance(pypi, Found):
        changes["pypi_upstream"] = pypi.url
        extra = ""
        if pypi.files and not settings.pypi_files_upstream:
            changes["pypi_files_upstream"] = pypi.files
            extra = f", files from {', '.join(pypi.files)}"
        say(
            f"PyPI upstream {pypi.url} (discovered from {pypi.source}{extra}; "
            "--no-discover to turn off)"
        )
    else:
        say(f"no PyPI upstream: {pypi.reason} (set pypi_upstream to serve PyPI)")
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
