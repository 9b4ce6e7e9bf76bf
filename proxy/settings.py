"""Settings: one frozen dataclass, filled from flags > PKGATE_* environment > TOML file > defaults.

Each field's metadata names its parser and help text; the CLI flags, the environment names and the
TOML keys are all derived from the field name, so adding a setting is adding one field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL

from tokenapi.oidcconfig import OidcIssuer, parse_issuers

ENV_PREFIX = "PKGATE_"


class SettingsError(ValueError):
    """A setting is missing or has a bad value; the message names it and is one line."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _int(value: Any) -> int:
    """A whole number: an int (TOML) or its decimal digits; never a float, rounded or not."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise ValueError(f"expected an integer, not {_shown(value)}")


def _shown(value: Any) -> str:
    """A bad value as it may appear in a one-line error (short, one line)."""
    text = repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(value: Any) -> int:
    n = _int(value)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _non_negative_int(value: Any) -> int:
    n = _int(value)
    if n < 0:
        raise ValueError("must not be negative")
    return n


def _port(value: Any) -> int:
    n = _int(value)
    if not 0 <= n <= 65535:
        raise ValueError("must be between 0 and 65535")
    return n


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> float:
    """A duration: a number with ``s``, ``m``, ``h`` or ``d`` (``2s``, ``3d``); bare = seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    unit = 1
    if isinstance(value, str):
        text = value.strip().lower()
        if text[-1:] in _DURATION_UNITS:
            unit, text = _DURATION_UNITS[text[-1]], text[:-1].strip()
        value = text
    try:
        n = float(value) * unit
    except (TypeError, ValueError):
        raise ValueError("expected a duration such as 30, 2s, 10m, 72h or 3d") from None
    if not n >= 0 or n == float("inf"):
        raise ValueError("expected a non-negative duration")
    return n


def _opt_seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return _seconds(value)


def _paths(value: Any) -> tuple[str, ...]:
    return tuple(_list(value))


def _opt_path(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    return Path(_str(value))


def _positive_seconds(value: Any) -> float:
    n = _seconds(value)
    if n == 0:
        raise ValueError("must be greater than 0")
    return n


def _opt_positive_seconds(value: Any) -> float | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        return None
    return _positive_seconds(value)


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def _byte_size(value: Any) -> int:
    """A non-negative number of bytes: 1048576, "64MiB", "10 GB"."""
    usage = f"expected a whole number of bytes or a size such as 64MiB or 10GB, not {_shown(value)}"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(usage)
        return value
    if not isinstance(value, str):
        raise ValueError(usage)
    text = value.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :]
    try:
        number = float(digits)
    except ValueError:
        raise ValueError(usage) from None
    if unit not in _BYTE_UNITS or not number >= 0 or number == float("inf"):
        raise ValueError(usage)
    size = number * _BYTE_UNITS[unit]
    if size != int(size):
        raise ValueError(usage)
    return int(size)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _http_url(value: Any, *, trailing_slash: bool = True) -> str:
    text = _str(value).strip()
    url = URL(text)
    if url.scheme not in {"http", "https"} or not url.host:
        raise ValueError("expected an http:// or https:// URL")
    if url.user or url.password:
        raise ValueError("must not carry credentials")
    if url.query_string or url.fragment:
        raise ValueError("must not have a query or fragment")
    text = str(url)
    if trailing_slash and not text.endswith("/"):
        text += "/"
    return text


def _opt_upstream(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _http_url(value)


def _public_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _http_url(value)
    return text.rstrip("/")


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [_str(v).strip() for v in value]
    raise ValueError("expected a list or a comma-separated string")


def _origins(value: Any) -> tuple[str, ...]:
    return tuple(_http_url(v) for v in _list(value))


def _networks(value: Any) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in _list(value))


def _smtp_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    url = URL(_str(value))
    if url.scheme not in {"smtp", "smtps"} or not url.host:
        raise ValueError("expected smtp://[user:pass@]host[:port] or smtps://...")
    return str(url)


def _opt_host(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = _str(value).strip().lower()
    if not text or "/" in text or " " in text:
        raise ValueError("expected a host name")
    return text


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _vhost(value: Any) -> str | None:
    text = _opt_host(value)
    if text is not None and not all(_HOST_LABEL.fullmatch(p) for p in text.split(".")):
        raise ValueError("expected a host name such as npm.example.com (no port, no scheme)")
    return text


def _database_url(value: Any) -> str:
    text = _str(value).strip()
    if text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return text
    if text.startswith(("postgresql://", "postgres://")):
        url = URL(text)
        if not url.host:
            raise ValueError(
                "a postgresql:// URL needs a host, e.g. postgresql://u:p@db:5432/pkgate"
            )
        return text
    raise ValueError("expected sqlite:///PATH or postgresql://user:password@host:port/dbname")


def setting(default: Any, parse: Callable[[Any], Any], help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a pkgate server, validated."""

    host: str = setting("127.0.0.1", _str, "listen address")
    port: int = setting(8080, _port, "listen port")
    public_url: str | None = setting(
        None, _public_url, "origin (and optional path) clients use; default: http on host and port"
    )
    data_dir: Path = setting(Path("pkgate-data"), lambda v: Path(_str(v)), "data directory")
    database_url: str | None = setting(
        None,
        _database_url,
        "sqlite:///PATH or postgresql://user:pass@host:port/db; default DATA_DIR/pkgate.db",
        secret=True,
    )
    database_pool_size: int = setting(
        10, _positive_int, "PostgreSQL connections per process (plus one for notifications)"
    )
    npm_upstream: str | None = setting(None, _opt_upstream, "upstream npm registry base URL")
    pypi_upstream: str | None = setting(
        None, _opt_upstream, "upstream simple index URL (ends in /simple/)"
    )
    pypi_files_upstream: tuple[str, ...] = setting(
        (), _origins, "extra origins the index's file links may point at (comma-separated)"
    )
    anonymous: str = setting(
        "deny", _choice("deny", "allow"), "allow or deny requests without credentials"
    )
    token_cache_ttl: float = setting(60.0, _seconds, "seconds a token validation may be reused")
    last_used_flush: float = setting(1.0, _positive_seconds, "seconds between last-used writes")
    smtp_url: str | None = setting(
        None, _smtp_url, "smtp://user:pass@host:port (smtps://, ?starttls=true)", secret=True
    )
    mail_from: str = setting("pkgate <pkgate@localhost>", _str, "From: address of mails")
    trusted_proxies: tuple[Network, ...] = setting(
        (), _networks, "CIDRs whose X-Forwarded-For is believed (comma-separated)"
    )
    register_limit_email: int = setting(
        5, _positive_int, "token registrations per email address per hour"
    )
    register_limit_ip: int = setting(
        30, _positive_int, "token registrations per client IP per hour"
    )
    reset_limit_email: int = setting(
        10, _positive_int, "reset-code attempts per email address per hour"
    )
    reset_limit_ip: int = setting(30, _positive_int, "reset-code attempts per client IP per hour")
    token_create_limit: int = setting(20, _positive_int, "named tokens a user may create per hour")
    login_limit: int = setting(
        10, _positive_int, "failed logins per address and per IP per 15 minutes"
    )
    session_lifetime: float = setting(
        7 * 24 * 3600.0, _positive_seconds, "seconds a login session lasts"
    )
    token_max_lifetime: float | None = setting(
        None, _opt_positive_seconds, "longest lifetime of a named token in seconds (default none)"
    )
    oidc_issuers: tuple[OidcIssuer, ...] = setting(
        (),
        parse_issuers,
        "CI OIDC issuers whose ID tokens may be exchanged for tokens ([[oidc_issuers]] in TOML)",
    )
    oidc_limit_ip: int = setting(60, _positive_int, "OIDC token exchanges per client IP per minute")
    registry_rate_per_token: int = setting(
        200, _non_negative_int, "registry requests per second per token, after the burst (0 = off)"
    )
    registry_rate_per_ip: int = setting(
        500, _non_negative_int, "registry requests per second per client IP after the burst (0=off)"
    )
    registry_rate_burst: int = setting(
        5000, _positive_int, "registry requests a token or client IP may make at once"
    )
    registry_auth_failures: int = setting(
        30, _non_negative_int, "failed registry authentications per client IP per minute (0 = off)"
    )
    workers: int = setting(1, _positive_int, "number of server processes sharing the port")
    upstream_timeout: float = setting(30.0, _positive_seconds, "seconds to wait for upstream data")
    upstream_connect_timeout: float = setting(
        10.0, _positive_seconds, "seconds to wait for an upstream connection"
    )
    upstream_connections: int = setting(100, _positive_int, "upstream connection pool size")
    upstream_metadata_deadline: float = setting(
        60.0, _positive_seconds, "seconds one upstream metadata request may take in total"
    )
    upstream_artifact_deadline: float = setting(
        900.0, _positive_seconds, "seconds one upstream artifact download may take in total"
    )
    cache: bool = setting(True, _bool, "cache metadata and artifacts (false: always go upstream)")
    metadata_ttl: float = setting(120.0, _seconds, "seconds cached metadata is fresh")
    metadata_negative_ttl: float = setting(10.0, _seconds, "seconds an upstream 404 is remembered")
    metadata_stale_max: float = setting(
        86400.0, _seconds, "max age of metadata served (X-Cache: STALE) when the upstream fails"
    )
    metadata_cache_bytes: int = setting(
        256 * 1024**2,
        _byte_size,
        "memory bound of the metadata cache, bodies counted compressed (e.g. 256MiB; 0 = off)",
    )
    metadata_disk_bytes: int = setting(
        1024**3,
        _byte_size,
        "disk bound of the metadata cache's second tier under data_dir: upstream answers kept "
        "so restarts and other workers start warm (0 = off)",
    )
    artifact_cache_bytes: int = setting(
        10 * 1024**3, _byte_size, "disk bound of the artifact cache under data_dir (0 = off)"
    )
    artifact_memory_bytes: int = setting(
        64 * 1024**2,
        _byte_size,
        "memory bound for small cached artifacts (up to 512 KiB each) answered from memory "
        "(0 = always from disk)",
    )
    log_level: str = setting("info", _choice("debug", "info", "warning", "error"), "log level")
    access_log: bool = setting(True, _bool, "write one JSON access log line per request")
    access_log_file: Path | None = setting(
        None, _opt_path, "append the access log to this file (default: stderr)"
    )
    access_log_flush: float = setting(
        0.5, _positive_seconds, "seconds between batched access log writes"
    )
    npm_host: str | None = setting(
        None, _vhost, "also serve the npm registry at the root of this host name (virtual host)"
    )
    pypi_host: str | None = setting(
        None, _vhost, "also serve the index at the root of this host name (/simple/)"
    )
    discover: bool = setting(
        True, _bool, "with neither upstream set, find both on this machine (npm and pip config)"
    )
    download_history_days: int = setting(
        90, _positive_int, "days the download history and expired tokens are kept before pruning"
    )
    shutdown_grace: float = setting(
        30.0, _positive_seconds, "seconds in-flight requests may take to finish on SIGTERM"
    )
    # Supply-chain policy (SPEC 15; proxy/supplychain/).
    blocklist_feeds: tuple[str, ...] = setting(
        (), _paths, "OSV sources, comma-separated: http(s) URLs or local files/directories/zips"
    )
    blocklist_file: Path | None = setting(
        None, _opt_path, "TOML file of manual [[block]] entries and [[allow]] exceptions"
    )
    blocklist_kinds: str = setting(
        "malicious", _choice("malicious", "all"), "malicious: only MAL- records; all: every record"
    )
    blocklist_refresh: float = setting(3600.0, _positive_seconds, "how often feeds are re-read")
    min_release_age: float = setting(
        0.0, _seconds, "withhold versions published less than this long ago (72h, 3d; 0 = off)"
    )
    npm_min_release_age: float | None = setting(
        None, _opt_seconds, "npm override of min_release_age"
    )
    pypi_min_release_age: float | None = setting(
        None, _opt_seconds, "PyPI override of min_release_age"
    )
    min_release_age_exempt: tuple[str, ...] = setting(
        (), _paths, "package-name globs exempt from the age rule, comma-separated (@mycorp/*)"
    )

    @property
    def base_url(self) -> URL:
        """The public URL as a yarl URL without a trailing slash."""
        return URL(self.public_url or f"http://{self.host}:{self.port}")

    @property
    def db_path(self) -> Path:
        """The SQLite file (when the store is SQLite)."""
        if self.database_url is not None and self.database_url.startswith("sqlite:///"):
            return Path(self.database_url[len("sqlite:///") :])
        return self.data_dir / "pkgate.db"

    @property
    def database(self) -> Path | str:
        """What the store opens: the SQLite file, or the PostgreSQL URL."""
        if self.database_url is None or self.database_url.startswith("sqlite:///"):
            return self.db_path
        return self.database_url

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "cache" / "artifacts"

    @property
    def metadata_dir(self) -> Path:
        return self.data_dir / "cache" / "metadata"

    def require_upstream(self) -> None:
        """Serving needs at least one upstream; say how to set one."""
        if self.npm_upstream is None and self.pypi_upstream is None:
            raise SettingsError(
                "no upstream configured: set npm_upstream and/or pypi_upstream, e.g. "
                '--npm-upstream "$(npm config get registry)" or '
                'PKGATE_PYPI_UPSTREAM="$(pip config get global.index-url)"'
            )

    def describe(self) -> dict[str, str]:
        """Settings as text for logs, with secrets masked."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = str(URL(str(value)).with_user(None).with_password(None)) + " (masked)"
            out[f.name] = str(value)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

# PKGATE_* variables that are not settings but are still pkgate's own: the config file, the test
# harness (tests/run.sh, CI) and deploy/ (the compose files' database password).
OTHER_ENV = frozenset(
    ENV_PREFIX + name
    for name in (
        "CONFIG",
        "TOOLS",
        "REQUIRE_TOOLS",
        "REQUIRE_POSTGRES",
        "CHROMIUM",
        "LOAD_SECONDS",
        "DB_PASSWORD",
    )
)


def unknown_env(env: Mapping[str, str] | None = None) -> list[str]:
    """One warning line per ``PKGATE_*`` variable that names no setting (a typo is ignored
    otherwise), with the closest setting's variable when one is close."""
    env = os.environ if env is None else env
    known = {ENV_PREFIX + name.upper() for name in FIELDS} | OTHER_ENV
    lines = []
    for name in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"unknown environment variable {name} is ignored{hint}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one --flag per setting (values stay strings; load() parses them)."""
    parser.add_argument("--config", metavar="FILE", help="TOML settings file")
    for name, f in FIELDS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{f.metadata['help']} [env {ENV_PREFIX}{name.upper()}]",
        )


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge flag > env > file > default and validate into one Settings."""
    flags = flags or {}
    env = os.environ if env is None else env
    if config_file is None:
        config_file = flags.get("config") or env.get(ENV_PREFIX + "CONFIG") or None
    file_values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                file_values = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError(f"config: cannot read {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config: {config_file} is not valid TOML: {exc}") from exc
        unknown = sorted(set(file_values) - set(FIELDS))
        if unknown:
            raise SettingsError(f"config: unknown setting {unknown[0]!r} in {config_file}")
    values: dict[str, Any] = {}
    for name, f in FIELDS.items():
        raw: Any = None
        source = None
        if flags.get(name) is not None:
            raw, source = flags[name], "--" + name.replace("_", "-")
        elif env.get(ENV_PREFIX + name.upper()) not in (None, ""):
            raw, source = env[ENV_PREFIX + name.upper()], ENV_PREFIX + name.upper()
        elif name in file_values:
            raw, source = file_values[name], f"{name} in {config_file}"
        if source is None:
            continue
        try:
            values[name] = f.metadata["parse"](raw)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{name} ({source}): {exc}") from None
    return Settings(**values)
