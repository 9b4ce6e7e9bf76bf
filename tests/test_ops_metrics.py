import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from proxy.compat import front_key
from proxy.keys import REQUEST_FACTS, RegistryFacts, note_cache
from proxy.metrics import Metrics, front, metrics_key
from proxy.registry.upstream import Upstream, UpstreamError
from tests.conftest import RunningServer, StartServer, free_port, serve_app

UNREACHABLE = "http://127.0.0.1:9/"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def scrape(url: URL) -> str:
    async with aiohttp.ClientSession() as http, http.get(url / "metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


async def get(url: URL, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        await resp.read()
        return resp.status


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(npm_upstream=UNREACHABLE, pypi_upstream=UNREACHABLE + "simple/")


async def test_metrics__exposes_pkgate_series_in_prometheus_text(server: RunningServer) -> None:
    text = await scrape(server.url)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "pkgate_requests",
        "pkgate_auth",
        "pkgate_upstream_request_duration_seconds",
        "pkgate_upstream_errors",
        "pkgate_cache",
        "pkgate_last_used_flushes",
        "pkgate_last_used_last_batch_size",
        "pkgate_tokens_active",
    } <= names
    assert all(n.startswith("pkgate_") for n in names)


async def test_metrics__counts_requests_by_ecosystem_route_and_status(
    server: RunningServer,
) -> None:
    assert await get(server.url / "npm" / "-" / "whoami") == 401
    assert await get(server.url / "npm" / "-" / "whoami") == 401
    assert await get(server.url / "healthz") == 200
    text = await scrape(server.url)
    assert sample(text, "pkgate_requests_total", ecosystem="npm", status="401") == 2
    assert sample(text, "pkgate_requests_total", route="/healthz", status="200") == 1


async def test_metrics__request_durations_are_a_histogram_per_ecosystem(
    server: RunningServer,
) -> None:
    for _ in range(3):
        assert await get(server.url / "npm" / "-" / "whoami") == 401
    assert await get(server.url / "pypi" / "simple" / "x" / "") == 401
    text = await scrape(server.url)
    name = "pkgate_request_duration_seconds"
    assert sample(text, f"{name}_count", ecosystem="npm") == 3
    assert sample(text, f"{name}_count", ecosystem="pypi") == 1
    assert 0 < sample(text, f"{name}_sum", ecosystem="npm") < 60
    buckets = [
        (s.labels["le"], s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == f"{name}_bucket" and s.labels.get("ecosystem") == "npm"
    ]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1] == ("+Inf", 3)


async def test_metrics__counts_each_auth_outcome(server: RunningServer) -> None:
    good = await server.token("a@example.com")
    dead = await server.token("b@example.com")
    token_id = (await server.store.list_tokens(email="b@example.com"))[0].id
    await server.store.revoke_token(token_id)
    whoami = server.url / "npm" / "-" / "whoami"
    assert await get(whoami, {"Authorization": f"Bearer {good}"}) == 200
    assert await get(whoami) == 401
    assert await get(whoami, {"Authorization": "Bearer pkg_nonsense"}) == 401
    assert await get(whoami, {"Authorization": "Basic %%%"}) == 401
    assert await get(whoami, {"Authorization": f"Bearer {dead}"}) == 401
    text = await scrape(server.url)
    assert sample(text, "pkgate_auth_total", ecosystem="npm", outcome="ok") == 1
    assert sample(text, "pkgate_auth_total", ecosystem="npm", outcome="missing") == 1
    assert sample(text, "pkgate_auth_total", ecosystem="npm", outcome="invalid") == 2
    assert sample(text, "pkgate_auth_total", ecosystem="npm", outcome="revoked") == 1


async def test_metrics__tokens_active_is_read_from_the_store(server: RunningServer) -> None:
    await server.token("a@example.com")
    await server.token("b@example.com")
    await server.token("c@example.com")
    token_id = (await server.store.list_tokens(email="c@example.com"))[0].id
    await server.store.revoke_token(token_id)
    assert sample(await scrape(server.url), "pkgate_tokens_active") == 2


async def test_metrics__last_used_flushes_and_batch_size(server: RunningServer) -> None:
    secrets = [await server.token(f"u{i}@example.com") for i in range(3)]
    for secret in secrets:
        assert await get(server.url / "npm/-/whoami", {"Authorization": f"Bearer {secret}"}) == 200
    await server.recorder.flush()
    text = await scrape(server.url)
    assert sample(text, "pkgate_last_used_flushes_total") >= 1
    assert sample(text, "pkgate_last_used_last_batch_size") == 3


async def test_metrics__route_label_is_the_template_not_the_path() -> None:
    metrics = Metrics()
    app = web.Application()
    app[front_key] = front(metrics)
    app[metrics_key] = metrics

    async def thing(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/things/{name}", thing)
    runner, url = await serve_app(app)
    try:
        assert await get(url / "things" / "pkg_secret-looking-value") == 200
        assert await get(url / "nowhere" / "pkg_other") == 404
    finally:
        await runner.cleanup()
    exposition = generate_latest(app[metrics_key].registry).decode()
    assert sample(exposition, "pkgate_requests_total", route="/things/{name}", status="200") == 1
    assert sample(exposition, "pkgate_requests_total", route="unmatched", status="404") == 1
    assert "pkg_secret-looking-value" not in exposition
    assert "pkg_other" not in exposition


async def test_metrics__cache_outcome_set_by_a_handler_is_counted() -> None:
    metrics = Metrics()
    app = web.Application()
    app[front_key] = front(metrics)

    async def cached(request: web.Request) -> web.Response:
        request[REQUEST_FACTS] = RegistryFacts.of("npm")  # what a registry gate puts on requests
        note_cache(request, request.match_info["outcome"])
        return web.Response(text="ok")

    app.router.add_get("/{outcome}", cached)
    runner, url = await serve_app(app)
    try:
        for outcome in ("hit", "hit", "miss", "stale", "bogus"):
            assert await get(url / outcome) == 200
    finally:
        await runner.cleanup()
    text = generate_latest(metrics.registry).decode()
    assert sample(text, "pkgate_cache_total", ecosystem="npm", outcome="hit") == 2
    assert sample(text, "pkgate_cache_total", ecosystem="npm", outcome="miss") == 1
    assert sample(text, "pkgate_cache_total", ecosystem="npm", outcome="stale") == 1
    assert "bogus" not in text


async def test_metrics__each_app_has_its_own_registry(start_server: StartServer) -> None:
    one = await start_server(npm_upstream=UNREACHABLE)
    two = await start_server(npm_upstream=UNREACHABLE)
    assert await get(one.url / "npm/-/whoami") == 401
    assert sample(await scrape(one.url), "pkgate_requests_total", ecosystem="npm") == 1
    assert sample(await scrape(two.url), "pkgate_requests_total", ecosystem="npm") == 0


async def test_metrics__upstream_latency_and_errors() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    fake = web.Application()
    fake.router.add_get("/ok", ok)
    fake.router.add_get("/broken", broken)
    runner, url = await serve_app(fake)
    dead = URL(f"http://127.0.0.1:{free_port()}")
    metrics = Metrics()
    upstream = Upstream([str(url), str(dead)], observer=metrics)
    await upstream.start()
    try:
        async with upstream.request("GET", url / "ok") as resp:
            assert resp.status == 200
        async with upstream.request("GET", url / "broken") as resp:
            assert resp.status == 503
        with pytest.raises(UpstreamError):
            async with upstream.request("GET", dead / "x"):
                pass
    finally:
        await upstream.close()
        await runner.cleanup()
    text = generate_latest(metrics.registry).decode()
    origin = str(url.origin())
    count = "pkgate_upstream_request_duration_seconds_count"
    assert sample(text, count, origin=origin) == 2
    assert sample(text, "pkgate_upstream_errors_total", origin=origin, kind="status") == 1
    # A connection failure is retried once for GET, so two attempts failed.
    assert (
        sample(text, "pkgate_upstream_errors_total", origin=str(dead.origin()), kind="connection")
        == 2
    )
