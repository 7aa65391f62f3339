"""Network addresses as meshid takes them: ``HOST:PORT``, the port always written out.

gRPC reads an address without a port as port 443: a server told ``0.0.0.0`` binds 443 (it
succeeds as root) and a channel to ``10.0.0.7`` dials 443, so a forgotten port serves or calls
the wrong one without a word. meshid refuses such an address with a sentence instead.
Addresses with a gRPC scheme (``unix:/path``, ``dns:///host:port``, ``ipv4:...``) pass as they
are: gRPC parses those itself.
"""

from __future__ import annotations

from mesh.transport.errors import ServerConfigError

_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")
_MAX_PORT = 65535


class AddressError(ServerConfigError):
    """An address to listen on or dial is not ``HOST:PORT``."""


def split_host_port(address: str, *, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); :class:`AddressError` naming
    ``what`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or (":" in host and not host.startswith("[")):
        example = f"{address}:8443" if address and ":" not in address else "127.0.0.1:8443"
        raise AddressError(
            f"{what} {address!r} has no port: write HOST:PORT, e.g. {example} (port 0 picks a "
            "free one to listen on); gRPC would quietly take port 443"
        )
    if not (port.isascii() and port.isdigit()) or int(port) > _MAX_PORT:
        raise AddressError(f"{what} {address!r} has port {port!r}: a port is 0 to {_MAX_PORT}")
    if host.startswith("[") != host.endswith("]"):
        raise AddressError(f"{what} {address!r}: an IPv6 host goes in brackets, [::1]:8443")
    return host, int(port)


def listen_address(address: str, *, what: str = "listen address") -> str:
    """``address`` if a server may bind it (port 0: any free port); else :class:`AddressError`."""
    if address.startswith(_SCHEMES):
        return address
    split_host_port(address, what=what)
    return address


def dial_address(address: str, *, what: str = "address") -> str:
    """``address`` if a channel may dial it (a port other than 0); else :class:`AddressError`."""
    if address.startswith(_SCHEMES):
        return address
    _, port = split_host_port(address, what=what)
    if port == 0:
        raise AddressError(f"{what} {address!r} has port 0, which cannot be dialled")
    return address
