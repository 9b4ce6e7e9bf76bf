"""What the token side needs to know, handed over by the server that hosts it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yarl import URL


@dataclass(frozen=True, slots=True)
class TokenApiConfig:
    db_path: Path
    public_url: URL
    outbox_dir: Path
    token_cache_ttl: float = 60.0
    last_used_flush: float = 1.0
    smtp_url: str | None = None
    mail_from: str = "pkgate <pkgate@localhost>"
    npm_enabled: bool = True
    pypi_enabled: bool = True
