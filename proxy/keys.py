"""Typed application keys for the registry-facing side."""

from __future__ import annotations

from aiohttp import web

from .artifacts import ArtifactCache
from .metacache import MetadataCache
from .settings import Settings
from .upstream import Upstream

settings_key = web.AppKey("settings", Settings)
upstream_key = web.AppKey("upstream", Upstream)
metadata_cache_key = web.AppKey("metadata_cache", MetadataCache)
artifact_cache_key = web.AppKey("artifact_cache", ArtifactCache)
