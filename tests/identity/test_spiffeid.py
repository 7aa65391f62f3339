"""SPIFFE ID parsing: the rules of SPIFFE-ID.md, each with a negative control."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import InvalidSpiffeIdError, MeshError
from mesh.identity.spiffeid import SpiffeId, TrustDomain, validate_service_name


def test_service_id_and_dns_name() -> None:
    td = TrustDomain("mesh.internal")
    sid = td.service("orders")
    assert str(sid) == "spiffe://mesh.internal/svc/orders"
    assert sid.service_name == "orders"
    assert td.service_dns_name("orders") == "orders.svc.mesh.internal"
    assert SpiffeId.parse(str(sid)) == sid
    assert str(td.id) == "spiffe://mesh.internal"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("http://mesh.internal/svc/a", "must start with 'spiffe://'"),
        ("SPIFFE://mesh.internal/svc/a", "must start with 'spiffe://'"),
        ("spiffe://", "trust domain is empty"),
        ("spiffe:///svc/a", "trust domain is empty"),
        ("spiffe://Mesh.internal/svc/a", "lowercase"),
        ("spiffe://mesh.internal:443/svc/a", "port"),
        ("spiffe://user@mesh.internal/svc/a", "user info"),
        ("spiffe://mesh.internal/svc/a?x=1", "query or fragment"),
        ("spiffe://mesh.internal/svc/a#f", "query or fragment"),
        ("spiffe://mesh.internal/", "empty segment"),
        ("spiffe://mesh.internal//a", "empty segment"),
        ("spiffe://mesh.internal/svc/../a", "'..' segment"),
        ("spiffe://mesh.internal/./a", "'.' or '..'"),
        ("spiffe://mesh.internal/svc/a%20b", "character outside"),
        ("spiffe://mesh.internal/" + "a" * 2100, "longer than"),
    ],
)
def test_invalid_ids_name_the_rule(value: str, fragment: str) -> None:
    with pytest.raises(InvalidSpiffeIdError, match="(?i)" + fragment.replace("?", r"\?")):
        SpiffeId.parse(value)


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a.b", "x" * 64, "é"])
def test_invalid_service_names(name: str) -> None:
    with pytest.raises(InvalidSpiffeIdError, match="service name"):
        validate_service_name(name)


def test_non_service_paths_have_no_service_name() -> None:
    assert SpiffeId.parse("spiffe://mesh.internal/ns/x").service_name is None
    assert SpiffeId.parse("spiffe://mesh.internal/svc/a/b").service_name is None
    assert SpiffeId.parse("spiffe://mesh.internal/svc/Ab").service_name is None


@given(st.text(max_size=80))
def test_parse_never_raises_anything_else(value: str) -> None:
    try:
        sid = SpiffeId.parse(value)
    except MeshError as err:
        assert isinstance(err, InvalidSpiffeIdError)
    else:
        assert str(sid) == value


@given(
    st.from_regex(r"[a-z0-9._-]{1,20}", fullmatch=True),
    st.lists(st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,10}", fullmatch=True), max_size=4),
)
def test_round_trip(td: str, segments: list[str]) -> None:
    segments = [s for s in segments if s not in (".", "..")]
    uri = "spiffe://" + td + "".join("/" + s for s in segments)
    assert str(SpiffeId.parse(uri)) == uri
