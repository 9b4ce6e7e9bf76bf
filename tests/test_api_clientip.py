import ipaddress
from unittest import mock

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from tokenapi.clientip import client_ip

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def request(peer: str, *forwarded: str):  # type: ignore[no-untyped-def]
    headers = CIMultiDict([("X-Forwarded-For", f) for f in forwarded])
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 1234)
    return make_mocked_request("GET", "/", headers=headers, transport=transport)


def test_client_ip__peer_without_trusted_proxies() -> None:
    assert client_ip(request("203.0.113.9", "1.2.3.4"), ()) == "203.0.113.9"


def test_client_ip__untrusted_peer_header_ignored() -> None:
    assert client_ip(request("203.0.113.9", "1.2.3.4"), TRUSTED) == "203.0.113.9"


def test_client_ip__trusted_peer_right_most_untrusted_hop() -> None:
    req = request("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1")
    assert client_ip(req, TRUSTED) == "198.51.100.7"


def test_client_ip__several_headers_joined_in_order() -> None:
    req = request("10.0.0.1", "6.6.6.6", "198.51.100.7")
    assert client_ip(req, TRUSTED) == "198.51.100.7"


def test_client_ip__garbage_hop_stops_walk() -> None:
    req = request("10.0.0.1", "198.51.100.7, not-an-ip, 10.2.2.2")
    assert client_ip(req, TRUSTED) == "10.2.2.2"


def test_client_ip__trusted_peer_without_header_is_peer() -> None:
    assert client_ip(request("10.0.0.1"), TRUSTED) == "10.0.0.1"


def test_client_ip__ipv6_peer_and_ports_in_hops() -> None:
    req = request("::1", "[2001:db8::5]:443, 198.51.100.7:5000")
    assert client_ip(req, TRUSTED) == "198.51.100.7"
