"""The client's IP address: the TCP peer, or X-Forwarded-For when the peer is a trusted proxy.

``X-Forwarded-For`` is read right to left: each hop appends the address it saw, so the right-most
entries were written by our own proxies.  Walking from the right, trusted addresses are skipped and
the first untrusted one is the client.  A header from an untrusted peer is ignored entirely, so a
client cannot choose the address its rate limits are counted under.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from aiohttp import hdrs, web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
# A forged header may be long; only this many right-most hops are considered.
MAX_HOPS = 20


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


@functools.lru_cache(maxsize=4096)
def _peer_text(remote: str) -> str:
    # Formatting an ip_address is slower than the request path can afford twice per request.
    address = _parse(remote)
    return str(address) if address is not None else remote


def peer_ip(request: web.BaseRequest) -> str:
    """The address of the TCP peer, or ``unknown`` (e.g. a closed transport)."""
    remote = request.remote
    if not remote:
        return UNKNOWN
    return _peer_text(remote)


# The address resolved for a request, with the trusted networks it was resolved for.
_RESOLVED: web.RequestKey[tuple[tuple[Network, ...], str]] = web.RequestKey(
    "pkgate_client_ip", tuple
)


def client_ip(request: web.BaseRequest, trusted_networks: Iterable[Network]) -> str:
    """The client's address as text: the peer, or the right-most untrusted X-Forwarded-For hop.

    Resolved once per request: the throttles, the API's limits and the access log all ask.
    """
    networks = tuple(trusted_networks)
    found = request.get(_RESOLVED)
    if found is not None and found[0] == networks:
        resolved: str = found[1]
        return resolved
    address = address_of(request, networks)
    request[_RESOLVED] = (networks, address)
    return address


def address_of(request: web.BaseRequest, networks: tuple[Network, ...]) -> str:
    """``client_ip`` worked out afresh, for a caller that keeps the answer itself (the
    registry throttle keeps it on the request's ``RegistryFacts``)."""
    remote = request.remote  # peer_ip, written out: this is the registry's warm path
    peer = _peer_text(remote) if remote else UNKNOWN
    if not networks:
        return peer
    peer_address = _parse(peer)
    if peer_address is None or not _trusted(peer_address, networks):
        return peer
    headers = request.headers.getall(hdrs.X_FORWARDED_FOR, [])
    hops = [part for header in headers for part in header.split(",")][-MAX_HOPS:]
    client = peer_address
    for raw in reversed(hops):
        address = _parse(raw)
        if address is None:
            # Garbage written by someone before our proxies: stop at the last good hop.
            break
        client = address
        if not _trusted(address, networks):
            break
    return str(client)
