"""Review: what the CA issues and writes (spec 1, 2)."""

from __future__ import annotations

import os
import stat
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from ca import errors
from ca.fsio import cert_pem, key_pem

WHO = "/review.v1.Probe/Who"


def _serve(svid: Any, answer: bytes) -> tuple[grpc.Server, int]:
    """A plain mutual-TLS gRPC server presenting ``svid``, answering ``answer`` to WHO."""
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "review.v1.Probe", {"Who": grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [(key_pem(svid.private_key), cert_pem(svid.chain))],
        root_certificates=cert_pem(svid.bundle), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def _ask(client: Any, port: int, pinned_dns: str) -> bytes:
    """Dial ``port`` as the mesh client does: pin the callee's DNS name (spec 1)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=cert_pem(client.bundle), private_key=key_pem(client.private_key),
        certificate_chain=cert_pem(client.chain))
    with grpc.secure_channel(f"127.0.0.1:{port}", creds,
                             options=[("grpc.ssl_target_name_override", pinned_dns)]) as ch:
        answer: bytes = ch.unary_unary(WHO)(b"", timeout=5)
        return answer


def test_client_dns_pin_refuses_another_service(mesh_ca: Any) -> None:
    """Regression guard for spec 1: a client pinned to payments' DNS name refuses orders."""
    orders, gateway = mesh_ca.issue("orders"), mesh_ca.issue("gateway")
    server, port = _serve(orders, b"orders")
    try:
        assert _ask(gateway, port, "orders.svc.mesh.internal") == b"orders"  # control
        with pytest.raises(grpc.RpcError) as info:
            _ask(gateway, port, "payments.svc.mesh.internal")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_ca_refuses_extra_dns_san_of_another_service(mesh_ca: Any) -> None:
    """Python clients authenticate a server ONLY by the pinned DNS name
    ``<name>.svc.<td>`` (spec 1). ``ca.validate.check_dns`` accepts any extra DNS name, so
    ``issue("orders", dns=["payments.svc.mesh.internal"])`` yields a certificate with which
    orders (or whoever holds its key) can serve as payments to every client of the mesh: the
    names under ``.svc.<trust domain>`` must be reserved to the service they name."""
    with pytest.raises(errors.InvalidSAN):
        mesh_ca.issue("orders", dns=["payments.svc.mesh.internal"])


def test_service_cannot_pose_as_another_server(mesh_ca: Any) -> None:
    """The same defect end to end, over real mutual TLS: the client pinned to payments reaches
    the orders service and gets its answer."""
    gateway = mesh_ca.issue("gateway")
    try:
        impostor = mesh_ca.issue("orders", dns=["payments.svc.mesh.internal"])
    except errors.InvalidSAN:
        return  # the CA refused: the secure outcome
    server, port = _serve(impostor, b"orders posing as payments")
    try:
        with pytest.raises(grpc.RpcError):
            _ask(gateway, port, "payments.svc.mesh.internal")
    finally:
        server.stop(None)


@pytest.mark.parametrize("name", ["../etc", "a/b", "orders/../../x", "Orders", ".", "", "a" * 64,
                                  "orders\n", "ördérs", "orders\x00"])
def test_service_name_cannot_escape(mesh_ca: Any, name: str) -> None:
    """Regression guard: names that could traverse paths or smuggle text are refused."""
    with pytest.raises(errors.InvalidServiceName):
        mesh_ca.issue(name)


def test_key_written_0600_under_permissive_umask(mesh_ca: Any, tmp_path: Path) -> None:
    """Regression guard (spec 2): modes do not depend on the umask; the key never exists
    under a wider mode (the temp file is created 0600 by mkstemp before any byte is written)."""
    svid = mesh_ca.issue("orders")
    old = os.umask(0)
    try:
        svid.write_to(tmp_path / "id")
    finally:
        os.umask(old)
    folder = tmp_path / "id"
    mode = {n: stat.S_IMODE((folder / n).stat().st_mode)
            for n in ("svid.pem", "svid_key.pem", "svid_bundle.pem")}
    assert mode == {"svid.pem": 0o644, "svid_key.pem": 0o600, "svid_bundle.pem": 0o644}
    # The hidden set folder the names link into (docs/ca.md) is never group/other-writable.
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o022 == 0 for p in folder.iterdir())


def test_write_to_replaces_a_planted_symlink_instead_of_following_it(
    mesh_ca: Any, tmp_path: Path
) -> None:
    """Regression guard: a symlink planted at svid_key.pem is replaced, not written through
    (os.replace renames over the link), so the key cannot be sent to an attacker's file."""
    out = tmp_path / "id"
    out.mkdir()
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("untouched")
    (out / "svid_key.pem").symlink_to(victim)
    mesh_ca.issue("orders").write_to(out)
    assert victim.read_text() == "untouched"
    # Replaced by the CA's own link into the folder's current set (docs/ca.md).
    assert os.readlink(out / "svid_key.pem") == "..data/svid_key.pem"
    assert (out / "svid_key.pem").resolve().parent.parent == out.resolve()
    assert stat.S_IMODE((out / "svid_key.pem").stat().st_mode) == 0o600


def test_serials_are_positive_distinct_and_wide(mesh_ca: Any) -> None:
    """Regression guard (spec 1): random positive serials, not a counter."""
    serials = [s.serial for s in mesh_ca.issue_many([f"svc-{i}" for i in range(40)])]
    assert len(set(serials)) == 40
    assert all(0 < s < 2**128 for s in serials)
    assert max(s.bit_length() for s in serials) > 120  # 40 draws below 2^120: p ~ 2^-320
    assert all(s.certificate.serial_number == s.serial for s in mesh_ca.issue_many(["x1"]))


def test_csr_subject_and_extensions_are_not_copied(mesh_ca: Any) -> None:
    """Regression guard: a CSR asking for another service's SPIFFE ID, CA:true or extra SANs
    gets none of it; only its key is used."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payments")]))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier("spiffe://mesh.internal/svc/payments"),
            x509.DNSName("payments.svc.mesh.internal")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    svid = mesh_ca.issue("orders", csr_pem=csr.public_bytes(serialization.Encoding.PEM))
    san = svid.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.internal/svc/orders"]
    assert san.get_values_for_type(x509.DNSName) == ["orders.svc.mesh.internal"]
    assert svid.certificate.extensions.get_extension_for_class(
        x509.BasicConstraints).value.ca is False
