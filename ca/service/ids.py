"""Names and identities of the CA service: nodes, node agents and the CA's own serving identity.

A node name follows the service-name rule (1 to 63 of ``a-z0-9-``, no '-' at either end): it
becomes the last segment of the agent's SPIFFE ID ``spiffe://<td>/agent/<NODE>``. The CA serves
as ``spiffe://<td>/ca`` with the DNS name ``ca.svc.<td>``, which clients pin (spec 8).
"""

from __future__ import annotations

from ca.errors import InvalidInput
from mesh.errors import InvalidSpiffeIdError
from mesh.identity.spiffeid import SpiffeId, TrustDomain, validate_service_name

#: the registry name (``mesh-ca list``) of the CA's own serving certificates
CA_RECORD_NAME = "ca"
AGENT_PREFIX = "/agent/"


class InvalidNodeName(InvalidInput):
    reason = "INVALID_NODE_NAME"


def check_node(node: str) -> str:
    """``node`` if it is a valid node name, else :class:`InvalidNodeName`."""
    try:
        return validate_service_name(node)
    except InvalidSpiffeIdError as err:
        raise InvalidNodeName(
            f"node name {node!r} is invalid: use 1 to 63 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-'"
        ) from err


def agent_id(td: TrustDomain, node: str) -> SpiffeId:
    return SpiffeId(td, AGENT_PREFIX + check_node(node))


def agent_record_name(node: str) -> str:
    """The registry name of a node's agent certificates (``agent/NODE``)."""
    return "agent/" + check_node(node)


def ca_id(td: TrustDomain) -> SpiffeId:
    return SpiffeId(td, "/ca")


def ca_dns_name(td: TrustDomain) -> str:
    """``ca.svc.<td>``: what an agent pins with ``grpc.ssl_target_name_override``."""
    return f"ca.svc.{td.name}"


