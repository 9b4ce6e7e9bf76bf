"""The application factory: one aiohttp app serving the token API, the registries and ops routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

import tokenapi.http
from tokenapi.config import TokenApiConfig

from . import breachwire, compat
from .auth import NPM_CHALLENGE, PYPI_CHALLENGE
from .history import download_recorder
from .keys import artifact_cache_key, metadata_cache_key, settings_key, upstream_key
from .metrics import Metrics, front, metrics_key
from .npm import routes as npm
from .ops import setup_ops
from .pypi import routes as simple
from .ratelimit import setup_registry_limits
from .registry import decode
from .registry.artifacts import ArtifactCache
from .registry.metacache import MetadataCache
from .registry.metadisk import MetadataDisk
from .registry.pipeline import Registry, registry_key
from .registry.upstream import Upstream
from .settings import Settings
from .supplychain import admin as supplychain_admin
from .supplychain import service as supplychain
from .vhosts import mount_registry
from .web import setup_web

log = logging.getLogger(__name__)

CLIENT_MAX_SIZE = 1024 * 1024


def token_api_config(settings: Settings) -> TokenApiConfig:
    return TokenApiConfig(
        database=settings.database,
        database_pool_size=settings.database_pool_size,
        public_url=settings.base_url,
        outbox_dir=settings.outbox_dir,
        token_cache_ttl=settings.token_cache_ttl,
        last_used_flush=settings.last_used_flush,
        smtp_url=settings.smtp_url,
        mail_from=settings.mail_from,
        npm_enabled=settings.npm_upstream is not None,
        pypi_enabled=settings.pypi_upstream is not None,
        trusted_proxies=settings.trusted_proxies,
        register_per_email=settings.register_limit_email,
        register_per_ip=settings.register_limit_ip,
        reset_per_email=settings.reset_limit_email,
        reset_per_ip=settings.reset_limit_ip,
        token_create_per_user=settings.token_create_limit,
        login_failures=settings.login_limit,
        session_lifetime=settings.session_lifetime,
        token_max_lifetime=settings.token_max_lifetime,
        download_history_days=settings.download_history_days,
        oidc_issuers=settings.oidc_issuers,
        oidc_limit_ip=settings.oidc_limit_ip,
    )


def upstream_origins(settings: Settings) -> list[str]:
    origins = [u for u in (settings.npm_upstream, settings.pypi_upstream) if u]
    origins.extend(settings.pypi_files_upstream)
    return origins


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared upstream client session, closed last."""
    settings = app[settings_key]
    upstream = Upstream(
        upstream_origins(settings),
        timeout=settings.upstream_timeout,
        connect_timeout=settings.upstream_connect_timeout,
        connections=settings.upstream_connections,
        deadlines={
            "metadata": settings.upstream_metadata_deadline,
            "artifact": settings.upstream_artifact_deadline,
        },
        observer=app[metrics_key],
    )
    await upstream.start()
    app[upstream_key] = upstream
    try:
        yield
    finally:
        await upstream.close()


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """The metadata cache (memory) and the artifact cache (disk, index rebuilt by a scan)."""
    settings = app[settings_key]
    metadata = app[metadata_cache_key] = MetadataCache(
        max_bytes=settings.metadata_cache_bytes,
        ttl=settings.metadata_ttl,
        negative_ttl=settings.metadata_negative_ttl,
        stale_max=settings.metadata_stale_max,
        enabled=settings.cache,
    )
    if metadata.enabled and settings.metadata_disk_bytes > 0:
        disk = MetadataDisk(
            settings.metadata_dir,
            settings.metadata_disk_bytes,
            settings.metadata_ttl,
            settings.metadata_stale_max,
        )
        try:
            await disk.start()
            metadata.disk = disk
        except OSError as exc:
            log.warning("metadata disk cache off: cannot use %s (%s)", settings.metadata_dir, exc)
            await disk.close()
    try:
        artifacts = ArtifactCache(
            settings.artifact_dir,
            settings.artifact_cache_bytes if settings.cache else 0,
            memory_bytes=settings.artifact_memory_bytes,
        )
        await artifacts.start()
        app[artifact_cache_key] = artifacts
        yield
    finally:
        await metadata.close()
        if metadata.disk is not None:
            await metadata.disk.close()  # copies still being written are finished first


# Every answer names the server ``pkgate`` only (never the aiohttp or Python versions).
SERVER_NAME = "pkgate"


def create_app(settings: Settings) -> web.Application:
    """Build the whole server for ``settings``; nothing is opened until the app starts."""
    decode.return_large_buffers()
    compat.name_the_server(SERVER_NAME)
    metrics = Metrics()
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[compat.front_key] = front(metrics)  # counts and answers every request (no middlewares)
    app[metrics_key] = metrics
    app[settings_key] = settings
    app[registry_key] = Registry(app)
    app[registry_key].on_served.append(download_recorder(app))
    tokenapi.http.setup(app, token_api_config(settings), supplychain_admin.ENDPOINTS)
    app.cleanup_ctx.append(upstream_ctx)
    app.cleanup_ctx.append(cache_ctx)
    chain = supplychain.setup(app, settings, app[metrics_key].registry)
    if chain.blocklist is not None:
        breachwire.connect(app, chain.blocklist)  # new entries mail their past downloaders
    setup_ops(app)
    setup_web(app)
    setup_registry_limits(app, settings)

    # Registries last: a virtual host catches every path on its host name, so the token API and
    # ops routes registered above must come first to keep answering there.
    if settings.npm_upstream:
        mount_registry(
            app,
            settings,
            name="npm",
            challenge=NPM_CHALLENGE,
            setup_routes=npm.setup_routes,
            host=settings.npm_host,
        )
    if settings.pypi_upstream:
        mount_registry(
            app,
            settings,
            name="pypi",
            challenge=PYPI_CHALLENGE,
            setup_routes=simple.setup_routes,
            host=settings.pypi_host,
        )
    return app
