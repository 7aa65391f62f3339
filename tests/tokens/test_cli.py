"""``mesh token verify`` / ``mesh token inspect``: output and exit codes.

The ``mesh`` fixture's clock starts at real time and is not moved here, so the subprocess (which
reads the real clock) sees the same time.

A few runs go through a real subprocess (``python -m mesh.cli``); the rest call ``main``
in-process, which is the same code without the interpreter start-up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh.cli import main


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args], input=stdin, capture_output=True,
        text=True, timeout=60, check=False,
    )


def _files(mesh: Any, tmp_path: Path) -> dict[str, str]:
    peer = tmp_path / "orders.pem"
    peer.write_bytes(mesh.svids["orders"].chain_pem())
    return {"bundle": str(mesh.ca.bundle_path), "crl": str(mesh.ca.crl_path), "peer": str(peer)}


def _secrets_of(token: str) -> list[str]:
    """Every signature of every layer (base64url), which output must never contain."""
    import base64
    import json

    out = []
    while token:
        _, p, s = token.split(".")
        out.append(s)
        token = json.loads(base64.urlsafe_b64decode(p + "==")).get("upstream", "")
    return out


@pytest.mark.slow
def test_verify_in_a_subprocess(mesh: Any, tmp_path: Path) -> None:
    f = _files(mesh, tmp_path)
    token = mesh.chain("gateway", "orders", "payments")
    ok = _run("token", "verify", "-", "--bundle", f["bundle"], "--crl", f["crl"],
              "--audience", str(mesh.id("payments")), "--peer-cert", f["peer"], stdin=token)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == ("VERIFIED for spiffe://mesh.internal/svc/payments, over mutual TLS "
                        "from spiffe://mesh.internal/svc/orders")
    assert "user alice through spiffe://mesh.internal/svc/gateway -> " \
           "spiffe://mesh.internal/svc/orders" in lines[1]
    hop_lines = [line.strip() for line in lines[2:]]
    assert [h.split(":")[0] for h in hop_lines] == [
        "└─ hop 2 user+jwt", "└─ hop 1 app-asserted+jwt", "└─ hop 0 app-asserted+jwt"]
    assert "iss spiffe://mesh.internal/svc/auth  aud spiffe://mesh.internal/svc/gateway  " \
           "sub alice  exp " in hop_lines[0]
    assert f"kid {mesh.kid('orders')}" in hop_lines[2]
    assert len(hop_lines) == 3  # --crl given: no note about unchecked revocation
    for sig in _secrets_of(token):
        assert sig not in ok.stdout
    assert token.split(".")[1] not in ok.stdout

    bad = _run("token", "verify", token, "--bundle", f["bundle"], "--audience",
               str(mesh.id("inventory")), "--peer-cert", f["peer"])
    assert bad.returncode == 1
    assert bad.stdout.startswith(
        "REJECTED at hop 0, the outermost token (signed by the peer): AUDIENCE_MISMATCH "
        "(UNAUTHENTICATED)\n  token audience spiffe://mesh.internal/svc/payments is not this "
        "service spiffe://mesh.internal/svc/inventory")

    usage = _run("token", "verify", token, "--bundle", f["bundle"])
    assert usage.returncode == 2
    assert "--audience" in usage.stderr


@pytest.mark.slow
def test_inspect_in_a_subprocess(mesh: Any) -> None:
    token = mesh.chain("gateway", "orders")
    out = _run("token", "inspect", "-", stdin=f"Bearer {token}\n")
    assert out.returncode == 0
    assert out.stdout.startswith("UNVERIFIED: decoded WITHOUT checking")
    assert out.stdout.rstrip().endswith("audience or time.")
    assert "hop 0 (outermost):" in out.stdout and "hop 1:" in out.stdout
    assert "upstream: <a wrapped token of" in out.stdout
    for sig in _secrets_of(token):
        assert sig not in out.stdout
    garbage = _run("token", "inspect", "a.b")
    assert garbage.returncode == 1
    assert "TOKEN_MALFORMED" in garbage.stdout


def test_edge_verify_and_rejection_at_an_inner_hop(
    mesh: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _files(mesh, tmp_path)
    user = mesh.user_token("gateway")
    assert main(["token", "verify", user, "--bundle", f["bundle"],
                 "--audience", str(mesh.id("gateway"))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VERIFIED for spiffe://mesh.internal/svc/gateway, at an edge port\n")
    assert "user alice, directly from the user token" in out
    assert out.rstrip().endswith("note: no --crl given, so revocation was not checked")

    rogue = mesh.signers["inventory"].user_token("mallory", [mesh.id("gateway")])
    token = mesh.wrap(mesh.wrap(rogue, "gateway", "orders"), "orders", "payments")
    assert main(["token", "verify", token, "--bundle", f["bundle"], "--audience",
                 str(mesh.id("payments")), "--peer-cert", f["peer"]]) == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECTED at hop 2, the token wrapped 2 level(s) deep: "
                          "ISSUER_UNTRUSTED (UNAUTHENTICATED)")
    # ... unless that issuer is trusted explicitly
    assert main(["token", "verify", token, "--bundle", f["bundle"], "--audience",
                 str(mesh.id("payments")), "--peer-cert", f["peer"],
                 "--trusted-issuer", str(mesh.id("inventory"))]) == 0
    capsys.readouterr()


def test_revoked_peer_certificate(
    mesh: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _files(mesh, tmp_path)
    token = mesh.chain("gateway", "orders", "payments")
    mesh.ca.revoke(name="orders")
    args = ["token", "verify", token, "--bundle", f["bundle"], "--audience",
            str(mesh.id("payments")), "--peer-cert", f["peer"]]
    assert main([*args, "--crl", f["crl"]]) == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECTED at the peer's certificate (rule 4.1): CERT_REVOKED")


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience", "not-a-spiffe-id"],
        ["token", "verify", "x", "--bundle", "/nonexistent.json", "--audience",
         "spiffe://mesh.internal/svc/a"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/svc/a", "--peer-cert", "/nonexistent.pem"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/svc/a", "--trusted-issuer", "https://x"],
        ["token"],
        ["token", "sign"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/svc/a", "--dpop", "a.b.c"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/svc/a", "--method", "/p.S/M", "--peer-cert", "{bundle}"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/svc/a", "--method", "p.S/M"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/svc/a", "--method", "/p.S/M/X"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/agent/n1", "--method", "/p.S/M"],
        ["token", "verify", "x", "--bundle", "{bundle}", "--audience",
         "spiffe://mesh.internal/svc/a", "--method", "/p.S/M", "--dpop-window", "0"],
    ],
)
def test_usage_errors_exit_2(
    mesh: Any, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{bundle}", str(mesh.ca.bundle_path)) for a in argv]
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err


def test_inspect_names_forbidden_header_members_without_printing_them(
    mesh: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    header = {"alg": "ES256", "kid": mesh.kid("gateway"), "typ": "app+jwt",
              "jwk": {"kty": "EC", "x": "SECRETX", "y": "SECRETY"}}
    token = mesh.forge(header, mesh.claims("app+jwt", "gateway", "orders"), mesh.key("gateway"))
    assert main(["token", "inspect", token]) == 0
    out = capsys.readouterr().out
    assert "jwk=<present, not shown>" in out
    assert "SECRETX" not in out
    assert "problem: HEADER_INVALID" in out


# --- DPoP (spec 4.7) ---------------------------------------------------------------------------

PLACE = "/mesh.demo.v1.GatewayService/PlaceOrder"


def test_verify_an_edge_call_with_its_proof(
    mesh: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from mesh.dpop import DpopClient

    client = DpopClient()
    token = mesh.bound_user_token(client)
    base = ["token", "verify", "--bundle", str(mesh.ca.bundle_path), "--crl",
            str(mesh.ca.crl_path), "--audience", str(mesh.id("gateway"))]
    proof = client.proof_for(mesh.id("gateway"), PLACE, token=token)
    assert main([*base[:2], token, *base[2:], "--method", PLACE, "--dpop", proof]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VERIFIED for spiffe://mesh.internal/svc/gateway, at an edge port\n")
    assert (f"DPoP: proof for https://gateway.svc.mesh.internal{PLACE} made " in out
            and f"with the key the token is bound to (jkt {client.jkt})" in out)
    assert proof.split(".")[2] not in out and client.jwk["x"] not in out
    # the same in JSON, with a fresh proof ("DPoP <token>" as sent is accepted as the token)
    fresh = client.proof_for(mesh.id("gateway"), PLACE, token=token)
    assert main([*base[:2], f"DPoP {token}", *base[2:], "--method", PLACE, "--dpop", fresh,
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dpop_checked"] is True and doc["dpop"]["jkt"] == client.jkt
    # without --method only the token rules are checked, and it says so
    assert main([*base[:2], token, *base[2:]]) == 0
    assert "only the token rules were checked" in capsys.readouterr().out
    assert main([*base[:2], token, *base[2:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dpop_checked"] is False

    def rejected(*extra: str, tok: str = token) -> str:
        assert main([*base[:2], tok, *base[2:], *extra, "--json"]) == 1
        return str(json.loads(capsys.readouterr().out)["reason"])

    assert rejected("--method", PLACE) == "DPOP_MISSING"
    assert rejected("--method", "/mesh.demo.v1.GatewayService/ListOrders", "--dpop",
                    client.proof_for(mesh.id("gateway"), PLACE, token=token)) == (
        "DPOP_HTU_MISMATCH")
    assert rejected("--method", PLACE, "--dpop", DpopClient().proof_for(
        mesh.id("gateway"), PLACE, token=token)) == "DPOP_KEY_MISMATCH"
    assert rejected("--method", PLACE, "--dpop", client.proof_for(
        mesh.id("gateway"), PLACE, token=token), tok=f"Bearer {token}") == "DPOP_MISSING"
    unbound = mesh.user_token("gateway")
    assert rejected("--method", PLACE, "--dpop", client.proof_for(
        mesh.id("gateway"), PLACE, token=unbound), tok=unbound) == "USER_TOKEN_UNBOUND"
    # the text form names the proof as the failing part
    assert main([*base[:2], token, *base[2:], "--method", PLACE]) == 1
    assert capsys.readouterr().out.startswith(
        "REJECTED at the DPoP proof (spec 4.7): DPOP_MISSING (UNAUTHENTICATED)")


def test_inspect_shows_the_binding_and_decodes_a_proof(
    mesh: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from mesh.dpop import DpopClient

    client = DpopClient()
    token = mesh.bound_user_token(client)
    assert main(["token", "inspect", token]) == 0
    out = capsys.readouterr().out
    assert f"binding: DPoP key jkt={client.jkt}" in out
    assert main(["token", "inspect", mesh.user_token("gateway")]) == 0
    assert "binding: none (a bearer token)" in capsys.readouterr().out
    proof = client.proof_for(mesh.id("gateway"), PLACE, token=token)
    assert main(["token", "inspect", proof]) == 0
    out = capsys.readouterr().out
    assert "DPoP proof:" in out and f"key: EC P-256, jkt {client.jkt}" in out
    assert f"htu: https://gateway.svc.mesh.internal{PLACE}" in out
    assert "jwk=<public key, see jkt>" in out
    assert client.jwk["x"] not in out and proof.split(".")[2] not in out
    assert out.startswith("UNVERIFIED") and "problem" not in out
    # beside its token: both match
    assert main(["token", "inspect", token, "--dpop", proof]) == 0
    out = capsys.readouterr().out
    assert "key is the token's cnf.jkt: yes" in out and "ath is the token's hash: yes" in out
    # a proof by another key, for another token: both said, still exit 0 (nothing verified)
    other = DpopClient().proof_for(mesh.id("gateway"), PLACE, token="another")
    assert main(["token", "inspect", token, "--dpop", other]) == 0
    out = capsys.readouterr().out
    assert "key is the token's cnf.jkt: NO: another key" in out
    assert "ath is the token's hash: NO: made for another token" in out
    # a proof with its private key in the jwk: the problem is named, the key is not printed
    forged = mesh.forge({"typ": "dpop+jwt", "alg": "ES256",
                         "jwk": {**client.jwk, "d": "PRIVATEKEYBYTES"}},
                        {"jti": "j", "htm": "POST", "htu": "h", "iat": 1}, mesh.key("auth"))
    assert main(["token", "inspect", forged]) == 0
    out = capsys.readouterr().out
    assert "problem: DPOP_JWK_PRIVATE" in out and "PRIVATEKEYBYTES" not in out
