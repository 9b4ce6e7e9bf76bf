"""Download history (SPEC 16): the registry's artifact-served hook feeds the token side's recorder.

Called on the event loop after every complete artifact answer (``Registry.on_served``); it
only appends to memory, and the last-used flush writes the records.  Anonymous downloads and
``.metadata`` files are not recorded.  A PyPI file's project and version come from its file
name (normalised); an npm tarball's from its route.
"""

from __future__ import annotations

from aiohttp import web

from tokenapi.downloads import npm_tarball_version, record_pypi_file
from tokenapi.keys import recorder_key
from tokenapi.lastused import UsageRecorder

from .registry.pipeline import ArtifactServed, ArtifactServedHook


def download_recorder(app: web.Application) -> ArtifactServedHook:
    """The hook recording ``app``'s served artifacts."""

    found: list[UsageRecorder] = []  # the recorder, read from the app once it exists

    def record(event: ArtifactServed) -> None:
        if event.token_id is None:
            return
        if not found:
            kept = app.get(recorder_key)
            if kept is None:
                return
            found.append(kept)
        recorder = found[0]
        if event.ecosystem == "pypi":
            record_pypi_file(recorder, event.token_id, event.filename)
            return
        version = event.version or npm_tarball_version(event.package, event.filename)
        if version:
            recorder.record_download(
                event.token_id, event.ecosystem, event.package, version, event.filename
            )

    return record
