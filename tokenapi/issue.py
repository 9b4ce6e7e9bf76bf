"""Issuing tokens: the operations shared by the CLI, the HTTP APIs and the tests."""

from __future__ import annotations

from collections.abc import Iterable

from . import tokens
from .errors import Conflict
from .store import Store, Token, User


async def ensure_user(store: Store, email: str, *, language: str = "en") -> User:
    """The user with this address, created if it does not exist yet.

    Two processes creating the same new address at once both see no user; the one that loses
    the race on the unique index reads the winner's user instead of failing.
    """
    user = await store.get_user_by_email(email)
    if user is not None:
        return user
    try:
        return await store.create_user(email, language=language)
    except Conflict:
        user = await store.get_user_by_email(email)
        if user is None:
            raise
        return user


async def issue_token(
    store: Store,
    user: User,
    *,
    name: str,
    kind: str = "api",
    expires_at: float | None = None,
    scopes: Iterable[str] = tokens.ALL_SCOPES,
) -> tuple[Token, str]:
    """Create a token for ``user``; returns it and its secret (shown once, never stored).

    ``expires_at`` (epoch seconds, None = never) and ``scopes`` limit where and until when
    the token works."""
    secret = tokens.generate()
    token = await store.create_token(
        user.id,
        name=name,
        kind=kind,
        digest=tokens.digest(secret),
        prefix=tokens.display_prefix(secret),
        expires_at=expires_at,
        scopes=scopes,
    )
    return token, secret
