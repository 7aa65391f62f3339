"""The demo services on the mesh: one servicer module per service, its policy TOML beside it.

``auth`` and ``reporting`` serve no method that takes a token (auth's Login takes a password at
its edge port; reporting only runs a job), so they have no policy file: their mutual-TLS ports
get :meth:`Policy.deny_all`, refuse every token call (audited with rule ``deny_all``) and answer
health checks only.
"""

from __future__ import annotations

from pathlib import Path

from mesh.identity.spiffeid import TrustDomain
from mesh.policy import Policy, load_policy

SERVICES = ("auth", "gateway", "orders", "inventory", "payments", "reporting")
_HERE = Path(__file__).resolve().parent


def policy_path(service: str) -> Path | None:
    """The service's policy file shipped with the demo, or None when it serves no token call."""
    path = _HERE / f"{service}.toml"
    return path if path.is_file() else None


def load_service_policy(
    service: str, trust_domain: TrustDomain, override: Path | None = None
) -> Policy:
    """``override`` if given, else the shipped file, else :meth:`Policy.deny_all`."""
    path = override or policy_path(service)
    if path is None:
        return Policy.deny_all(trust_domain=trust_domain)
    return load_policy(path, trust_domain=trust_domain)
