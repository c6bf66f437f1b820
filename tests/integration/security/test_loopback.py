"""The receiver listens on loopback unless told otherwise."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket

import psutil
import pytest

from tokentrace.cli import build_parser
from tokentrace.receiver.server import Receiver
from tokentrace.receiver.settings import Endpoint, resolve


def test_the_default_endpoints_are_loopback() -> None:
    settings = resolve(None, environ={})
    assert (str(settings.grpc_endpoint), str(settings.http_endpoint)) == (
        "127.0.0.1:4317",
        "127.0.0.1:4318",
    )
    assert ipaddress.ip_address(settings.grpc_endpoint.host).is_loopback
    assert ipaddress.ip_address(settings.http_endpoint.host).is_loopback
    # Only an explicit setting moves them.
    told = resolve(None, environ={"TOKENTRACE_GRPC_ENDPOINT": "0.0.0.0:4317"})
    assert told.grpc_endpoint == Endpoint("0.0.0.0", 4317)
    assert told.http_endpoint.host == "127.0.0.1"


def test_serve_help_says_so() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    help_text = serve.format_help()
    assert "127.0.0.1:4317" in help_text and "127.0.0.1:4318" in help_text


def _loopback(text: str) -> bool:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # gRPC's dual-stack socket: ::ffff:127.0.0.1
    return address.is_loopback


def _other_local_addresses() -> list[str]:
    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if (
                address.family == socket.AF_INET
                and not ipaddress.ip_address(address.address).is_loopback
            ):
                found.append(address.address)
    return found


def test_a_receiver_on_the_default_host_is_not_reachable_from_other_interfaces(
    dsn: str,
) -> None:
    defaults = resolve(None, environ={})
    settings = dataclasses.replace(
        defaults,
        grpc_endpoint=dataclasses.replace(defaults.grpc_endpoint, port=0),
        http_endpoint=dataclasses.replace(defaults.http_endpoint, port=0),
        grace_seconds=1.0,
    )
    receiver = Receiver(settings, dsn)
    receiver.start()
    try:
        ports = {receiver.grpc_port, receiver.http_port}
        listening = [
            c.laddr
            for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
        ]
        assert {addr.port for addr in listening} == ports
        assert all(_loopback(addr.ip) for addr in listening), listening
        others = _other_local_addresses()
        if not others:
            pytest.skip("this machine has no non-loopback IPv4 address to try")
        for address in others:
            for port in ports:
                with pytest.raises(OSError):
                    socket.create_connection((address, port), timeout=2).close()
    finally:
        receiver.stop()
