"""What the token side needs to know, handed over by the server that hosts it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from yarl import URL

from .oidcconfig import OidcIssuer


@dataclass(frozen=True, slots=True)
class TokenApiConfig:
    database: Path | str  # the SQLite file, or a postgresql:// URL
    public_url: URL
    outbox_dir: Path
    token_cache_ttl: float = 60.0
    database_pool_size: int = 10  # PostgreSQL connections of this process
    last_used_flush: float = 1.0
    smtp_url: str | None = None
    mail_from: str = "pkgate <pkgate@localhost>"
    npm_enabled: bool = True
    pypi_enabled: bool = True
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    # Rate limits: how many per window (seconds) before 429.
    register_per_email: int = 5
    register_per_ip: int = 30
    register_window: float = 3600.0
    token_create_per_user: int = 20
    token_create_window: float = 3600.0
    login_failures: int = 10
    login_window: float = 900.0
    reset_per_email: int = 10
    reset_per_ip: int = 30
    reset_window: float = 3600.0
    session_lifetime: float = 7 * 24 * 3600.0
    smtp_timeout: float = 30.0

    # Longest lifetime of a named token in seconds (None: unlimited); SPEC 18.
    token_max_lifetime: float | None = None
    # Wall-clock seconds: token expiry and OIDC checks read it (tests pass a controllable one).
    clock: Callable[[], float] = time.time
    download_history_days: int = 90
    # CI identity providers whose ID tokens POST /api/v1/oidc/token exchanges (SPEC 18).
    oidc_issuers: tuple[OidcIssuer, ...] = ()
    oidc_limit_ip: int = 60  # exchanges per client IP per minute
