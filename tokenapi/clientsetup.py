"""Ready-to-paste client configuration for a secret: npm, yarn, pnpm, bun, pip, uv and poetry.

Every snippet is built from the public URL (never from a request) and only for the ecosystems the
server serves.  The layout follows ``reference/client-protocols.md``: ``<P>/npm/`` for the npm
family and ``<P>/pypi/simple/`` for the Python clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

INDEX_NAME = "pkgate"


@dataclass(frozen=True, slots=True)
class Snippet:
    client: str  # npm, yarn, yarn classic, pnpm, bun, pip, uv, poetry
    where: str  # the file or shell the text goes into
    text: str


def npm_url(public_url: URL) -> str:
    """``<P>/npm/``."""
    return f"{str(public_url).rstrip('/')}/npm/"


def pypi_url(public_url: URL) -> str:
    """``<P>/pypi/simple/``."""
    return f"{str(public_url).rstrip('/')}/pypi/simple/"


def npmrc_auth_key(public_url: URL) -> str:
    """The ``//host[:port]/path/npm/`` key npm matches credentials against."""
    host = public_url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{public_url.explicit_port}" if public_url.explicit_port is not None else ""
    return f"//{host}{port}{public_url.raw_path.rstrip('/')}/npm/"


def pypi_url_with_token(public_url: URL, secret: str) -> str:
    """``<P>/pypi/simple/`` with ``token:<secret>@`` before its host (base62: nothing to escape)."""
    scheme, _, rest = pypi_url(public_url).partition("://")
    return f"{scheme}://token:{secret}@{rest}"


def npm_snippets(public_url: URL, secret: str) -> list[Snippet]:
    registry = npm_url(public_url)
    npmrc = f"registry={registry}\n{npmrc_auth_key(public_url)}:_authToken={secret}\n"
    yarnrc = (
        f'npmRegistryServer: "{registry.rstrip("/")}"\n'
        "npmAlwaysAuth: true\n"
        f'npmAuthToken: "{secret}"\n'
    )
    if public_url.scheme == "http":
        # yarn berry refuses plain http unless the host is listed (YN0081).
        yarnrc += f'unsafeHttpWhitelist:\n  - "{public_url.host}"\n'
    # yarn classic reads npm's file, but sends the token only with always-auth (npm 11 warns
    # that it does not know that key, and ignores it).
    auth_key = npmrc_auth_key(public_url)
    yarn_classic = (
        f"registry={registry}\n{auth_key}:_authToken={secret}\n{auth_key}:always-auth=true\n"
    )
    bunfig = f'[install]\nregistry = {{ url = "{registry}", token = "{secret}" }}\n'
    return [
        Snippet("npm", "~/.npmrc (or .npmrc in your project)", npmrc),
        Snippet("yarn", ".yarnrc.yml (yarn 2+)", yarnrc),
        Snippet(
            "yarn classic",
            ".npmrc in your project (yarn 1; npm warns about always-auth, which only yarn 1 reads)",
            yarn_classic,
        ),
        Snippet("pnpm", "~/.npmrc (or .npmrc in your project)", npmrc),
        Snippet("bun", "bunfig.toml", bunfig),
    ]


def pypi_snippets(public_url: URL, secret: str) -> list[Snippet]:
    index = pypi_url(public_url)
    with_token = pypi_url_with_token(public_url, secret)
    pip = f"pip config set global.index-url {with_token}\n# or: export PIP_INDEX_URL={with_token}\n"
    env = INDEX_NAME.upper()
    uv = (
        "# pyproject.toml (or uv.toml without the tool.uv prefix)\n"
        "[[tool.uv.index]]\n"
        f'name = "{INDEX_NAME}"\n'
        f'url = "{index}"\n'
        "default = true\n"
        'authenticate = "always"\n'
        "\n"
        f"# shell\nexport UV_INDEX_{env}_USERNAME=token\nexport UV_INDEX_{env}_PASSWORD={secret}\n"
    )
    poetry = (
        f"poetry source add --priority=primary {INDEX_NAME} {index}\n"
        f"poetry config http-basic.{INDEX_NAME} token {secret}\n"
    )
    return [
        Snippet("pip", "shell", pip),
        Snippet("uv", "pyproject.toml and shell", uv),
        Snippet("poetry", "shell, in your project", poetry),
    ]


def snippets(
    public_url: URL, secret: str, *, npm_enabled: bool = True, pypi_enabled: bool = True
) -> list[Snippet]:
    """The snippets for every ecosystem the server has enabled."""
    out: list[Snippet] = []
    if npm_enabled:
        out.extend(npm_snippets(public_url, secret))
    if pypi_enabled:
        out.extend(pypi_snippets(public_url, secret))
    return out
