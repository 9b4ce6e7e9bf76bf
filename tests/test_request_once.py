"""What a request carries is worked out once: the client address is resolved once for the
throttles, the limits and the access log together (issue 12)."""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest

from tests.conftest import StartServer
from tokenapi import clientip


async def test_client_ip__resolved_once_per_request(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    resolve = clientip._resolve

    def counting(request: object, networks: object) -> str:
        calls.append(request.path)  # type: ignore[attr-defined]
        return resolve(request, networks)  # type: ignore[arg-type]

    monkeypatch.setattr(clientip, "_resolve", counting)
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
