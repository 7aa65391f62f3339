"""SVID sources, server set-up refusals, the audit log and the context variable."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from mesh.identity.svid import (
    StaticSvid,
    SvidFileError,
    SvidKeyMismatchError,
    SvidKeyPermissionError,
    SvidNotSpiffeError,
    X509SvidFolder,
    build_svid,
)
from mesh.policy import Policy, Rule
from mesh.transport.audit import LOGGER_NAME
from mesh.transport.context import current_call
from mesh.transport.errors import InsecureServerError, ServerConfigError
from mesh.transport.server import MeshServer

UNARY = "/test.v1.Echo/Unary"
ANY = Policy([Rule(methods=("*",), peers=("*",), require_user=False)])


def test_folder_reloads_only_a_consistent_set(mesh: Any) -> None:
    source = mesh.identity("orders", poll=0)
    first = source.current()
    assert first.spiffe_id == mesh.td.service("orders") and first.generation == 0
    assert source.current() is first  # unchanged files: same snapshot
    renewed = mesh.ca.renew("orders")
    # a writer caught half-way: new certificate, old key
    folder = mesh.folder("orders")
    (folder / "svid.pem").write_bytes(b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in renewed.chain))
    assert source.current() is first  # key does not match: the old identity stays
    renewed.write_to(folder)
    second = source.current()
    assert second.generation == 1 and second.thumbprint != first.thumbprint
    assert second.leaf == renewed.certificate


def test_folder_notifies_listeners_from_its_watcher(mesh: Any) -> None:
    source = mesh.identity("orders", poll=0.01)
    seen: list[int] = []
    changed = threading.Event()
    source.subscribe(lambda svid: (seen.append(svid.generation), changed.set()))
    source.start()
    try:
        mesh.rotate("orders")
        assert changed.wait(5)
    finally:
        source.stop()
    assert seen == [1]


def test_folder_refuses_a_broken_first_load(mesh: Any, tmp_path: Path) -> None:
    with pytest.raises(SvidFileError, match="cannot stat"):
        X509SvidFolder(tmp_path / "missing")
    mesh.identity("orders")
    mesh.identity("gateway")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, src in (("svid.pem", "orders"), ("svid_key.pem", "gateway"),
                      ("svid_bundle.pem", "orders")):
        (mixed / name).write_bytes((mesh.folder(src) / name).read_bytes())
    os.chmod(mixed / "svid_key.pem", 0o600)
    with pytest.raises(SvidKeyMismatchError, match="does not belong"):
        X509SvidFolder(mixed)
    (mixed / "svid_key.pem").write_bytes(b"not a key")
    with pytest.raises(SvidFileError, match="not an unencrypted PEM private key"):
        X509SvidFolder(mixed)


def test_build_svid_refuses_garbage_and_a_certificate_without_spiffe_id(mesh: Any) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    roots = mesh.ca.roots_path.read_bytes()
    issued = mesh.ca.issue("orders")
    pem = serialization.Encoding.PEM
    key_pem = issued.private_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    with pytest.raises(SvidFileError, match="no readable certificate"):
        build_svid(b"garbage", key_pem, roots)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders")])
    now = datetime.datetime.now(datetime.UTC)
    plain = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(key.public_key()).serial_number(1).not_valid_before(now)
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName("orders.svc.x")]), False)
             .sign(key, hashes.SHA256()))
    with pytest.raises(SvidNotSpiffeError, match=r"not an X\.509-SVID"):
        build_svid(plain.public_bytes(pem), key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), roots)
    src = StaticSvid(issued.chain, issued.private_key, mesh.ca.roots)
    assert src.current().spiffe_id == mesh.td.service("orders")
    assert src.current().leaf == issued.certificate


def test_mesh_server_refuses_to_serve_without_mutual_tls(mesh: Any) -> None:
    server = MeshServer(mesh.identity("orders"), ANY, mesh.trust)
    with pytest.raises(InsecureServerError, match="plaintext"):
        server.add_insecure_port("127.0.0.1:0")
    with pytest.raises(InsecureServerError, match="did not build"):
        server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
            [(b"k", b"c")]))
    with pytest.raises(InsecureServerError, match="no port"):
        server.start()


def test_a_server_without_a_crl_says_revocation_is_off(
    mesh: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from mesh.identity.bundle import FileBundleSource

    no_crl = FileBundleSource(mesh.ca.bundle_path)
    assert not no_crl.checks_revocation and mesh.trust.checks_revocation
    with caplog.at_level(logging.WARNING, logger="mesh.transport.server"):
        MeshServer(mesh.identity("orders"), ANY, no_crl)
    assert any("no CRL" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # control: the mesh's bundle has the CA's crl.pem, and nothing is said
    with caplog.at_level(logging.WARNING, logger="mesh.transport.server"):
        MeshServer(mesh.identity("orders"), ANY, mesh.trust)
    assert not any("no CRL" in r.getMessage() for r in caplog.records)


def test_policy_for_another_trust_domain_is_refused(mesh: Any) -> None:
    with pytest.raises(ServerConfigError, match="trust domain"):
        MeshServer(mesh.identity("orders"), Policy([], trust_domain="other.td"), mesh.trust)


def test_audit_line_per_decision_never_holds_a_token(mesh: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    port = mesh.serve("orders", Policy([Rule(methods=("*",), peers=("gateway",),
                                            scopes=("s",), name="scoped")]))
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    token = mesh.user_token(sub="alice", scope="s")
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    with mesh.as_user_call("gateway", token):
        channel.unary_unary(UNARY)(b"x", timeout=5)
    with mesh.as_user_call("gateway", mesh.user_token(sub="bob")), pytest.raises(grpc.RpcError):
        channel.unary_unary(UNARY)(b"x", timeout=5)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]
    assert [(x["user"], x["decision"], x["reason"], x["rule"]) for x in lines] == [
        ("alice", "allow", "ALLOWED", "scoped"), ("bob", "deny", "SCOPE_MISSING", "scoped")]
    assert lines[0]["chain"] == ["spiffe://mesh.internal/svc/gateway"]
    assert lines[0]["method"] == UNARY and isinstance(lines[0]["verify_us"], int)
    text = caplog.text
    assert "eyJ" not in text and token not in text  # no JWS, not even a header


def test_context_is_cleared_outside_calls_and_survives_copy_context(mesh: Any) -> None:
    import contextvars

    assert current_call() is None
    with mesh.as_user_call("gateway", mesh.user_token(sub="alice")):
        ctx = contextvars.copy_context()
        seen: list[Any] = []
        worker = threading.Thread(target=lambda: seen.append(current_call()))
        worker.start()
        worker.join()
        copied = threading.Thread(target=lambda: seen.append(ctx.run(current_call)))
        copied.start()
        copied.join()
    assert seen[0] is None and seen[1] is not None and seen[1].user == "alice"
    assert current_call() is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o620, 0o610, 0o601])
def test_key_file_open_to_other_users_is_refused(mesh: Any, mode: int) -> None:
    """spec 2: svid_key.pem is 0600. Any group/other bit (read, write or execute) refuses
    the first load, with the rule and the fix in the message and no key material."""
    mesh.identity("orders")
    key = mesh.folder("orders") / "svid_key.pem"
    os.chmod(key, mode)
    with pytest.raises(SvidKeyPermissionError) as info:
        X509SvidFolder(mesh.folder("orders"))
    text = str(info.value)
    assert f"mode {mode:04o}" in text and "open to other users" in text
    assert "chmod 600" in text and "PRIVATE KEY" not in text
    assert isinstance(info.value, SvidFileError)  # the file-error family callers catch


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_key_file_closed_to_other_users_loads(mesh: Any, mode: int) -> None:
    """Negative control: owner-only modes load."""
    mesh.identity("orders")
    os.chmod(mesh.folder("orders") / "svid_key.pem", mode)
    assert X509SvidFolder(mesh.folder("orders")).current().spiffe_id == mesh.td.service("orders")


def test_reload_with_key_open_to_other_users_keeps_the_identity(
        mesh: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A rotation that lands a group-readable key is not taken: the old identity stays, a
    warning names the rule; fixing the mode (a chmod alone) lets the next poll take it."""
    source = mesh.identity("orders", poll=0)
    first = source.current()
    folder = mesh.folder("orders")
    renewed = mesh.ca.renew("orders")
    renewed.write_to(folder)
    os.chmod(folder / "svid_key.pem", 0o644)
    caplog.set_level(logging.WARNING, logger="mesh.identity.svid")
    assert source.current() is first
    assert source.current() is first  # the same bad files are not re-read nor re-logged
    warnings = [r.getMessage() for r in caplog.records if r.name == "mesh.identity.svid"]
    assert len(warnings) == 1 and "keeping spiffe://mesh.internal/svc/orders" in warnings[0]
    assert "open to other users (mode 0644)" in warnings[0]
    assert "PRIVATE KEY" not in caplog.text
    os.chmod(folder / "svid_key.pem", 0o600)
    second = source.current()
    assert second.generation == 1 and second.leaf == renewed.certificate
    # and a key loosened under a running service is noticed (warned about), not served anew
    os.chmod(folder / "svid_key.pem", 0o640)
    assert source.current() is second
    assert "mode 0640" in caplog.records[-1].getMessage()
