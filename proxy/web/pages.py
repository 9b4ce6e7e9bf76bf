"""The page handlers: server-rendered views of the same data the JSON API serves.

Pages only read.  Every change (sign in and out, register, create, revoke) is made by the page's
script through the JSON API, so the API's checks (Origin on cookie writes, rate limits, input
rules) are the only ones there are.  Token rows are the API's own list entries
(``tokenapi.named_api.listed``), so a field the API gains shows up here too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from tokenapi import clientsetup, inputs
from tokenapi.downloads import build_query, history
from tokenapi.errors import InvalidInput, StoreUnavailable
from tokenapi.keys import config_key, recorder_key, store_key
from tokenapi.named_api import listed
from tokenapi.store import DownloadRow, Token
from tokenapi.tokens import ALL_SCOPES
from tokenapi.webauth import Caller
from tokenapi.webio import iso

from ..supplychain.admin import _status as blocklist_status_of
from ..supplychain.admin import with_iso_times
from .keys import jinja_key, static_key
from .security import secure_page, signed_in

# Stands for the secret in the setup snippets rendered into the page; the script puts the real
# secret in its place in the browser, so no response from the server ever holds it.
SECRET_PLACEHOLDER = "pkg_SECRET_SHOWN_ONCE_AFTER_CREATION"

PageHandler = Callable[[web.Request, Caller], Awaitable[web.StreamResponse]]


def base_path(request: web.Request) -> str:
    """The public URL's path without its trailing slash ("" at the root)."""
    return request.config_dict[config_key].public_url.path.rstrip("/")


def render(
    request: web.Request,
    name: str,
    context: Mapping[str, Any],
    *,
    caller: Caller | None,
    status: int = 200,
) -> web.StreamResponse:
    """A page from ``templates/<name>`` with the layout's shared values and security headers."""
    base = base_path(request)
    full = {
        "base": base,
        "static": request.config_dict[static_key].url,
        "user": caller.user if caller else None,
        "nav": "",
        **context,
    }
    response = aiohttp_jinja2.render_template(name, request, full, status=status, app_key=jinja_key)
    https = request.config_dict[config_key].public_url.scheme == "https"
    return secure_page(response, https=https)


def page(
    handler: PageHandler, *, admin: bool = False
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page for signed-in people: the sign-in page otherwise; 403 for non-admins on admin ones."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            caller = await signed_in(request)
            if caller is None:
                return await signin_page(request)
            if admin and not caller.user.is_admin:
                return render(
                    request,
                    "message.html",
                    {
                        "title": "For administrators only",
                        "message": "This page is for administrators. "
                        "Ask one if you need to see other people's tokens.",
                    },
                    caller=caller,
                    status=403,
                )
            return await handler(request, caller)
        except StoreUnavailable:
            return render(
                request,
                "message.html",
                {
                    "title": "Temporarily unavailable",
                    "message": "The token store is not answering. Try again in a few seconds.",
                },
                caller=None,
                status=503,
            )

    return wrapped


async def signin_page(request: web.Request) -> web.StreamResponse:
    """Sign in, get a token by email, or redeem the reset code such a mail holds."""
    return render(
        request,
        "signin.html",
        {
            "title": "Sign in",
            "snippets": setup_snippets(request),
            "placeholder": SECRET_PLACEHOLDER,
            "public_url": str(request.config_dict[config_key].public_url),
        },
        caller=None,
    )


async def token_rows(request: web.Request, found: list[Token]) -> list[dict[str, Any]]:
    """List entries as the API gives them, plus the per-ecosystem use of each token."""
    recorder = request.config_dict[recorder_key]
    rows = []
    for token in found:
        row: dict[str, Any] = {**listed(request, token), "email": token.email}
        usage = await recorder.usage(token.id)
        row["usage"] = [
            {"ecosystem": u.ecosystem, "requests": u.requests, "last_used_at": iso(u.last_used_at)}
            for u in sorted(usage, key=lambda u: u.ecosystem)
        ]
        rows.append(row)
    return rows


DAY = 86400.0
EXPIRY_CHOICES = (
    (DAY, "1 day"),
    (7 * DAY, "7 days"),
    (30 * DAY, "30 days"),
    (90 * DAY, "90 days"),
    (365 * DAY, "1 year"),
)


def expiry_choices(max_lifetime: float | None) -> list[tuple[str, str]]:
    """(value, label) of the create form's expiry menu; "" asks for the API's default."""
    if max_lifetime is None:
        choices = [("", "Never")]
    else:
        days = max_lifetime / DAY
        longest = f"{days:g} days" if days >= 1 else f"{max_lifetime / 3600:g} hours"
        choices = [("", f"Longest allowed ({longest})")]
    choices += [
        (str(int(s)), label) for s, label in EXPIRY_CHOICES if not max_lifetime or s < max_lifetime
    ]
    return choices


def setup_snippets(request: web.Request) -> list[tuple[str, clientsetup.Snippet]]:
    """(scope, snippet) for every client of every enabled registry, with the placeholder."""
    config = request.config_dict[config_key]
    out: list[tuple[str, clientsetup.Snippet]] = []
    if config.npm_enabled:
        out += [("npm", s) for s in clientsetup.npm_snippets(config.public_url, SECRET_PLACEHOLDER)]
    if config.pypi_enabled:
        out += [
            ("pypi", s) for s in clientsetup.pypi_snippets(config.public_url, SECRET_PLACEHOLDER)
        ]
    return out


async def my_tokens(request: web.Request, caller: Caller) -> web.StreamResponse:
    """My tokens, the form that creates one, and the setup shown after creating it."""
    config = request.config_dict[config_key]
    found = await request.config_dict[store_key].list_tokens(
        user_id=caller.user.id, now=config.clock()
    )
    return render(
        request,
        "tokens.html",
        {
            "title": "My tokens",
            "nav": "tokens",
            "tokens": await token_rows(request, found),
            "snippets": setup_snippets(request),
            "placeholder": SECRET_PLACEHOLDER,
            "expiry_choices": expiry_choices(config.token_max_lifetime),
            "scopes": ALL_SCOPES,
            "public_url": str(config.public_url),
        },
        caller=caller,
    )


async def admin_tokens(request: web.Request, caller: Caller) -> web.StreamResponse:
    """Everyone's tokens; ``?email=`` keeps those whose owner's address contains the text."""
    query = request.query.get("email", "").strip()
    now = request.config_dict[config_key].clock()
    found = await request.config_dict[store_key].list_tokens(now=now)
    if query:
        needle = query.casefold()
        found = [t for t in found if needle in t.email.casefold()]
    return render(
        request,
        "admin_tokens.html",
        {
            "title": "Everyone's tokens",
            "nav": "admin",
            "query": query,
            "tokens": await token_rows(request, found),
        },
        caller=caller,
    )


def duration(seconds: float | None) -> str:
    """``3 days``, ``1 hour``, ``90 seconds``; ``off`` for 0 or None."""
    if not seconds:
        return "off"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    n = round(seconds)
    return f"{n} second{'' if n == 1 else 's'}"


async def blocklist(request: web.Request, caller: Caller) -> web.StreamResponse:
    """The supply-chain policy's state: the admin API's blocklist status, as a page."""
    # The admin API's own answer (chain status plus the breach mail queue), not a copy of it.
    status = with_iso_times(await blocklist_status_of(request))
    return render(
        request,
        "blocklist.html",
        {"title": "Blocklist", "nav": "blocklist", "status": status},
        caller=caller,
    )


USER_FILTERS = ("ecosystem", "package", "version", "since")


def download_rows(rows: list[DownloadRow]) -> list[dict[str, Any]]:
    return [
        {
            "ecosystem": r.download.ecosystem,
            "package": r.download.package,
            "version": r.download.version,
            "filename": r.download.filename,
            "downloaded_at": iso(r.download.downloaded_at),
            "token_name": r.token_name,
            "token_prefix": r.token_prefix,
            "email": r.email,
        }
        for r in rows
    ]


async def download_page(request: web.Request, caller: Caller, *, admin: bool) -> web.StreamResponse:
    """A page of download history: the caller's, or (admins) everyone's, filtered by the form."""
    # Fields left empty in the form mean "any".
    params = {k: v for k, v in request.query.items() if v.strip()}
    config = request.config_dict[config_key]
    context: dict[str, Any] = {
        "nav": "admin-downloads" if admin else "downloads",
        "admin": admin,
        "form": params,
        "error": None,
        "rows": [],
        "older": None,
        "history_days": config.download_history_days,
    }
    status = 200
    try:
        if admin:
            query = build_query(params, (*USER_FILTERS, "email"), email=inputs.normalize_email)
        else:
            query = replace(build_query(params, USER_FILTERS), user_id=caller.user.id)
    except InvalidInput as exc:
        context["error"] = str(exc)
        status = 400
    else:
        found = await history(
            request.config_dict[store_key], request.config_dict.get(recorder_key), query
        )
        context["rows"] = download_rows(found.rows)
        if found.next_cursor is not None:
            older = request.rel_url.with_query({**params, "cursor": found.next_cursor})
            context["older"] = str(older)
    if admin:
        what = " ".join(params[k] for k in ("package", "version") if k in params)
        context["title"] = f"Who downloaded {what}" if what else "Who downloaded what"
    else:
        context["title"] = "My downloads"
    return render(request, "downloads.html", context, caller=caller, status=status)


async def my_downloads(request: web.Request, caller: Caller) -> web.StreamResponse:
    return await download_page(request, caller, admin=False)


async def admin_downloads(request: web.Request, caller: Caller) -> web.StreamResponse:
    return await download_page(request, caller, admin=True)


def setup_pages(app: web.Application, base: str) -> None:
    app.router.add_get(f"{base}/-/downloads", page(my_downloads), name="web_downloads")
    app.router.add_get(
        f"{base}/-/admin/downloads", page(admin_downloads, admin=True), name="web_admin_downloads"
    )
    app.router.add_get(f"{base}/", page(my_tokens), name="web_home")
    app.router.add_get(f"{base}/-/admin", page(admin_tokens, admin=True), name="web_admin")
    app.router.add_get(
        f"{base}/-/admin/blocklist", page(blocklist, admin=True), name="web_blocklist"
    )
