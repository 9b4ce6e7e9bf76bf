"""aiohttp's private API that ``proxy.compat`` relies on: this test fails loudly, naming what moved,
when an aiohttp upgrade changes any of it."""

from __future__ import annotations

import inspect

import aiohttp
import pytest
from aiohttp import web

from proxy import compat


async def _noop(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


def where(obj: object, attr: str) -> str:
    return f"aiohttp {aiohttp.__version__}: {getattr(obj, '__name__', obj)}.{attr}"


@pytest.mark.parametrize(("owner", "attr"), compat.PRIVATE_API, ids=lambda v: str(v))
async def test_compat__private_attribute_still_exists(owner: type, attr: str) -> None:
    instances: dict[type, object] = {
        web.Server: web.Server(_noop),
        web.StreamResponse: web.StreamResponse(),
    }
    target = instances.get(owner, owner)
    assert hasattr(target, attr), f"{where(owner, attr)} is gone: update proxy/compat.py"


def test_compat__signatures_are_the_ones_overridden() -> None:
    expected = {
        (web.FileResponse, "_sendfile"): ["self", "request", "fobj", "offset", "count"],
        (web.AppRunner, "_make_server"): ["self"],
        (web.Application, "_add_subapp"): ["self", "resource_factory", "subapp"],
    }
    for (owner, attr), params in expected.items():
        found = list(inspect.signature(getattr(owner, attr)).parameters)
        assert found == params, f"{where(owner, attr)} takes {found}: update proxy/compat.py"
    assert inspect.iscoroutinefunction(web.FileResponse._sendfile)
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)


async def test_compat__server_kwargs_are_the_connection_options() -> None:
    server = web.Server(_noop, access_log=None, keepalive_timeout=7.0)
    assert server._kwargs.get("keepalive_timeout") == 7.0, where(web.Server, "_kwargs")
    copy = compat.server_with_handler(server, compat.SafeServer.handler_class)
    assert copy.request_handler is server.request_handler
