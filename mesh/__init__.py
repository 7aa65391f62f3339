"""meshid: what a service links to join the mesh.

The names a service author needs, in one place::

    import mesh

    workload = mesh.Workload.from_folder("/run/mesh/orders")  # SVID + bundle + CRL, checked
    server = workload.server("orders-policy.toml")             # mutual TLS, every call verified
    payments = workload.channel("payments", "10.0.0.7:8443")   # pins payments.svc.<td>

and, in a handler, ``mesh.current_call()`` (the verified caller) and ``mesh.require_user()``.
The lower layers stay available: :mod:`mesh.identity`, :mod:`mesh.tokens`,
:mod:`mesh.transport`, :mod:`mesh.policy`. This package never imports ``ca``: a service runs
on SVIDs from any issuer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.dpop import DpopClient
    from mesh.errors import CallRefused, MeshError, Reason
    from mesh.identity.spiffeid import SpiffeId, TrustDomain
    from mesh.policy import Policy, Rule, load_policy
    from mesh.tokens.dpop import DpopSettings
    from mesh.tokens.verify import VerifiedChain
    from mesh.transport.context import User, current_call, require_user
    from mesh.transport.status import error_info
    from mesh.workload import Workload

# name -> module; imported on first use, so `import mesh.errors` (or `mesh token ...`) does not
# load gRPC servers and channels.
_EXPORTS = {
    "Workload": "mesh.workload",
    "DpopClient": "mesh.dpop",
    "DpopSettings": "mesh.tokens.dpop",
    "Policy": "mesh.policy",
    "Rule": "mesh.policy",
    "load_policy": "mesh.policy",
    "current_call": "mesh.transport.context",
    "require_user": "mesh.transport.context",
    "User": "mesh.transport.context",
    "VerifiedChain": "mesh.tokens.verify",
    "error_info": "mesh.transport.status",
    "MeshError": "mesh.errors",
    "CallRefused": "mesh.errors",
    "Reason": "mesh.errors",
    "SpiffeId": "mesh.identity.spiffeid",
    "TrustDomain": "mesh.identity.spiffeid",
}

__all__ = [
    "CallRefused",
    "DpopClient",
    "DpopSettings",
    "MeshError",
    "Policy",
    "Reason",
    "Rule",
    "SpiffeId",
    "TrustDomain",
    "User",
    "VerifiedChain",
    "Workload",
    "current_call",
    "error_info",
    "load_policy",
    "require_user",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
