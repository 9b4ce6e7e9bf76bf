"""Worked out once: the client address per request (for the throttles, the limits and the access
log together) and the mapping from failures to answers for the whole server (issue 12)."""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest

from tests.conftest import StartServer
from tokenapi import clientip


async def test_client_ip__resolved_once_per_request(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy import ratelimit

    calls: list[str] = []
    resolve = clientip.address_of

    def counting(request: object, networks: object) -> str:
        calls.append(request.path)  # type: ignore[attr-defined]
        return resolve(request, networks)  # type: ignore[arg-type]

    # Every caller: client_ip (the API, the access log) and the registry throttle.
    monkeypatch.setattr(clientip, "address_of", counting)
    monkeypatch.setattr(ratelimit, "address_of", counting)
    server = await start_server(
        npm_upstream="http://127.0.0.1:9/", trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    secret = await server.token()
    headers = {"Authorization": f"Bearer {secret}", "X-Forwarded-For": "203.0.113.7"}
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url / "npm/-/whoami", headers=headers) as resp:
            assert resp.status == 200
        calls.clear()
        async with http.get(server.url / "npm/-/whoami", headers=headers) as resp:
            assert resp.status == 200
    assert calls == ["/npm/-/whoami"]


def test_failures__one_mapping_for_the_api_and_the_registries() -> None:
    from proxy import errors  # registers the registry's own failures
    from proxy.registry.upstream import UpstreamError
    from tokenapi.errors import StoreUnavailable
    from tokenapi.failures import STORE_UNAVAILABLE, failure_for

    assert errors.json_error is not None
    unavailable = failure_for(StoreUnavailable("disk full"))
    assert unavailable is not None
    assert (unavailable.status, unavailable.message) == (503, STORE_UNAVAILABLE)
    upstream = failure_for(UpstreamError(504, "npm upstream timed out"))
    assert upstream is not None
    assert (upstream.status, upstream.message) == (504, "npm upstream timed out")
    assert failure_for(RuntimeError("unexpected")) is None


async def test_api_auth__enforced_by_the_route_declaration(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from aiohttp import web

    from tokenapi import named_api

    async def forgetful(request: web.Request) -> web.StreamResponse:
        return web.json_response({"tokens": "a handler that never checks"})

    declared = [e for e in named_api.ENDPOINTS if e.method == "GET" and e.auth != "none"]
    assert declared
    patched = [replace(e, handler=forgetful) if e in declared else e for e in named_api.ENDPOINTS]
    monkeypatch.setattr(named_api, "ENDPOINTS", patched)
    server = await start_server(npm_upstream="http://127.0.0.1:9/")
    secret = await server.token()
    async with aiohttp.ClientSession() as http:
        for endpoint in declared:
            url = server.url / ("api" + endpoint.path).lstrip("/")
            async with http.get(url) as resp:
                assert resp.status == 401
            async with http.get(url, headers={"Authorization": f"Bearer {secret}"}) as resp:
                assert resp.status == 200
