"""Email: composing the welcome and reset-code messages and delivering them.

Delivery goes to ``smtp_url`` with aiosmtplib (``smtp://`` plain, ``?starttls=true`` to upgrade,
``smtps://`` for implicit TLS), or, without an SMTP server, into ``<data_dir>/outbox/`` as ``.eml``
files readable by any mail program.  Any failure to deliver is one ``MailError`` whose message
names the problem but never the credentials or the message body (which holds secrets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from urllib.parse import unquote

import aiosmtplib
from yarl import URL

from . import mailtext
from .clientsetup import Snippet, snippets
from .config import TokenApiConfig

log = logging.getLogger(__name__)

_SETUP_ORDER = ("npm", "yarn", "yarn classic", "pnpm", "bun", "pip", "uv", "poetry")


class MailError(Exception):
    """A message could not be delivered; the text is safe to log."""


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool

    def __repr__(self) -> str:  # never show the password
        return f"SmtpTarget({self.host}:{self.port}, tls={self.use_tls}, starttls={self.start_tls})"


def parse_smtp_url(text: str) -> SmtpTarget:
    """``smtp[s]://[user:pass@]host[:port][?starttls=true]`` as connection parameters."""
    url = URL(text)
    if url.scheme not in {"smtp", "smtps"} or not url.host:
        raise ValueError("expected smtp://[user:pass@]host[:port] or smtps://...")
    use_tls = url.scheme == "smtps"
    start_tls = url.query.get("starttls", "false").lower() in {"1", "true", "yes", "on"}
    if use_tls and start_tls:
        raise ValueError("smtps:// already uses TLS; starttls=true is for smtp://")
    port = url.explicit_port or (465 if use_tls else 25)
    user = unquote(url.raw_user) if url.raw_user else None
    password = unquote(url.raw_password) if url.raw_password else None
    return SmtpTarget(url.host, port, user, password, use_tls, start_tls)


def _api_url(public_url: URL) -> str:
    return f"{str(public_url).rstrip('/')}/api"


def _render_setup(language: str, items: list[Snippet]) -> str:
    by_client = {s.client: s for s in items}
    blocks = []
    for client in _SETUP_ORDER:
        snippet = by_client.get(client)
        if snippet is None:
            continue
        body = "\n".join(f"    {line}" if line else "" for line in snippet.text.splitlines())
        blocks.append(f"{client} ({snippet.where}):\n\n{body}\n")
    return "\n".join(blocks)


def _message(config: TokenApiConfig, to: str, subject: str, text: str) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = config.mail_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.public_url.host or "localhost")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text, charset="utf-8")
    return msg


def welcome_message(config: TokenApiConfig, to: str, language: str, secret: str) -> EmailMessage:
    """The mail that delivers a new token with the setup for every enabled client."""
    items = snippets(
        config.public_url,
        secret,
        npm_enabled=config.npm_enabled,
        pypi_enabled=config.pypi_enabled,
    )
    text = mailtext.WELCOME[language].substitute(
        public_url=str(config.public_url),
        token=secret,
        api=_api_url(config.public_url),
        setup=_render_setup(language, items),
    )
    return _message(config, to, mailtext.WELCOME_SUBJECT[language], text)


def reset_message(config: TokenApiConfig, to: str, language: str, code: str) -> EmailMessage:
    """The mail for an address that has a token: where to find it, and a one-time reset code."""
    placeholder = mailtext.PLACEHOLDER[language]
    items = snippets(
        config.public_url,
        placeholder,
        npm_enabled=config.npm_enabled,
        pypi_enabled=config.pypi_enabled,
    )
    where_lines = mailtext.WHERE[language]
    enabled = {s.client for s in items}
    where = "\n".join(f"    {where_lines[c]}" for c in where_lines if c in enabled)
    # Inside single quotes in a shell: only a quote itself needs escaping.
    reset_json = json.dumps({"email": to, "code": code}).replace("'", "'\\''")
    text = mailtext.RESET[language].substitute(
        public_url=str(config.public_url),
        api=_api_url(config.public_url),
        where=where,
        code=code,
        reset_json=reset_json,
        placeholder=placeholder,
        setup=_render_setup(language, items),
    )
    return _message(config, to, mailtext.RESET_SUBJECT[language], text)


def _write_eml(directory: Path, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = directory / f"{stamp}-{secrets.token_hex(6)}.eml"
    tmp = path.with_suffix(".tmp")
    # The message holds a secret: readable by the owner only, and never seen half-written.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


class Mailer:
    """Delivers messages to the configured SMTP server or the outbox folder."""

    def __init__(self, config: TokenApiConfig) -> None:
        self._target = parse_smtp_url(config.smtp_url) if config.smtp_url else None
        self._outbox = config.outbox_dir
        self._timeout = config.smtp_timeout
        self.sent = 0

    async def send(self, message: EmailMessage) -> None:
        """Deliver ``message``; raises MailError when it could not be handed over."""
        to = message["To"]
        if self._target is None:
            try:
                path = await asyncio.to_thread(_write_eml, self._outbox, message.as_bytes())
            except OSError as exc:
                log.error("mail to %s could not be written to the outbox: %s", to, exc.strerror)
                raise MailError("cannot write to the mail outbox") from None
            log.info("no smtp_url set: mail to %s written to %s", to, path)
            self.sent += 1
            return
        target = self._target
        try:
            await aiosmtplib.send(
                message,
                hostname=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                use_tls=target.use_tls,
                start_tls=target.start_tls,
                timeout=self._timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = getattr(exc, "message", None) or exc.__class__.__name__
            log.error("mail to %s via %s:%s failed: %s", to, target.host, target.port, reason)
            raise MailError(f"SMTP delivery failed: {exc.__class__.__name__}") from None
        log.info("mail to %s sent via %s:%s", to, target.host, target.port)
        self.sent += 1
