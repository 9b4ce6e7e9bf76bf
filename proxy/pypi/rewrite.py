"""Reading and writing simple repository pages: PEP 503 HTML and PEP 691/700/714 JSON.

An upstream page, in either format, is parsed into one model that keeps each file's absolute
upstream URL and published hashes (what a file must hash to stays derivable for an artifact
cache).  The model is then written in the format the client negotiated, every file link mapped
through ``FileLinks`` onto pkgate's own files route; a link the mapping refuses (another origin, a
path trick) is dropped, never passed on.  No aiohttp here: this module is pure data.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from html.parser import HTMLParser
from urllib.parse import unquote

import orjson
from yarl import URL

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"

# The newest API version whose every mandatory field this module writes (PEP 700).
MAX_API_VERSION = (1, 1)

_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_HASH_NAME_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{8,256}$")
_PREFERRED_HASHES = ("sha256", "sha384", "sha512", "blake2b")
MAX_NAME_LEN = 200
MAX_TAIL_LEN = 4096


class PageError(ValueError):
    """An upstream page could not be read; the message is safe to show."""


def normalize_name(name: str) -> str:
    """PEP 503 normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a PEP 508 project name."""
    return len(name) <= MAX_NAME_LEN and _NAME_RE.match(name) is not None


@dataclass(frozen=True, slots=True)
class DistFile:
    """One file of a project as the upstream published it."""

    filename: str
    url: URL  # absolute upstream URL without fragment
    hashes: Mapping[str, str]
    requires_python: str | None = None
    core_metadata: Mapping[str, str] | None = None  # None: not advertised; {}: "true"
    gpg_sig: bool | None = None
    yanked: str | None = None  # None: not yanked; "": yanked without a reason
    size: int | None = None
    upload_time: str | None = None


@dataclass(frozen=True, slots=True)
class ProjectPage:
    """A project's simple page, upstream URLs intact."""

    name: str
    files: tuple[DistFile, ...]
    versions: tuple[str, ...] | None
    api_version: tuple[int, int]


@dataclass(frozen=True, slots=True)
class IndexPage:
    """The root page: project names."""

    projects: tuple[str, ...]
    api_version: tuple[int, int]


def _origin_key(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host or "", url.port)


def safe_tail(raw: str) -> bool:
    """Whether an encoded path tail stays inside its base: no empty, dot or slash-hiding parts."""
    if not raw or len(raw) > MAX_TAIL_LEN:
        return False
    for segment in raw.split("/"):
        if not segment:
            return False
        # Decoded twice: an upstream or a cache in front of it that decodes again must not find
        # a dot segment or a separator either (``%252e%252e``).
        for decoded in (unquote(segment), unquote(unquote(segment))):
            if (
                decoded in {".", ".."}
                or any(c in decoded for c in "/\\")
                or not decoded.isprintable()
            ):
                return False
    return True


class FileLinks:
    """Maps upstream file URLs onto ``<public>/pypi/files/<n>/<path>`` and back.

    ``n`` numbers the configured bases (the index's origin first, then the extra file origins);
    nothing outside them can be named in either direction.
    """

    def __init__(self, public_files: str, bases: Sequence[str]) -> None:
        self._public = public_files.rstrip("/")
        self._bases = [URL(b) for b in bases]

    def locate(self, url: URL) -> str | None:
        """``<n>/<tail>[?query]`` (still encoded) naming an upstream file under the files route.

        None when the file must not be linked.  The files route reads the same text back from
        its request path, so it also serves as a key for what is known about the file.
        """
        if not url.is_absolute() or url.user is not None or url.password is not None:
            return None
        key = _origin_key(url)
        for number, base in enumerate(self._bases):
            if _origin_key(base) != key or not url.raw_path.startswith(base.raw_path):
                continue
            tail = url.raw_path[len(base.raw_path) :]
            if not safe_tail(tail):
                return None
            text = f"{number}/{tail}"
            if url.raw_query_string:
                text += "?" + url.raw_query_string
            return text
        return None

    def to_proxy(self, url: URL) -> URL | None:
        """The pkgate URL of an upstream file, or None when it must not be linked."""
        located = self.locate(url)
        return None if located is None else URL(f"{self._public}/{located}", encoded=True)

    def to_upstream(self, number: str, raw_tail: str, raw_query: str = "") -> URL | None:
        """The upstream URL a files-route request names, or None when it names nothing allowed."""
        if not number.isdigit() or len(number) > 3 or str(int(number)) != number:
            return None
        index = int(number)
        if index >= len(self._bases) or not safe_tail(raw_tail):
            return None
        text = str(self._bases[index]) + raw_tail
        if raw_query:
            text += "?" + raw_query
        return URL(text, encoded=True)


# --- reading -------------------------------------------------------------------------------


def page_format(content_type: str | None, body: bytes) -> str:
    """``json`` or ``html``, from the upstream Content-Type, sniffing when it is unhelpful."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in {JSON_TYPE, "application/json"} or (
        media.startswith("application/vnd.pypi.simple.") and media.endswith("+json")
    ):
        return "json"
    if media in {HTML_TYPE, TEXT_HTML} or media.endswith("+html"):
        return "html"
    return "json" if body.lstrip()[:1] == b"{" else "html"


def _charset(content_type: str | None) -> str:
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


def _decode_text(body: bytes, content_type: str | None) -> str:
    try:
        return body.decode(_charset(content_type), errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _parse_api_version(value: object) -> tuple[int, int]:
    if not isinstance(value, str):
        return (1, 0)
    major, _, minor = value.strip().partition(".")
    try:
        version = (int(major), int(minor or "0"))
    except ValueError:
        return (1, 0)
    if version[0] != 1:
        raise PageError(f"upstream speaks unsupported simple API version {value[:20]}")
    return version


def _valid_hashes(items: Iterable[tuple[object, object]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        name = name.lower()
        if _HASH_NAME_RE.match(name) and _HEX_RE.match(value):
            out[name] = value
    return out


def _hash_from_fragment(fragment: str) -> dict[str, str]:
    name, sep, value = fragment.partition("=")
    return _valid_hashes([(name, value)]) if sep else {}


def _core_metadata_from_attr(value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    if value.strip().lower() == "true":
        return {}
    name, sep, digest = value.partition("=")
    if not sep:
        return None
    hashes = _valid_hashes([(name.strip(), digest.strip())])
    return hashes or None


def _core_metadata_from_json(value: object) -> dict[str, str] | None:
    if value is True:
        return {}
    if isinstance(value, dict):
        return _valid_hashes(value.items())
    return None


def _filename_from_url(url: URL) -> str:
    return unquote(url.raw_name)


def _valid_filename(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name.isprintable()


class _LinkParser(HTMLParser):
    """Collects anchors, ``<base href>`` and ``<meta>`` of a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.base: str | None = None
        self.meta: dict[str, str] = {}
        self._attrs: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._flush()
            self._attrs = dict(attrs)
            self._text = []
        elif tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "meta":
            a = dict(attrs)
            name, content = a.get("name"), a.get("content")
            if name and content is not None:
                self.meta[name.lower()] = content

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._attrs is not None:
            self._text.append(data)

    def _flush(self) -> None:
        if self._attrs is not None:
            self.anchors.append((self._attrs, "".join(self._text).strip()))
        self._attrs = None
        self._text = []

    def close(self) -> None:
        super().close()
        self._flush()


def _parse_html(body: bytes, content_type: str | None) -> _LinkParser:
    parser = _LinkParser()
    parser.feed(_decode_text(body, content_type))
    parser.close()
    return parser


def _join(base: URL, href: str) -> URL | None:
    try:
        target = base.join(URL(href.strip()))
    except ValueError:
        return None
    return target if target.is_absolute() else None


def _load_json(body: bytes) -> dict[str, object]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PageError("upstream sent a page that is not valid JSON") from None
    if not isinstance(data, dict):
        raise PageError("upstream sent a JSON page that is not an object")
    return data


def parse_project_page(
    body: bytes, content_type: str | None, page_url: URL, name: str
) -> ProjectPage:
    """Parse an upstream project page (either format); ``name`` is the normalised project name."""
    if page_format(content_type, body) == "json":
        return _project_from_json(_load_json(body), page_url, name)
    return _project_from_html(_parse_html(body, content_type), page_url, name)


def _project_from_html(parser: _LinkParser, page_url: URL, name: str) -> ProjectPage:
    base = _join(page_url, parser.base) if parser.base else page_url
    base = base or page_url
    files: list[DistFile] = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        target = _join(base, href)
        if target is None:
            continue
        filename = text or _filename_from_url(target)
        if not _valid_filename(filename):
            continue
        core = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        gpg = attrs.get("data-gpg-sig")
        yanked = attrs.get("data-yanked")
        files.append(
            DistFile(
                filename=filename,
                url=target.with_fragment(None),
                hashes=_hash_from_fragment(target.fragment),
                requires_python=attrs.get("data-requires-python") or None,
                core_metadata=_core_metadata_from_attr(core),
                gpg_sig=None if gpg is None else gpg.strip().lower() == "true",
                yanked=None if "data-yanked" not in attrs else (yanked or ""),
            )
        )
    version = _parse_api_version(parser.meta.get("pypi:repository-version"))
    return ProjectPage(name=name, files=tuple(files), versions=None, api_version=version)


def _json_file(entry: object, page_url: URL) -> DistFile | None:
    if not isinstance(entry, dict):
        return None
    filename, url = entry.get("filename"), entry.get("url")
    if not isinstance(filename, str) or not isinstance(url, str) or not _valid_filename(filename):
        return None
    target = _join(page_url, url)
    if target is None:
        return None
    hashes = entry.get("hashes")
    requires_python = entry.get("requires-python")
    core = entry.get("core-metadata", entry.get("dist-info-metadata"))
    gpg = entry.get("gpg-sig")
    yanked = entry.get("yanked")
    size = entry.get("size")
    upload_time = entry.get("upload-time")
    return DistFile(
        filename=filename,
        url=target.with_fragment(None),
        hashes=_valid_hashes(hashes.items()) if isinstance(hashes, dict) else {},
        requires_python=requires_python if isinstance(requires_python, str) else None,
        core_metadata=_core_metadata_from_json(core),
        gpg_sig=gpg if isinstance(gpg, bool) else None,
        yanked=(yanked or "") if isinstance(yanked, str) else ("" if yanked is True else None),
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        upload_time=upload_time if isinstance(upload_time, str) and len(upload_time) < 64 else None,
    )


def _project_from_json(data: dict[str, object], page_url: URL, name: str) -> ProjectPage:
    meta = data.get("meta")
    version = _parse_api_version(meta.get("api-version") if isinstance(meta, dict) else None)
    raw_files = data.get("files")
    if not isinstance(raw_files, list):
        raise PageError("upstream JSON page has no files list")
    files = tuple(f for f in (_json_file(e, page_url) for e in raw_files) if f is not None)
    raw_versions = data.get("versions")
    versions = (
        tuple(v for v in raw_versions if isinstance(v, str))
        if isinstance(raw_versions, list)
        else None
    )
    return ProjectPage(name=name, files=files, versions=versions, api_version=version)


def parse_index_page(body: bytes, content_type: str | None) -> IndexPage:
    """Parse an upstream root page (either format) into project names."""
    if page_format(content_type, body) == "json":
        data = _load_json(body)
        meta = data.get("meta")
        version = _parse_api_version(meta.get("api-version") if isinstance(meta, dict) else None)
        raw = data.get("projects")
        if not isinstance(raw, list):
            raise PageError("upstream JSON index has no projects list")
        names = (p.get("name") for p in raw if isinstance(p, dict))
        return IndexPage(
            tuple(n for n in names if isinstance(n, str) and is_valid_name(n)), version
        )
    parser = _parse_html(body, content_type)
    version = _parse_api_version(parser.meta.get("pypi:repository-version"))
    return IndexPage(tuple(t for _, t in parser.anchors if is_valid_name(t)), version)


# --- what a file must hash to --------------------------------------------------------------

# Hashes strong enough to vouch for a cached file, strongest-known-good first.
VERIFYING_HASHES = ("sha256", "sha512", "sha384", "sha224")
_WHEEL_LIKE = (".whl", ".egg")
_SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz", ".tar")
METADATA_SUFFIX = ".metadata"


def verifying_hash(hashes: Mapping[str, str]) -> tuple[str, str] | None:
    """(algorithm, hex) of the hash a downloaded file is checked against, or None."""
    for name in VERIFYING_HASHES:
        if name in hashes:
            return name, hashes[name]
    return None


def published_hashes(page: ProjectPage, links: FileLinks) -> dict[str, tuple[str, str]]:
    """For every linked file (and ``.metadata``), its ``FileLinks.locate`` key -> verifying hash."""
    out: dict[str, tuple[str, str]] = {}
    for f in page.files:
        located = links.locate(f.url)
        if located is None:
            continue
        found = verifying_hash(f.hashes)
        if found is not None:
            out[located] = found
        meta = verifying_hash(f.core_metadata) if f.core_metadata else None
        if meta is not None:
            path, sep, query = located.partition("?")
            out[path + METADATA_SUFFIX + sep + query] = meta
    return out


def project_of_filename(filename: str) -> str | None:
    """The normalised project a wheel, egg or sdist file name belongs to (PEP 427/625), or None.

    Wheel names escape ``-`` in the project as ``_``, so the name ends at the first ``-``; sdist
    versions carry no ``-``, so it ends at the last one.
    """
    filename = filename.removesuffix(METADATA_SUFFIX)
    lowered = filename.lower()
    if lowered.endswith(_WHEEL_LIKE):
        name, sep, _ = filename.partition("-")
    else:
        suffix = next((s for s in _SDIST_SUFFIXES if lowered.endswith(s)), None)
        if suffix is None:
            return None
        name, sep, _ = filename[: -len(suffix)].rpartition("-")
    if not sep or not is_valid_name(name):
        return None
    return normalize_name(name)


def version_of_filename(filename: str) -> str | None:
    """The version a wheel, egg or sdist file (or its ``.metadata``) belongs to, or None."""
    filename = filename.removesuffix(METADATA_SUFFIX)
    lowered = filename.lower()
    if lowered.endswith(_WHEEL_LIKE):
        parts = filename.split("-")
        return parts[1] if len(parts) >= 3 and parts[1] else None
    suffix = next((s for s in _SDIST_SUFFIXES if lowered.endswith(s)), None)
    if suffix is None:
        return None
    _, sep, version = filename[: -len(suffix)].rpartition("-")
    return version if sep and version else None


def upload_time(value: str | None) -> float | None:
    """A PEP 700 ``upload-time`` as Unix seconds, or None when absent or unreadable."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def without_files(
    body: bytes, media_type: str, filenames: Collection[str], versions: Collection[str]
) -> bytes:
    """A page ``render_project`` wrote, without the named files (and, in the JSON form's
    ``versions``, without the named versions)."""
    if media_type == JSON_TYPE:
        doc = orjson.loads(body)
        if not isinstance(doc, dict):
            return body
        files = doc.get("files")
        if isinstance(files, list):
            doc["files"] = [
                f for f in files if not (isinstance(f, dict) and f.get("filename") in filenames)
            ]
        listed = doc.get("versions")
        if isinstance(listed, list):
            doc["versions"] = [v for v in listed if v not in versions]
        return orjson.dumps(doc)
    # The HTML form has one anchor per line, its text the escaped file name.
    ends = tuple(f">{escape(name)}</a><br />\n" for name in filenames)
    if not ends:
        return body
    lines = body.decode().splitlines(keepends=True)
    return "".join(line for line in lines if not line.endswith(ends)).encode()


# --- writing -------------------------------------------------------------------------------


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def project_api_version(page: ProjectPage) -> tuple[int, int]:
    """What pkgate can honestly claim: 1.1 only when every PEP 700 field is known."""
    if (
        page.api_version >= MAX_API_VERSION
        and page.versions is not None
        and all(f.size is not None for f in page.files)
    ):
        return MAX_API_VERSION
    return (1, 0)


def _preferred_hash(hashes: Mapping[str, str]) -> tuple[str, str] | None:
    for name in _PREFERRED_HASHES:
        if name in hashes:
            return name, hashes[name]
    for name, value in sorted(hashes.items()):
        return name, value
    return None


def _linked(page: ProjectPage, links: FileLinks) -> list[tuple[DistFile, URL]]:
    out = []
    for f in page.files:
        url = links.to_proxy(f.url)
        if url is not None:
            out.append((f, url))
    return out


def render_project_json(page: ProjectPage, links: FileLinks) -> bytes:
    """The PEP 691 JSON form of ``page`` with pkgate file URLs."""
    version = project_api_version(page)
    files = []
    for f, url in _linked(page, links):
        entry: dict[str, object] = {"filename": f.filename, "url": str(url), "hashes": f.hashes}
        if f.requires_python is not None:
            entry["requires-python"] = f.requires_python
        if f.core_metadata is not None:
            entry["core-metadata"] = dict(f.core_metadata) or True
        if f.gpg_sig is not None:
            entry["gpg-sig"] = f.gpg_sig
        if f.yanked is not None:
            entry["yanked"] = f.yanked or True
        if version >= (1, 1):
            entry["size"] = f.size
            if f.upload_time is not None:
                entry["upload-time"] = f.upload_time
        files.append(entry)
    doc: dict[str, object] = {
        "meta": {"api-version": _version_text(version)},
        "name": page.name,
        "files": files,
    }
    if version >= (1, 1) and page.versions is not None:
        doc["versions"] = list(page.versions)
    return orjson.dumps(doc)


def _html_page(title: str, version: tuple[int, int], anchors: Iterable[str]) -> bytes:
    head = (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{_version_text(version)}">\n'
        f"    <title>{escape(title)}</title>\n  </head>\n  <body>\n"
        f"    <h1>{escape(title)}</h1>\n"
    )
    body = "".join(f"    {a}<br />\n" for a in anchors)
    return (head + body + "  </body>\n</html>\n").encode()


def _html_anchor(f: DistFile, url: URL) -> str:
    href = str(url)
    digest = _preferred_hash(f.hashes)
    if digest is not None:
        href += f"#{digest[0]}={digest[1]}"
    attrs = [f'href="{escape(href)}"']
    if f.requires_python is not None:
        attrs.append(f'data-requires-python="{escape(f.requires_python)}"')
    if f.core_metadata is not None:
        meta_digest = _preferred_hash(f.core_metadata)
        value = "true" if meta_digest is None else f"{meta_digest[0]}={meta_digest[1]}"
        # PEP 714: the new name is required; the old one is kept for older pips.
        attrs.append(f'data-core-metadata="{escape(value)}"')
        attrs.append(f'data-dist-info-metadata="{escape(value)}"')
    if f.gpg_sig is not None:
        attrs.append(f'data-gpg-sig="{"true" if f.gpg_sig else "false"}"')
    if f.yanked is not None:
        attrs.append(f'data-yanked="{escape(f.yanked)}"')
    return f"<a {' '.join(attrs)}>{escape(f.filename)}</a>"


def render_project_html(page: ProjectPage, links: FileLinks) -> bytes:
    """The PEP 503 HTML form of ``page`` with pkgate file URLs."""
    anchors = (_html_anchor(f, url) for f, url in _linked(page, links))
    return _html_page(f"Links for {page.name}", project_api_version(page), anchors)


def _index_version(page: IndexPage) -> tuple[int, int]:
    return min(page.api_version, MAX_API_VERSION)


def render_index_json(page: IndexPage) -> bytes:
    """The PEP 691 JSON root page."""
    doc = {
        "meta": {"api-version": _version_text(_index_version(page))},
        "projects": [{"name": n} for n in page.projects],
    }
    return orjson.dumps(doc)


def render_index_html(page: IndexPage) -> bytes:
    """The PEP 503 HTML root page; links are relative so they stay on pkgate's origin."""
    anchors = (f'<a href="{escape(normalize_name(n))}/">{escape(n)}</a>' for n in page.projects)
    return _html_page("Simple index", _index_version(page), anchors)


def render_project(page: ProjectPage, media_type: str, links: FileLinks) -> bytes:
    """``page`` in ``media_type`` (one of the three simple API types)."""
    if media_type == JSON_TYPE:
        return render_project_json(page, links)
    return render_project_html(page, links)


def render_index(page: IndexPage, media_type: str) -> bytes:
    """The root page in ``media_type``."""
    if media_type == JSON_TYPE:
        return render_index_json(page)
    return render_index_html(page)


__all__ = [
    "HTML_TYPE",
    "JSON_TYPE",
    "TEXT_HTML",
    "DistFile",
    "FileLinks",
    "IndexPage",
    "PageError",
    "ProjectPage",
    "is_valid_name",
    "normalize_name",
    "parse_index_page",
    "parse_project_page",
    "project_of_filename",
    "published_hashes",
    "render_index",
    "render_project",
    "safe_tail",
    "verifying_hash",
]
