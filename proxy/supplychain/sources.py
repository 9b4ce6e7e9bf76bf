"""Reading OSV sources: URLs (conditional GET) and local paths, every byte bounded.

A source is one of: an OSV record (a JSON object), a JSON array of records, a directory tree of
record files (the OpenSSF malicious-packages layout: ``osv/malicious/npm/<name>/MAL-*.json``), or a
zip of record files (the per-ecosystem ``all.zip`` OSV publishes).  The format is told from the
bytes (zip magic, JSON) or from the path being a directory.

Bounds: a download is written to a temporary file under the data directory, at most
``MAX_DOWNLOAD`` bytes within ``DOWNLOAD_TIMEOUT`` seconds (``READ_TIMEOUT`` without a byte is a
failure too); one record is at most ``MAX_RECORD`` bytes (a larger zip member or file is skipped
as malformed without being read); a zip or directory holds at most ``MAX_MEMBERS`` records,
inflates to at most ``MAX_INFLATED`` bytes in total and is read within ``LOCAL_TIMEOUT`` seconds.
Anything beyond a bound fails the source (``SourceError``) so its last good copy stays in use,
except single oversize records, which are skipped and counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from yarl import URL

from . import osv

MAX_DOWNLOAD: Final = 1024**3
MAX_INFLATED: Final = 4 * 1024**3
MAX_RECORD: Final = 8 * 1024**2
MAX_JSON_FILE: Final = 512 * 1024**2  # a single JSON file (array of records) read into memory
MAX_MEMBERS: Final = 2_000_000
DOWNLOAD_TIMEOUT: Final = 600.0
LOCAL_TIMEOUT: Final = 600.0  # reading a directory tree or a zip (checked between records)
CONNECT_TIMEOUT: Final = 30.0
READ_TIMEOUT: Final = 60.0
CHUNK: Final = 256 * 1024
ZIP_MAGIC: Final = b"PK\x03\x04"
EMPTY_ZIP_MAGIC: Final = b"PK\x05\x06"


class SourceError(Exception):
    """A source could not be read as a whole; the message is safe to log (no credentials)."""


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def display(source: str) -> str:
    """The source as shown in logs and status: a URL without user info or query."""
    if not is_url(source):
        return source
    url = URL(source)
    return str(url.with_user(None).with_password(None).with_query(None).with_fragment(None))


def slug(source: str) -> str:
    """A file-name-safe stable name for a source's last good copy."""
    return hashlib.sha256(source.encode()).hexdigest()[:24]


@dataclass(slots=True)
class Loaded:
    """The npm/PyPI-relevant records of a source and how many were malformed."""

    records: list[Any] = field(default_factory=list)
    malformed: int = 0
    total: int = 0  # records seen, relevant or not


def _accept(loaded: Loaded, record: Any) -> None:
    loaded.total += 1
    if osv.relevant(record):
        loaded.records.append(record)


def _parse_record_bytes(loaded: Loaded, data: bytes) -> None:
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError:
        loaded.total += 1
        loaded.malformed += 1
        return
    _accept(loaded, record)


def _read_json_document(data: bytes) -> Loaded:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SourceError(f"not valid JSON ({exc})") from None
    loaded = Loaded()
    if isinstance(doc, list):
        for record in doc:
            _accept(loaded, record)
    elif isinstance(doc, dict):
        _accept(loaded, doc)
    else:
        raise SourceError("JSON is neither a record nor an array of records")
    return loaded


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise SourceError(f"reading took longer than {LOCAL_TIMEOUT:g}s")


def _read_zip(path: Path) -> Loaded:
    deadline = time.monotonic() + LOCAL_TIMEOUT
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"not a readable zip ({exc})") from None
    loaded = Loaded()
    inflated = 0
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_MEMBERS:
            raise SourceError(f"zip holds more than {MAX_MEMBERS} files")
        for member in members:
            _check_deadline(deadline)
            if not member.filename.endswith(".json"):
                continue
            if member.file_size > MAX_RECORD:
                loaded.total += 1
                loaded.malformed += 1
                continue
            inflated += member.file_size
            if inflated > MAX_INFLATED:
                raise SourceError("zip inflates beyond the size bound")
            try:
                with archive.open(member) as fh:
                    # file_size is the archive's claim: read one byte more to catch a lie.
                    data = fh.read(MAX_RECORD + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise SourceError(f"zip member {member.filename!r} is corrupt ({exc})") from None
            if len(data) > MAX_RECORD:
                loaded.total += 1
                loaded.malformed += 1
                continue
            _parse_record_bytes(loaded, data)
    return loaded


def _walk_json(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".json") and not name.startswith("."):
                yield Path(dirpath) / name


def _read_directory(root: Path) -> Loaded:
    loaded = Loaded()
    count = 0
    deadline = time.monotonic() + LOCAL_TIMEOUT
    for path in _walk_json(root):
        _check_deadline(deadline)
        count += 1
        if count > MAX_MEMBERS:
            raise SourceError(f"directory holds more than {MAX_MEMBERS} record files")
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_RECORD + 1)
        except OSError:
            loaded.total += 1
            loaded.malformed += 1
            continue
        if len(data) > MAX_RECORD:
            loaded.total += 1
            loaded.malformed += 1
            continue
        _parse_record_bytes(loaded, data)
    return loaded


def read_file(path: Path) -> Loaded:
    """A local (or downloaded) file: zip or JSON, told from its first bytes."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            if head in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
                fh.close()
                return _read_zip(path)
            fh.seek(0)
            data = fh.read(MAX_JSON_FILE + 1)
    except OSError as exc:
        raise SourceError(f"cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_JSON_FILE:
        raise SourceError("JSON file is larger than the size bound")
    return _read_json_document(data)


def read_local(source: str) -> Loaded:
    """A local path: a directory tree of records, or one file (runs in a worker thread)."""
    path = Path(source)
    if path.is_dir():
        return _read_directory(path)
    if not path.exists():
        raise SourceError("no such file or directory")
    return read_file(path)


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A URL's answer: a temporary file to read (None when the copy we hold is current)."""

    path: Path | None
    etag: str | None
    last_modified: str | None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    work_dir: Path,
    etag: str | None,
    last_modified: str | None,
    *,
    max_bytes: int = MAX_DOWNLOAD,
) -> Downloaded:
    """GET ``url`` conditionally into a temporary file under ``work_dir``.

    Raises SourceError for any failure (status, size, time, connection).
    """
    # The bytes are stored as sent (no transparent decoding), so ask for them unencoded.
    headers: dict[str, str] = {
        "Accept": "application/json, application/zip, */*;q=0.5",
        "Accept-Encoding": "identity",
    }
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    timeout = aiohttp.ClientTimeout(
        total=DOWNLOAD_TIMEOUT, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
    )
    os.makedirs(work_dir, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".feed-", dir=work_dir)
    path = Path(name)
    keep = False
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                async with session.get(url, headers=headers, timeout=timeout) as resp:
                    if resp.status == 304 and (etag or last_modified):
                        return Downloaded(None, etag, last_modified)
                    if resp.status != 200:
                        raise SourceError(f"answered HTTP {resp.status}")
                    coding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                    if coding != "identity":
                        raise SourceError(f"sent a {coding}-encoded body (identity was asked)")
                    if resp.content_length is not None and resp.content_length > max_bytes:
                        raise SourceError("body is larger than the size bound")
                    size = 0
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise SourceError("body is larger than the size bound")
                        out.write(chunk)
                    new_etag = resp.headers.get("ETag")
                    new_modified = resp.headers.get("Last-Modified")
            except TimeoutError:
                raise SourceError("timed out") from None
            except aiohttp.ClientError as exc:
                raise SourceError(f"request failed ({type(exc).__name__})") from None
        keep = True
        return Downloaded(path, new_etag, new_modified)
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                os.unlink(path)
