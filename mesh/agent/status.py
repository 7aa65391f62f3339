"""``mesh agent status``: ask the agent on its socket, and print what it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from mesh.agent.errors import AgentConfigError, CAUnavailable
from mesh.agent.workload import HEADER, STATUS_METHOD
from mesh.identity.unixsock import SocketPath
from mesh.transport.status import error_info


def fetch_status(socket_path: Path, *, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's status as the calling user may see it."""
    if not socket_path.exists():
        raise AgentConfigError(f"{socket_path} does not exist: is the agent running?")
    with SocketPath(socket_path) as address, grpc.insecure_channel(
            f"unix:{address.address}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(STATUS_METHOD)
        try:
            raw = call(b"", timeout=timeout, metadata=((HEADER, "true"),))
        except grpc.RpcError as err:
            info = error_info(err)
            reason = f" ({info.reason})" if info is not None else ""
            details = err.details() if hasattr(err, "details") else str(err)
            raise CAUnavailable(
                f"the agent on {socket_path} refused the status request{reason}: {details}"
            ) from None
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise AgentConfigError("the agent answered with something that is not a status")
    return doc


def render_status(doc: dict[str, Any], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(doc, indent=2, sort_keys=True)
    ca = doc.get("ca") or {}
    lines = [
        f"node {doc.get('node')} in trust domain {doc.get('trust_domain')}",
        f"CA: {ca.get('state')} since {ca.get('since')}"
        + (f" ({ca['detail']})" if ca.get("detail") and ca.get("state") != "ok" else ""),
        f"trust bundle sequence: {doc.get('trust_sequence')}",
    ]
    if doc.get("evicted"):
        lines.append(f"EVICTED ({doc['evicted']}): nothing is renewed any more")
    rows = [("WHAT", "SPIFFE ID", "SERIAL", "EXPIRES", "NEXT RENEWAL", "STATE")]
    agent = doc.get("agent")
    if agent:
        rows.append(("agent", agent["spiffe_id"], agent["serial"], agent["not_after"],
                     agent.get("next_renewal") or "-", agent.get("state", "-")))
    for s in doc.get("services", []):
        rows.append((s["service"], s["spiffe_id"], s.get("serial") or "-",
                     s.get("not_after") or "-", s.get("next_renewal") or "-",
                     s.get("state", "-") + (f": {s['detail']}" if s.get("state") not in
                                              ("ok", "pending") and s.get("detail") else "")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False))
                     + "  " + str(r[5]))
    return "\n".join(lines)
