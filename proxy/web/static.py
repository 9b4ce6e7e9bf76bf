"""The page's own assets (script, style sheet, icon), read once from the package and served
from memory under ``<public path>/-/static/``.

Each URL written into a page carries a digest of the file (``?v=``), so a browser may keep a
file for a year when the digest matches and revalidates (ETag) otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from .security import SECURITY_HEADERS

TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    digest: str


class StaticFiles:
    """Every file of ``proxy/web/static`` by name."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # e.g. "/reg/-/static"
        self.files: dict[str, Asset] = {}
        for entry in resources.files(__package__).joinpath("static").iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in TYPES:
                body = entry.read_bytes()
                digest = hashlib.sha256(body).hexdigest()[:16]
                self.files[entry.name] = Asset(body, TYPES[suffix], digest)

    def url(self, name: str) -> str:
        """The URL of a file, with its digest."""
        return f"{self.prefix}/{name}?v={self.files[name].digest}"

    async def handle(self, request: web.Request) -> web.Response:
        asset = self.files.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        etag = f'"{asset.digest}"'
        headers = {**SECURITY_HEADERS, "ETag": etag}
        if request.query.get("v") == asset.digest:
            headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            headers["Cache-Control"] = "no-cache"
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, headers=headers)
