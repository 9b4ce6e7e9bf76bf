"""The headers every web page and asset carries, and who is signed in.

Pages run no inline script or style: everything comes from pkgate's own ``/-/static/`` files,
so the policy can be strict.  Pages that may show personal data (or, for a moment, a secret in
the browser's memory) are never stored by any cache.
"""

from __future__ import annotations

from aiohttp import web

from tokenapi.keys import store_key
from tokenapi.webauth import SESSION_COOKIE, Caller, session_digest

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def secure_page(response: web.StreamResponse, *, https: bool) -> web.StreamResponse:
    """Add the security headers and forbid caching (pages show personal data)."""
    response.headers.update(SECURITY_HEADERS)
    if https:
        # Browsers honour (and otherwise complain about) this only on trustworthy origins.
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


async def signed_in(request: web.Request) -> Caller | None:
    """The user of the request's session cookie, or None (pages never accept Bearer tokens)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    digest = session_digest(cookie)
    found = await request.config_dict[store_key].session_user(digest)
    if found is None:
        return None
    user, expires_at = found
    return Caller(user, session_digest=digest, session_expires_at=expires_at)
