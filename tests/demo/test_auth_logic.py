"""auth's login: a real user token, signed with auth's SVID from our CA, verified at the edge."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.demo.errors import InvalidCredentials
from mesh.demo.logic.auth import LoginService
from mesh.demo.logic.users import UserStore, new_user, write_users_file
from mesh.identity.bundle import FileBundleSource
from mesh.tokens.errors import AudienceMismatch, IssuerUntrusted
from mesh.tokens.signer import TokenSigner
from mesh.tokens.verify import ChainVerifier


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    path = tmp_path / "users.json"
    write_users_file(path, [
        new_user("alice", "pw-a", name="Alice", scope=["orders:read", "orders:write"],
                 roles=["customer"], n=2**10),
        new_user("bob", "pw-b", scope=["orders:read"], n=2**10),
    ])
    return UserStore.load(path)


def _signer(ca, name: str) -> TokenSigner:  # type: ignore[no-untyped-def]
    svid = ca.issue(name)
    return TokenSigner(svid.private_key, svid.chain)


def test_login_mints_a_user_token_the_gateway_edge_accepts(mesh_ca, users: UserStore) -> None:  # type: ignore[no-untyped-def]
    gateway = mesh_ca.trust_domain.service("gateway")
    service = LoginService(users, _signer(mesh_ca, "auth"), [gateway], ttl=600)
    result = service.login("alice", "pw-a")
    assert result.subject == "alice" and result.scope == "orders:read orders:write"
    assert "token" not in repr(result) and result.token not in repr(result)

    verified = ChainVerifier(gateway, FileBundleSource(mesh_ca.bundle_path)).verify(
        result.token, None
    )
    assert verified.kind == "user" and verified.user == "alice" and verified.chain == ()
    assert verified.user_claims["scope"] == "orders:read orders:write"
    assert list(verified.user_claims["roles"]) == ["customer"]
    assert verified.user_claims["name"] == "Alice"
    assert abs(verified.expires_at - result.expires_at) <= 2


def test_token_is_only_for_its_audience(mesh_ca, users: UserStore) -> None:  # type: ignore[no-untyped-def]
    td = mesh_ca.trust_domain
    token = LoginService(users, _signer(mesh_ca, "auth"), [td.service("gateway")]).login(
        "bob", "pw-b").token
    with pytest.raises(AudienceMismatch):
        ChainVerifier(td.service("orders"), FileBundleSource(mesh_ca.bundle_path)).verify(
            token, None)


def test_a_login_service_not_named_auth_is_not_trusted(mesh_ca, users: UserStore) -> None:  # type: ignore[no-untyped-def]
    td = mesh_ca.trust_domain
    rogue = LoginService(users, _signer(mesh_ca, "reporting"), [td.service("gateway")])
    token = rogue.login("alice", "pw-a").token
    with pytest.raises(IssuerUntrusted):
        ChainVerifier(td.service("gateway"), FileBundleSource(mesh_ca.bundle_path)).verify(
            token, None)


@pytest.mark.parametrize(("username", "password"), [("alice", "pw-b"), ("carol", "pw-a")])
def test_bad_credentials_mint_nothing(mesh_ca, users: UserStore, username: str,  # type: ignore[no-untyped-def]
                                      password: str) -> None:
    minted: list[str] = []
    signer = _signer(mesh_ca, "auth")

    class Counting:
        def user_token(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            minted.append("x")
            return signer.user_token(*args, **kwargs)

    service = LoginService(users, Counting(), [mesh_ca.trust_domain.service("gateway")])
    with pytest.raises(InvalidCredentials):
        service.login(username, password)
    assert minted == []
    service.login("bob", "pw-b")
    assert minted == ["x"]


def test_configuration_errors(mesh_ca, users: UserStore) -> None:  # type: ignore[no-untyped-def]
    signer = _signer(mesh_ca, "auth")
    with pytest.raises(ValueError, match="audience"):
        LoginService(users, signer, [])
    with pytest.raises(ValueError, match="positive"):
        LoginService(users, signer, [mesh_ca.trust_domain.service("gateway")], ttl=0)
