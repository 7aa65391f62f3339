"""The gRPC options every mesh server and channel sets, and why (spec 5.2).

Metadata limits. gRPC counts every header of a call against its metadata limits: below the soft
limit (``grpc.max_metadata_size``, default 8 KiB) a call always passes, above the hard limit
(``grpc.absolute_max_metadata_size``) it always fails, and in between gRPC refuses at random
with ``RESOURCE_EXHAUSTED``. meshid's own token limit is also 8 KiB by default (the whole
``authorization`` value is larger: "Bearer ", and the DPoP proof at an edge), so a valid chain
near that limit used to fail 1 to 5 calls in 40. Mesh servers and channels therefore set the
soft limit to the token limit plus :data:`HEADROOM` (room for the scheme, a DPoP proof and
gRPC's own headers) and the hard limit above that, so no token the verifier would accept is
ever refused by gRPC.

Proxies. With ``https_proxy`` (or ``grpc_proxy``, ``http_proxy``) in the environment, gRPC
channels dial through that proxy. A mesh channel authenticates the server by its certificate
and pins its name, and must reach the address it is given: mesh channels turn gRPC's proxy
support off (``grpc.enable_http_proxy`` = 0) unless built with ``proxy=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mesh.tokens.verify import DEFAULT_MAX_SIZE

#: bytes of metadata allowed beyond the token itself before gRPC's soft limit: "DPoP " or
#: "Bearer ", a DPoP proof (under 1 KiB), ``:path``, ``:authority``, ``content-type``,
#: ``user-agent``, ``grpc-timeout``, a caller's own entries
HEADROOM = 8 * 1024
#: gRPC's hard limit sits this far above the soft one (between them it refuses at random)
HARD_MARGIN = 8 * 1024

MAX_METADATA_SIZE = "grpc.max_metadata_size"
ABSOLUTE_MAX_METADATA_SIZE = "grpc.absolute_max_metadata_size"
ENABLE_HTTP_PROXY = "grpc.enable_http_proxy"

Options = Sequence[tuple[str, Any]]


def metadata_limits(max_token_size: int = DEFAULT_MAX_SIZE) -> tuple[int, int]:
    """(soft, hard) metadata limits for tokens of up to ``max_token_size`` bytes."""
    soft = max_token_size + HEADROOM
    return soft, soft + HARD_MARGIN


def _merge(defaults: Iterable[tuple[str, Any]], given: Options) -> list[tuple[str, Any]]:
    """``given`` wins over ``defaults`` for the same key, except that metadata limits are never
    lowered below the defaults (a lower one would refuse valid tokens at random)."""
    chosen = dict(defaults)
    floors = {k: v for k, v in chosen.items() if k in (MAX_METADATA_SIZE,
                                                       ABSOLUTE_MAX_METADATA_SIZE)}
    for key, value in given:
        chosen[key] = max(value, floors[key]) if key in floors else value
    return list(chosen.items())


def server_options(given: Options = (), *, max_token_size: int = DEFAULT_MAX_SIZE
                   ) -> list[tuple[str, Any]]:
    """Options for a mesh server: metadata limits above the token limit, then ``given``."""
    soft, hard = metadata_limits(max_token_size)
    return _merge([(MAX_METADATA_SIZE, soft), (ABSOLUTE_MAX_METADATA_SIZE, hard)], given)


def channel_options(given: Options = (), *, proxy: bool = False,
                    max_token_size: int = DEFAULT_MAX_SIZE) -> list[tuple[str, Any]]:
    """Options for a mesh channel: metadata limits, no HTTP proxy unless ``proxy``, then
    ``given`` (which may not lower the limits)."""
    soft, hard = metadata_limits(max_token_size)
    defaults: list[tuple[str, Any]] = [(MAX_METADATA_SIZE, soft),
                                       (ABSOLUTE_MAX_METADATA_SIZE, hard)]
    if not proxy:
        defaults.append((ENABLE_HTTP_PROXY, 0))
    return _merge(defaults, given)
