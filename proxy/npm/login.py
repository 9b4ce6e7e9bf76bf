"""``npm login`` / ``npm adduser`` against pkgate: a clear answer saying how to get a token.

pkgate has no npm accounts: tokens come from its token API or its web page.  npm's web login
(``POST -/v1/login``) and its legacy login (``PUT -/user/org.couchdb.user:<name>``) are answered
before authentication (a user without a token must see the advice, not a 401 that sends npm
round in circles) with a 501 and the advice as the JSON ``error``, which npm prints.  A 501 is
neither retried by npm (a POST/PUT) nor mistaken for "web login not supported" (a 4xx, after
which npm would prompt for a username and password pkgate cannot take).
"""

from __future__ import annotations

from aiohttp import hdrs, web

from ..errors import json_error
from ..gate import EarlyAnswer
from ..settings import Settings

LOGIN_PATHS = ("-/v1/login", "-/user/org.couchdb.user:")
LOGIN_METHODS = frozenset({hdrs.METH_POST, hdrs.METH_PUT})


def login_advice(settings: Settings) -> str:
    api = f"{str(settings.base_url).rstrip('/')}/api/v1/tokens"
    return (
        "pkgate does not log in with npm: get a pkgate token from its web page at "
        f"{settings.base_url}/ or with curl -X POST -H 'Content-Type: application/json' "
        f'-d \'{{"email": "you@example.com"}}\' {api} (the token is mailed with the setup '
        "for npm), then put it in .npmrc as _authToken"
    )


def is_login(mount: str, raw_path: str, method: str) -> bool:
    if not raw_path.startswith(mount + "/"):
        return False
    rest = raw_path[len(mount) + 1 :]
    if method == hdrs.METH_POST and rest == LOGIN_PATHS[0]:
        return True
    return method == hdrs.METH_PUT and rest.startswith(LOGIN_PATHS[1])


def login_answer(settings: Settings, mount: str) -> EarlyAnswer:
    """The answer to npm's login requests on the npm mount ``mount`` (its raw path, no trailing
    /), run by the mount's gate before the throttles and authentication."""
    advice = login_advice(settings)

    def answer_login(request: web.Request) -> web.Response | None:
        # Asked for POSTs and PUTs only (LOGIN_METHODS): the GETs of an install skip it.
        if is_login(mount, request.raw_path.split("?", 1)[0], request.method):
            return json_error(501, advice)
        return None

    return answer_login
