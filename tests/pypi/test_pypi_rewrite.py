"""Units of the simple index: Accept negotiation, page reading and writing, links, decoding."""

from __future__ import annotations

import orjson
import pytest
from yarl import URL

from proxy.pypi.negotiate import choose
from proxy.pypi.rewrite import (
    JSON_TYPE,
    TEXT_HTML,
    FileLinks,
    PageError,
    normalize_name,
    parse_index_page,
    parse_project_page,
    project_of_filename,
    published_hashes,
    render_project,
    safe_tail,
    verifying_hash,
)

OFFERS = (TEXT_HTML, "application/vnd.pypi.simple.v1+html", JSON_TYPE)
PUBLIC = "https://proxy.test/prefix/pypi/files"
LINKS = FileLinks(PUBLIC, ["https://index.test/", "https://files.test/"])
PAGE_URL = URL("https://index.test/simple/demo/")
SHA = "a" * 64


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, TEXT_HTML),
        ("", TEXT_HTML),
        ("*/*", TEXT_HTML),
        ("application/*", "application/vnd.pypi.simple.v1+html"),
        (f"{JSON_TYPE};q=0.9, text/html;q=0.9", TEXT_HTML),
        (f"text/*;q=0.1, {JSON_TYPE};q=0.2", JSON_TYPE),
        (f"*/*;q=0.5, {JSON_TYPE};q=0", TEXT_HTML),
        (f"{JSON_TYPE};q=bogus, text/html;q=0.1", TEXT_HTML),
        ("text/plain", None),
        ("*/*;q=0", None),
        ("garbage, ;;, /", None),
    ],
)
def test_negotiate__choose_honours_q_values_and_specificity(
    accept: str | None, expected: str | None
) -> None:
    assert choose(accept, OFFERS) == expected


@pytest.mark.parametrize(
    ("name", "normalized"),
    [("Demo.App", "demo-app"), ("a__b--c", "a-b-c"), ("ZOPE.interface", "zope-interface")],
)
def test_simplerewrite__normalize_name(name: str, normalized: str) -> None:
    assert normalize_name(name) == normalized


@pytest.mark.parametrize(
    ("tail", "ok"),
    [
        ("packages/a/b.whl", True),
        ("packages/a%20b.whl", True),
        ("", False),
        ("packages//b.whl", False),
        ("../b.whl", False),
        ("packages/%2E%2e/b.whl", False),
        ("packages/a%2Fb.whl", False),
        ("packages/a%5Cb.whl", False),
        ("packages/a%0Ab.whl", False),
        ("packages/", False),
    ],
)
def test_simplerewrite__safe_tail(tail: str, ok: bool) -> None:
    assert safe_tail(tail) is ok


@pytest.mark.parametrize(
    ("upstream", "proxied"),
    [
        ("https://index.test/packages/x.whl", f"{PUBLIC}/0/packages/x.whl"),
        ("https://files.test/aa/bb/x-1.0.tar.gz", f"{PUBLIC}/1/aa/bb/x-1.0.tar.gz"),
        ("https://files.test:443/aa/x.whl", f"{PUBLIC}/1/aa/x.whl"),
        ("https://files.test/aa/x.whl?v=1", f"{PUBLIC}/1/aa/x.whl?v=1"),
        ("https://evil.test/x.whl", None),
        ("http://files.test/x.whl", None),
        ("https://files.test:8443/x.whl", None),
        ("https://user:pw@files.test/x.whl", None),
        ("https://files.test.evil.test/x.whl", None),
    ],
)
def test_simplerewrite__links_map_only_configured_origins(
    upstream: str, proxied: str | None
) -> None:
    result = LINKS.to_proxy(URL(upstream))
    assert (None if result is None else str(result)) == proxied


def test_simplerewrite__links_round_trip() -> None:
    back = LINKS.to_upstream("1", "aa/bb/x-1.0.tar.gz", "v=1")
    assert str(back) == "https://files.test/aa/bb/x-1.0.tar.gz?v=1"
    assert LINKS.to_upstream("2", "x.whl") is None
    assert LINKS.to_upstream("00", "x.whl") is None
    assert LINKS.to_upstream("1", "../x.whl") is None


def test_simplerewrite__links_stay_under_a_base_path() -> None:
    links = FileLinks(PUBLIC, ["https://index.test/", "https://files.test/pkgs/"])
    assert links.to_proxy(URL("https://files.test/other/x.whl")) is None
    assert str(links.to_proxy(URL("https://files.test/pkgs/x.whl"))) == f"{PUBLIC}/1/x.whl"


HTML = f"""<!DOCTYPE html><html><head>
<meta name="pypi:repository-version" content="1.0"><base href="https://files.test/base/">
</head><body>
<a href="../aa/demo-1.0-py3-none-any.whl#sha256={SHA}" data-requires-python="&gt;=3.8"
   data-dist-info-metadata="sha256={SHA}" data-yanked>demo-1.0-py3-none-any.whl</a>
<a href="https://evil.test/demo-0.1.tar.gz#sha256={SHA}">demo-0.1.tar.gz</a>
<a href="https://files.test/aa/demo-2.0.tar.gz#md5=zz" data-gpg-sig="true"
   data-yanked="bad &amp; broken" data-core-metadata="true">demo-2.0.tar.gz</a>
<a href="https://files.test/aa/bad%2F..%2Fname.whl">../bad/name.whl</a>
</body></html>"""


def test_simplerewrite__html_page_is_parsed_with_base_and_attributes() -> None:
    page = parse_project_page(HTML.encode(), "text/html; charset=utf-8", PAGE_URL, "demo")
    assert [f.filename for f in page.files] == [
        "demo-1.0-py3-none-any.whl",
        "demo-0.1.tar.gz",
        "demo-2.0.tar.gz",
    ]
    one, evil, two = page.files
    assert str(one.url) == "https://files.test/aa/demo-1.0-py3-none-any.whl"
    assert one.hashes == {"sha256": SHA}
    assert one.requires_python == ">=3.8"
    assert one.core_metadata == {"sha256": SHA}
    assert one.yanked == ""
    assert str(evil.url) == "https://evil.test/demo-0.1.tar.gz"
    assert two.hashes == {}
    assert two.gpg_sig is True
    assert two.yanked == "bad & broken"
    assert two.core_metadata == {}


def test_simplerewrite__html_to_json_drops_foreign_links_and_escapes_nothing_away() -> None:
    page = parse_project_page(HTML.encode(), "text/html", PAGE_URL, "demo")
    doc = orjson.loads(render_project(page, JSON_TYPE, LINKS))
    assert doc["meta"] == {"api-version": "1.0"}
    assert [f["filename"] for f in doc["files"]] == ["demo-1.0-py3-none-any.whl", "demo-2.0.tar.gz"]
    one, two = doc["files"]
    assert one == {
        "filename": "demo-1.0-py3-none-any.whl",
        "url": f"{PUBLIC}/1/aa/demo-1.0-py3-none-any.whl",
        "hashes": {"sha256": SHA},
        "requires-python": ">=3.8",
        "core-metadata": {"sha256": SHA},
        "yanked": True,
    }
    assert two["core-metadata"] is True
    assert two["yanked"] == "bad & broken"
    assert two["gpg-sig"] is True


def test_simplerewrite__json_to_html_escapes_attributes() -> None:
    doc = {
        "meta": {"api-version": "1.1"},
        "name": "demo",
        "versions": ["1.0"],
        "files": [
            {
                "filename": "demo-1.0.tar.gz",
                "url": "../../aa/demo-1.0.tar.gz",
                "hashes": {"sha512": "b" * 128, "sha256": SHA},
                "requires-python": '>=3.8,<4"><script>',
                "yanked": False,
                "size": 10,
                "core-metadata": False,
            }
        ],
    }
    page = parse_project_page(orjson.dumps(doc), JSON_TYPE, PAGE_URL, "demo")
    html = render_project(page, TEXT_HTML, LINKS).decode()
    assert f'href="{PUBLIC}/0/aa/demo-1.0.tar.gz#sha256={SHA}"' in html
    assert 'data-requires-python="&gt;=3.8,&lt;4&quot;&gt;&lt;script&gt;"' in html
    assert "<script>" not in html
    assert "data-yanked" not in html
    assert "data-core-metadata" not in html
    assert "https://index.test" not in html


def test_simplerewrite__json_claims_1_1_only_with_every_size() -> None:
    files: list[dict[str, object]] = [
        {"filename": "a-1.tar.gz", "url": "https://files.test/a-1.tar.gz", "hashes": {}},
    ]
    doc = {"meta": {"api-version": "1.3"}, "name": "a", "files": files, "versions": ["1"]}
    page = parse_project_page(orjson.dumps(doc), JSON_TYPE, PAGE_URL, "a")
    assert orjson.loads(render_project(page, JSON_TYPE, LINKS))["meta"]["api-version"] == "1.0"
    files[0]["size"] = 3
    page = parse_project_page(orjson.dumps(doc), JSON_TYPE, PAGE_URL, "a")
    out = orjson.loads(render_project(page, JSON_TYPE, LINKS))
    assert out["meta"]["api-version"] == "1.1"
    assert out["versions"] == ["1"]
    assert out["files"][0]["size"] == 3


@pytest.mark.parametrize(
    "body",
    [b"not json {", b"[1, 2]", b'{"meta": {"api-version": "2.0"}, "files": []}', b'{"files": 3}'],
)
def test_simplerewrite__unreadable_json_page_is_a_page_error(body: bytes) -> None:
    with pytest.raises(PageError):
        parse_project_page(body, JSON_TYPE, PAGE_URL, "demo")


def test_simplerewrite__index_page_keeps_valid_names_only() -> None:
    html = b'<a href="/simple/a/">Alpha.Beta</a><a href="/x/">not a name!</a>'
    assert parse_index_page(html, "text/html").projects == ("Alpha.Beta",)
    doc = {"meta": {"api-version": "1.0"}, "projects": [{"name": "x"}, {"name": 3}, "y"]}
    assert parse_index_page(orjson.dumps(doc), None).projects == ("x",)


def test_negotiate__remembered_choice_equals_fresh_choice() -> None:
    accept = "text/html;q=0.5, application/vnd.pypi.simple.v1+json;q=0.6"
    assert choose(accept, OFFERS) == JSON_TYPE
    assert choose(accept, OFFERS) == JSON_TYPE  # from the memo
    assert choose(accept, list(OFFERS)) == JSON_TYPE  # unhashable offers: computed
    huge = "image/png, " * 200 + "text/html"
    assert choose(huge, OFFERS) is None  # beyond MAX_ACCEPT_ITEMS; not remembered either


@pytest.mark.parametrize(
    ("filename", "project"),
    [
        ("demo_app-1.0.0-py3-none-any.whl", "demo-app"),
        ("Demo.App-1.0.0-py3-none-any.whl", "demo-app"),
        ("demo_app-1.0.0-py3-none-any.whl.metadata", "demo-app"),
        ("tinydep-1.0.0.tar.gz", "tinydep"),
        ("zope.interface-6.0.zip", "zope-interface"),
        ("foo-bar-2.1.tar.gz", "foo-bar"),
        ("Foo_Bar-1.0-py3.8.egg", "foo-bar"),
        ("broken.whl", None),
        ("README.txt", None),
        ("-1.0.tar.gz", None),
    ],
)
def test_simplerewrite__project_of_filename(filename: str, project: str | None) -> None:
    assert project_of_filename(filename) == project


def test_simplerewrite__published_hashes_keyed_as_the_files_route_names_them() -> None:
    meta_sha = "b" * 64
    doc = {
        "files": [
            {
                "filename": "demo-1.0-py3-none-any.whl",
                "url": "https://files.test/p/demo-1.0-py3-none-any.whl?x=1",
                "hashes": {"md5": "c" * 32, "sha256": SHA},
                "core-metadata": {"sha256": meta_sha},
            },
            {
                "filename": "demo-1.0.tar.gz",
                "url": "../../p/demo-1.0.tar.gz",
                "hashes": {"md5": SHA[:32]},
            },
            {
                "filename": "demo-0.9.tar.gz",
                "url": "https://elsewhere.test/demo-0.9.tar.gz",
                "hashes": {"sha256": SHA},
            },
        ]
    }
    page = parse_project_page(orjson.dumps(doc), JSON_TYPE, PAGE_URL, "demo")
    assert published_hashes(page, LINKS) == {
        "1/p/demo-1.0-py3-none-any.whl?x=1": ("sha256", SHA),
        "1/p/demo-1.0-py3-none-any.whl.metadata?x=1": ("sha256", meta_sha),
    }
    located = LINKS.locate(URL("https://index.test/p/demo-1.0.tar.gz"))
    assert located == "0/p/demo-1.0.tar.gz"
    assert str(LINKS.to_proxy(URL("https://index.test/p/demo-1.0.tar.gz"))) == f"{PUBLIC}/{located}"
    # md5 alone is not trusted to vouch for a cached file.
    assert verifying_hash({"md5": SHA[:32]}) is None
    assert verifying_hash({"sha512": "d" * 128, "sha256": SHA}) == ("sha256", SHA)
