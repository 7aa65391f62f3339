"""Service names and SPIFFE IDs are accepted in the same forms everywhere, or refused when the
object is built (never by failing every call later)."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.errors import ConfigError, InvalidSpiffeIdError
from mesh.identity.spiffeid import SpiffeId, spiffe_id
from mesh.policy import Policy, Rule
from mesh.tokens import ChainVerifier
from mesh.transport.channel import MeshChannel

FORMS = ["gateway", "spiffe://mesh.internal/svc/gateway"]


def test_spiffe_id_takes_three_forms_and_nothing_else(mesh: Any) -> None:
    want = mesh.id("gateway")
    assert spiffe_id("gateway", mesh.td) == want
    assert spiffe_id("spiffe://mesh.internal/svc/gateway") == want
    assert spiffe_id(want) is want
    for bad in ("Gateway", "gate way", "spiffe://mesh.internal/svc/../x", "", "-x"):
        with pytest.raises(InvalidSpiffeIdError):
            spiffe_id(bad, mesh.td)
    with pytest.raises(InvalidSpiffeIdError, match="no trust domain"):
        spiffe_id("gateway")


@pytest.mark.parametrize("form", FORMS)
def test_a_verifier_named_either_way_accepts_its_tokens(mesh: Any, form: str) -> None:
    verifier = ChainVerifier(form, mesh.bundle())
    assert verifier.own_id == mesh.id("gateway")
    assert verifier.verify(mesh.user_token("gateway"), None).user == "alice"


def test_a_verifier_with_a_bad_name_is_refused_when_built(mesh: Any) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        ChainVerifier("Gateway!", mesh.bundle())


@pytest.mark.parametrize("form", FORMS)
def test_trusted_issuers_named_either_way(mesh: Any, form: str) -> None:
    from mesh.tokens import VerifyLimits

    issuer = form.replace("gateway", "auth")
    verifier = ChainVerifier("gateway", mesh.bundle(),
                             limits=VerifyLimits(trusted_user_issuers=(issuer,)))
    assert verifier.trusted_user_issuers == frozenset({mesh.id("auth")})


@pytest.mark.parametrize("form", ["orders", "spiffe://mesh.internal/svc/orders"])
def test_a_channel_named_either_way_pins_the_same_name(mesh: Any, form: str) -> None:
    channel = MeshChannel("127.0.0.1:1", form, mesh.identity("gateway"))
    try:
        assert channel.callee == mesh.id("orders")
    finally:
        channel.close()


def test_a_channel_to_a_non_service_id_is_refused_when_built(mesh: Any) -> None:
    with pytest.raises(ConfigError, match="not a mesh service"):
        MeshChannel("127.0.0.1:1", "spiffe://mesh.internal/ns/x", mesh.identity("gateway"))


@pytest.mark.parametrize("form", FORMS)
def test_policies_and_signers_take_either_form(mesh: Any, form: str) -> None:
    policy = Policy([Rule(methods=("*",), peers=(form,), require_user=False)])
    chain = mesh.verifier("orders").verify(mesh.signers["gateway"].app_token("orders"),
                                           mesh.cert("gateway"))
    assert policy.decide("/x.Y/Z", chain).allowed
    token = mesh.signers["auth"].user_token("alice", [form])
    assert mesh.verifier("gateway").verify(token, None).user == "alice"
    assert isinstance(mesh.id("gateway"), SpiffeId)
