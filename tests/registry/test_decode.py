"""Body decoding shared by both registries: codings, bounds, the budget of bytes in flight."""

from __future__ import annotations

import gzip
import zlib

import pytest

from proxy.registry.decode import Budget, Held, decode_body, decode_small
from proxy.registry.upstream import UpstreamError

LIMIT = 256 * 1024 * 1024


def decode_small_default(body: bytes, coding: str | None) -> bytes:
    return decode_small(body, coding, LIMIT)


async def decode(raw: bytes, coding: str | None, limit: int = LIMIT) -> bytes:
    held = Held(Budget(LIMIT * 2))
    try:
        return bytes(await decode_body(raw, coding, held, "upstream index", limit))
    finally:
        held.release()


def test_decode_small__gzip_labelled_unlabelled_and_deflate() -> None:
    data = b'{"a": 1}'
    assert decode_small_default(gzip.compress(data), "gzip") == data
    assert decode_small_default(gzip.compress(data), None) == data
    assert decode_small_default(zlib.compress(data), "deflate") == data
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_small_default(raw_deflate.compress(data) + raw_deflate.flush(), "deflate") == data
    assert decode_small_default(data, "identity") == data


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        (b"\x1f\x8bnot really gzip", "gzip"),
        (gzip.compress(b"x" * 100)[:-10], "gzip"),
        (b"{}", "br"),
    ],
)
def test_decode_small__refuses_what_it_cannot_decode(body: bytes, coding: str) -> None:
    with pytest.raises(ValueError, match=r"undecodable|unsupported|truncated"):
        decode_small_default(body, coding)


def test_decode_small__bounds_the_decoded_size() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    with pytest.raises(ValueError, match="too large"):
        decode_small(bomb, "gzip", limit=1000)


async def test_decode_body__handles_labelled_unlabelled_and_deflate() -> None:
    raw = b'{"files": []}'
    assert await decode(gzip.compress(raw), "gzip") == raw
    assert await decode(gzip.compress(raw), None) == raw
    assert await decode(zlib.compress(raw), "deflate") == raw
    assert await decode(raw, "identity") == raw


async def test_decode_body__refuses_bombs_and_unknown_encodings() -> None:
    bomb = gzip.compress(b"\0" * 2_000_000)
    with pytest.raises(UpstreamError) as too_big:
        await decode(bomb, "gzip", limit=1_000_000)
    assert too_big.value.status == 502
    with pytest.raises(UpstreamError):
        await decode(b"xx", "br")
    with pytest.raises(UpstreamError):
        await decode(b"\x1f\x8bnot gzip", "gzip")
