"""The Python simple index endpoint over real HTTP, against a fake upstream index on loopback."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.registry.upstream import USER_AGENT
from tests.conftest import RunningServer, StartServer, free_port
from tests.pypi.conftest import file_link, start_pkgate
from tests.upstreams.pypi_index import (
    JSON_TYPE,
    PypiIndex,
    serve_index,
)
from tokenapi.issue import ensure_user, issue_token

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
POETRY_ACCEPT = "application/vnd.pypi.simple.v1+json, */*;q=0.1"


def basic(login: str, password: str = "") -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(login, password)}


def simple(server: RunningServer, path: str = "") -> URL:
    return URL(f"{server.url}/pypi/simple/{path}", encoded=True)


async def get_json(http: aiohttp.ClientSession, url: URL) -> dict[str, Any]:
    async with http.get(url, headers={"Accept": UV_ACCEPT}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == JSON_TYPE
        result: dict[str, Any] = await resp.json(content_type=None)
        return result


async def get_text(http: aiohttp.ClientSession, url: URL, accept: str = "text/html") -> str:
    async with http.get(url, headers={"Accept": accept}) as resp:
        assert resp.status == 200
        return await resp.text()


def foreign_origins(index: PypiIndex) -> list[str]:
    return [str(u) for u in index.urls.values()]


# --- pages -----------------------------------------------------------------------------------


async def test_simple_project__json_keeps_pep691_700_714_fields(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    doc = await get_json(http, simple(server, "demo-app/"))
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["name"] == "demo-app"
    assert doc["versions"] == ["0.9.0", "1.0.0", "2.0.0", "3.0.0"]
    files = {f["filename"]: f for f in doc["files"]}
    # 0.9.0 lives on an origin pkgate is not configured for: dropped, not passed through.
    assert sorted(files) == [
        "demo_app-1.0.0-py3-none-any.whl",
        "demo_app-1.0.0.tar.gz",
        "demo_app-2.0.0-py3-none-any.whl",
        "demo_app-3.0.0-py3-none-any.whl",
    ]
    for name, entry in files.items():
        pub = index.find(name)
        assert entry["url"].startswith(f"{server.url}/pypi/files/1/packages/")
        assert entry["url"].endswith("/" + name)
        assert entry["hashes"] == {"sha256": pub.dist.sha256}
        assert entry["size"] == len(pub.dist.data)
        assert entry["upload-time"] == "2024-01-02T03:04:05.000000Z"
        assert "provenance" not in entry
        assert "dist-info-metadata" not in entry
        assert "data-dist-info-metadata" not in entry
    wheel = files["demo_app-1.0.0-py3-none-any.whl"]
    assert wheel["core-metadata"] == {"sha256": index.find(wheel["filename"]).dist.metadata_sha256}
    assert "yanked" not in wheel
    assert "core-metadata" not in files["demo_app-1.0.0.tar.gz"]
    assert files["demo_app-2.0.0-py3-none-any.whl"]["yanked"] == "broken build"
    assert files["demo_app-3.0.0-py3-none-any.whl"]["requires-python"] == ">=4"


async def test_simple_project__relative_upstream_links_resolve_to_index_origin(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    doc = await get_json(http, simple(server, "tinydep/"))
    urls = {f["filename"]: f["url"] for f in doc["files"]}
    assert urls == {
        "tinydep-1.0.0-py3-none-any.whl": (
            f"{server.url}/pypi/files/0/packages/tinydep/tinydep-1.0.0-py3-none-any.whl"
        ),
        "tinydep-1.0.0.tar.gz": f"{server.url}/pypi/files/0/packages/tinydep/tinydep-1.0.0.tar.gz",
    }


async def test_simple_project__html_keeps_hashes_and_data_attributes(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    page = await get_text(http, simple(server, "demo-app/"))
    three = index.find("demo_app-3.0.0-py3-none-any.whl")
    one = index.find("demo_app-1.0.0-py3-none-any.whl")
    assert '<meta name="pypi:repository-version" content="1.1">' in page
    assert f"#sha256={three.dist.sha256}" in page
    assert 'data-requires-python="&gt;=4"' in page
    assert 'data-yanked="broken build"' in page
    meta = f"sha256={one.dist.metadata_sha256}"
    assert f'data-core-metadata="{meta}" data-dist-info-metadata="{meta}"' in page
    assert "demo_app-0.9.0" not in page
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert len(hrefs) == 4
    assert all(h.startswith(f"{server.url}/pypi/files/1/packages/") for h in hrefs)


async def test_simple_project__html_upstream_is_served_as_json_too(
    start_server: StartServer,
) -> None:
    async with serve_index(page_format="html", gzip_pages=False) as index:
        server = await start_pkgate(start_server, index)
        async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
            doc = await get_json(http, simple(server, "demo-app/"))
    # An HTML upstream cannot tell sizes, so pkgate claims only API 1.0.
    assert doc["meta"] == {"api-version": "1.0"}
    files = {f["filename"]: f for f in doc["files"]}
    assert len(files) == 4
    two = files["demo_app-2.0.0-py3-none-any.whl"]
    assert two["yanked"] == "broken build"
    assert two["hashes"] == {"sha256": index.find(two["filename"]).dist.sha256}
    assert files["demo_app-3.0.0-py3-none-any.whl"]["requires-python"] == ">=4"
    assert files["demo_app-1.0.0-py3-none-any.whl"]["core-metadata"] == {
        "sha256": index.find("demo_app-1.0.0-py3-none-any.whl").dist.metadata_sha256
    }


async def test_simple_page__links_only_to_pkgate(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    for path in ("", "demo-app/", "tinydep/"):
        for accept in (UV_ACCEPT, "text/html"):
            body = await get_text(http, simple(server, path), accept)
            origins = set(re.findall(r"https?://[^/\"'<>]+", body))
            assert origins <= {str(server.url)}, (path, origins)
            for upstream in foreign_origins(index):
                assert upstream not in body


async def test_simple_root__lists_projects_with_relative_links(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    doc = await get_json(http, simple(server))
    assert doc == {
        "meta": {"api-version": "1.1"},
        "projects": [{"name": "Demo.App"}, {"name": "tinydep"}],
    }
    page = await get_text(http, simple(server))
    assert '<a href="demo-app/">Demo.App</a>' in page
    assert '<a href="tinydep/">tinydep</a>' in page


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/html; charset=utf-8"),
        ("*/*", "text/html; charset=utf-8"),
        (PIP_ACCEPT, JSON_TYPE),
        (UV_ACCEPT, JSON_TYPE),
        (POETRY_ACCEPT, JSON_TYPE),
        (
            "application/vnd.pypi.simple.v1+html",
            "application/vnd.pypi.simple.v1+html; charset=utf-8",
        ),
        ("text/html;q=0.5, application/vnd.pypi.simple.v1+json;q=0.6", JSON_TYPE),
        (
            "application/vnd.pypi.simple.v1+json;q=0.4, application/*;q=0.5",
            "application/vnd.pypi.simple.v1+html; charset=utf-8",
        ),
        ("application/vnd.pypi.simple.v1+json;q=0, */*", "text/html; charset=utf-8"),
        ("Application/Vnd.Pypi.Simple.V1+JSON", JSON_TYPE),
    ],
)
async def test_simple_negotiation__honours_q_values_and_answers_exact_type(
    server: RunningServer, http: aiohttp.ClientSession, accept: str | None, expected: str
) -> None:
    headers = {} if accept is None else {"Accept": accept}
    async with http.get(simple(server, "tinydep/"), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == expected
        assert resp.headers["Vary"] == "Accept"
        assert resp.headers["Cache-Control"] == "max-age=600"
        assert "Content-Encoding" not in resp.headers


async def test_simple_negotiation__nothing_acceptable_is_406(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(simple(server, "tinydep/"), headers={"Accept": "image/png"}) as resp:
        assert resp.status == 406
        assert resp.headers["Vary"] == "Accept"
        assert "error" in await resp.json()


async def test_simple_page__etag_revalidates_with_304(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(simple(server, "tinydep/"), headers={"Accept": JSON_TYPE}) as resp:
        etag = resp.headers["ETag"]
    headers = {"Accept": JSON_TYPE, "If-None-Match": etag}
    async with http.get(simple(server, "tinydep/"), headers=headers) as resp:
        assert resp.status == 304
    async with http.get(
        simple(server, "tinydep/"), headers={"Accept": "text/html", "If-None-Match": etag}
    ) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("pypi/simple", "simple/"),
        ("pypi/simple/demo-app", "demo-app/"),
        ("pypi/simple/Demo.App", "demo-app/"),
        ("pypi/simple/Demo.App/", "../demo-app/"),
        ("pypi/simple/demo__app/", "../demo-app/"),
        ("pypi/simple/TINYDEP/", "../tinydep/"),
        ("pypi/simple/demo%2Eapp/", "../demo-app/"),
    ],
)
async def test_simple_redirect__relative_to_normalised_form(
    server: RunningServer, http: aiohttp.ClientSession, path: str, location: str
) -> None:
    url = URL(f"{server.url}/{path}", encoded=True)
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"] == location
    async with http.get(url, headers={"Accept": JSON_TYPE}) as resp:
        assert resp.status == 200
        assert str(resp.url).endswith("/")
        assert str(resp.url).startswith(str(server.url))


@pytest.mark.parametrize("name", ["-bad-", "a%20b", "x..", "%C3%A9t%C3%A9"])
async def test_simple_project__invalid_name_is_404(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession, name: str
) -> None:
    async with http.get(simple(server, name + "/")) as resp:
        assert resp.status == 404
        assert "error" in await resp.json()
    assert index.requests == []


async def test_simple_project__unknown_project_is_404(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(simple(server, "no-such-project/")) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "error" in await resp.json()


# --- authentication and upstream hygiene ---------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["simple/", "simple/demo-app/", "files/0/packages/tinydep/tinydep-1.0.0.tar.gz"]
)
async def test_simple_auth__missing_token_is_401_basic(
    server: RunningServer, index: PypiIndex, path: str
) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/pypi/{path}") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="pkgate"'
        assert "error" in await resp.json()
    assert index.requests == []


async def test_simple_auth__revoked_token_is_401(server: RunningServer, index: PypiIndex) -> None:
    user = await ensure_user(server.store, "rev@example.com")
    token, secret = await issue_token(server.store, user, name="rev")
    url = simple(server, "tinydep/")
    async with aiohttp.ClientSession(headers=basic("token", secret)) as http:
        async with http.get(url) as resp:
            assert resp.status == 200
        server.validator.forget(await server.store.revoke_token(token.id))
        index.clear()
        async with http.get(url) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="pkgate"'
    assert index.requests == []


async def test_simple_auth__token_as_username_is_accepted(server: RunningServer) -> None:
    secret = await server.token()
    headers = basic(secret, "")
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(simple(server, "tinydep/")) as resp,
    ):
        assert resp.status == 200


async def test_simple_upstream__never_sees_client_credentials_or_cookies(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    headers = {"Cookie": "session=secret", "Accept": JSON_TYPE}
    url = await file_link(http, server, "demo_app-1.0.0-py3-none-any.whl")
    async with http.get(simple(server, "demo-app/"), headers=headers) as resp:
        assert resp.status == 200
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200
    assert index.requests
    assert index.violations == []
    for recorded in index.requests:
        assert recorded.headers["User-Agent"] == USER_AGENT
        assert not {"authorization", "cookie"} & {h.lower() for h in recorded.headers}
    assert all(r.server != "foreign" for r in index.requests)


async def test_simple_upstream__gzip_page_is_decoded(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    doc = await get_json(http, simple(server, "tinydep/"))
    assert len(doc["files"]) == 2
    page_request = next(r for r in index.requests if r.path == "/simple/tinydep/")
    assert "gzip" in page_request.headers["Accept-Encoding"]


# --- upstream failures -----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "expected"), [(404, 404), (410, 404), (500, 502), (503, 502)])
async def test_simple_upstream__status_is_mapped(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession, code: int, expected: int
) -> None:
    index.overrides[("index", "/simple/tinydep/")] = index.status(code)
    async with http.get(simple(server, "tinydep/")) as resp:
        assert resp.status == expected
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "error" in await resp.json()


async def test_simple_upstream__timeout_is_504(start_server: StartServer, index: PypiIndex) -> None:
    server = await start_pkgate(start_server, index, upstream_timeout=0.3)
    index.overrides[("index", "/simple/tinydep/")] = index.hang
    headers = basic(await server.token())
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(simple(server, "tinydep/")) as resp,
    ):
        assert resp.status == 504
        assert "timed out" in (await resp.json())["error"]


async def test_simple_upstream__refused_connection_is_502(start_server: StartServer) -> None:
    port = free_port()
    server = await start_server(pypi_upstream=f"http://127.0.0.1:{port}/simple/")
    headers = basic(await server.token())
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(simple(server, "tinydep/")) as resp,
    ):
        assert resp.status == 502
        body = await resp.json()
    assert "connection failed" in body["error"]
    assert str(port) not in body["error"]


# --- mounts ----------------------------------------------------------------------------------


async def test_simple_vhost__links_and_files_on_the_index_host(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, pypi_host="pypi.test")
    host = f"pypi.test:{server.url.port}"
    headers = {**basic(await server.token()), "Host": host, "Accept": JSON_TYPE}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(server.url / "simple" / "demo-app" / "") as resp:
            assert resp.status == 200
            doc = await resp.json(content_type=None)
        wheel = next(f for f in doc["files"] if f["filename"].endswith("1.0.0-py3-none-any.whl"))
        assert wheel["url"].startswith(f"http://{host}/files/1/packages/")
        path = URL(wheel["url"]).raw_path
        async with http.get(URL(f"{server.url}{path}", encoded=True)) as resp:
            assert resp.status == 200
            assert await resp.read() == index.find(wheel["filename"]).dist.data
