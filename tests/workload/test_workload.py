"""mesh.Workload: one object for this workload, refusing to start when its parts disagree.

Each refusal names its rule and has a control: the same workload with the part intact starts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.minimesh import UNARY, decode, sync_handlers

import mesh as meshid
from mesh.errors import ConfigError, Reason
from mesh.identity.errors import SvidNotValidNow, TrustMismatch
from mesh.identity.svid import X509SvidFolder
from mesh.policy import Policy, Rule
from mesh.transport.status import error_info


def _folder(mesh: Any, name: str, *, with_trust: bool = True) -> Path:
    """A spiffe-helper folder as the agent writes it: SVID files + bundle + CRL."""
    mesh.identity(name)
    folder = mesh.folder(name)
    if with_trust:
        shutil.copy(mesh.ca.bundle_path, folder / "bundle.spiffe.json")
        shutil.copy(mesh.ca.crl_path, folder / "crl.pem")
    return folder


def test_a_workload_from_a_folder_serves_and_calls(mesh: Any) -> None:
    orders = meshid.Workload.from_folder(_folder(mesh, "orders"), poll_interval=0.05)
    gateway = meshid.Workload.from_folder(_folder(mesh, "gateway"), poll_interval=0.05)
    try:
        assert orders.spiffe_id == mesh.id("orders")
        server = orders.server(Policy([Rule(methods=("*",), peers=("gateway",),
                                            require_user=False)], trust_domain=mesh.td))
        server.add_generic_rpc_handlers([sync_handlers()])
        port = server.add_port("127.0.0.1:0")
        server.start()
        try:
            with gateway.channel("orders", f"127.0.0.1:{port}") as channel:
                seen = decode(channel.unary_unary(UNARY)(b"x", timeout=10))
            assert seen == {"peer": str(mesh.id("gateway")), "kind": "service", "user": None,
                            "chain": ["gateway"], "scope": None, "jkt": None}
        finally:
            server.stop(None)
    finally:
        orders.close()
        gateway.close()


def test_a_trust_domain_mismatch_refuses_to_start(mesh: Any, mesh_factory: Any) -> None:
    folder = _folder(mesh, "orders")
    meshid.Workload.from_folder(folder).close()  # control
    other = mesh_factory(trust_domain="other.internal")
    with pytest.raises(TrustMismatch, match="same trust domain") as info:
        meshid.Workload.from_folder(folder, bundle=other.ca.bundle_path, crl=other.ca.crl_path)
    assert info.value.reason is Reason.TRUST_MISMATCH


def test_tls_anchors_that_differ_from_the_bundle_refuse_to_start(mesh: Any,
                                                                  mesh_factory: Any) -> None:
    folder = _folder(mesh, "orders")
    meshid.Workload.from_folder(folder).close()  # control
    # Another CA of the same trust domain name: its anchors are not this bundle's.
    impostor = mesh_factory()
    shutil.copy(impostor.ca.roots_path, folder / "svid_bundle.pem")
    with pytest.raises(TrustMismatch, match="TLS trust anchors"):
        meshid.Workload.from_folder(folder)


def test_an_svid_the_bundle_does_not_vouch_for_refuses_to_start(mesh: Any) -> None:
    folder = _folder(mesh, "orders")
    meshid.Workload.from_folder(folder).close()  # control
    mesh.ca.revoke(name="orders")
    shutil.copy(mesh.ca.bundle_path, folder / "bundle.spiffe.json")
    shutil.copy(mesh.ca.crl_path, folder / "crl.pem")
    with pytest.raises(TrustMismatch, match="revoked"):
        meshid.Workload.from_folder(folder)


def test_revocation_is_on_unless_switched_off_loudly(
        mesh: Any, caplog: pytest.LogCaptureFixture) -> None:
    folder = _folder(mesh, "orders")
    (folder / "crl.pem").unlink()
    with pytest.raises(ConfigError, match=r"no CRL at .*check_revocation=False"):
        meshid.Workload.from_folder(folder)
    caplog.set_level(logging.WARNING, logger="mesh.workload")
    workload = meshid.Workload.from_folder(folder, check_revocation=False)
    workload.close()
    assert "REVOCATION CHECKING IS OFF" in caplog.text
    assert workload.bundle_source.checks_revocation is False


def test_an_expired_svid_refuses_to_start(mesh: Any) -> None:
    folder = _folder(mesh, "orders")
    # The folder source checks validity against its clock; a clock past notAfter stands in
    # for an expired certificate without waiting for one.
    expiry = mesh.cert("orders").not_valid_after_utc.timestamp()
    X509SvidFolder(folder, clock=lambda: expiry - 1)  # control
    with pytest.raises(SvidNotValidNow, match="not valid now"):
        X509SvidFolder(folder, clock=lambda: expiry + 1)


def test_the_signer_follows_rotation(mesh: Any) -> None:
    workload = mesh.workload("auth")
    try:
        first = workload.signer.current.kid
        mesh.rotate("auth")
        workload.svid_source.refresh()  # type: ignore[attr-defined]
        assert workload.signer.current.kid != first
        token = workload.signer.user_token("alice", ["gateway"])
        assert mesh.verifier("gateway", bundle=mesh.bundle()).verify(token, None).user == "alice"
    finally:
        workload.close()


def _require_user_server(mesh: Any, *, aio: bool) -> int:
    """A server whose handler calls mesh.require_user() and echoes the user."""
    policy = Policy([Rule(methods=("*",), peers=("*",), require_user=False)],
                    trust_domain=mesh.td)
    source = mesh.identity("orders")
    if aio:
        async def who(request: bytes, context: Any) -> bytes:
            return meshid.require_user().id.encode()

        handlers = grpc.method_handlers_generic_handler(
            "test.v1.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(who)})

        async def start() -> int:
            server = meshid.Workload(source, mesh.trust).aio_server(policy)
            server.add_generic_rpc_handlers([handlers])
            port = server.add_port("127.0.0.1:0")
            await server.start()
            mesh._aio_servers.append(server)
            return port

        port: int = mesh.aio.run(start())
        return port

    def who_sync(request: bytes, context: Any) -> bytes:
        return meshid.require_user().id.encode()

    server = meshid.Workload(source, mesh.trust).server(policy)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.v1.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(who_sync)})])
    port = server.add_port("127.0.0.1:0")
    server.start()
    mesh._servers.append(server)
    return port


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_require_user_refuses_a_call_without_a_user_on_the_wire(mesh: Any, aio: bool) -> None:
    port = _require_user_server(mesh, aio=aio)
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    with mesh.as_user_call("gateway", mesh.user_token(sub="alice")):  # control
        assert channel.unary_unary(UNARY)(b"x", timeout=10) == b"alice"
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(UNARY)(b"x", timeout=10)  # an app token: no user
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(info.value).reason == "USER_REQUIRED"
    assert "carries none" in (info.value.details() or "")


def test_require_user_outside_a_call() -> None:
    with pytest.raises(meshid.CallRefused) as info:
        meshid.require_user()
    assert info.value.reason is Reason.USER_REQUIRED
    assert info.value.status == grpc.StatusCode.PERMISSION_DENIED
