"""Policy decisions and the TOML loader (default deny, line numbers in errors)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.identity.spiffeid import SpiffeId, TrustDomain
from mesh.policy import (
    ALLOWED,
    CHAIN_NOT_ALLOWED,
    NO_POLICY_RULE,
    PEER_NOT_ALLOWED,
    ROLE_MISSING,
    SCOPE_MISSING,
    USER_REQUIRED,
    Policy,
    PolicyError,
    PolicyFileError,
    Rule,
    load_policy,
    parse_policy,
)

TD = TrustDomain("mesh.internal")
GET = "/shop.v1.Orders/Get"


@dataclass(frozen=True)
class Call:
    peer: SpiffeId | None
    chain: tuple[SpiffeId, ...]
    user: str | None = "alice"
    kind: str = "user"
    user_claims: Mapping[str, Any] = field(default_factory=dict)


def svc(*names: str) -> tuple[SpiffeId, ...]:
    return tuple(TD.service(n) for n in names)


def user_call(*chain: str, **claims: Any) -> Call:
    ids = svc(*chain)
    return Call(peer=ids[-1], chain=ids, user_claims=claims)


def app_call(peer: str) -> Call:
    return Call(peer=TD.service(peer), chain=svc(peer), user=None, kind="service")


EXAMPLE = """\
trust_domain = "mesh.internal"

[[rule]]
name = "read orders"
methods = ["/shop.v1.Orders/Get", "/shop.v1.Orders/List"]
chains = [["gateway"], ["gateway", "reporting"]]
scopes = ["orders:read"]

[[rule]]
name = "inventory service-wide"
methods = ["/shop.v1.Inventory/*"]
peers = ["orders", "spiffe://mesh.internal/svc/admin"]
allow_app_tokens = true

[[rule]]
name = "refunds"
methods = ["/shop.v1.Orders/Refund"]
peers = ["gateway"]
roles = ["support", "admin"]
"""


def test_toml_example_decides_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(EXAMPLE)
    policy = load_policy(path)
    assert policy.decide(GET, user_call("gateway", scope="orders:read")).reason == ALLOWED
    d = policy.decide(GET, user_call("gateway", "reporting", scope="orders:read x"))
    assert (d.allowed, d.rule) == (True, "read orders")
    assert policy.decide(GET, user_call("reporting", scope="orders:read")).reason == (
        CHAIN_NOT_ALLOWED)
    assert policy.decide(GET, user_call("gateway", scope="orders:write")).reason == SCOPE_MISSING
    assert policy.decide(GET, user_call("gateway")).reason == SCOPE_MISSING
    inv = "/shop.v1.Inventory/Reserve"
    assert policy.decide(inv, app_call("orders")).reason == ALLOWED
    assert policy.decide(inv, app_call("admin")).reason == ALLOWED
    assert policy.decide(inv, app_call("payments")).reason == PEER_NOT_ALLOWED
    refund = "/shop.v1.Orders/Refund"
    assert policy.decide(refund, user_call("gateway", roles=("support",))).reason == ALLOWED
    assert policy.decide(refund, user_call("gateway", roles=["buyer"])).reason == ROLE_MISSING
    assert policy.decide(refund, app_call("gateway")).reason == USER_REQUIRED
    d = policy.decide("/shop.v1.Orders/Delete", user_call("gateway"))
    assert (d.allowed, d.reason, d.rule) == (False, NO_POLICY_RULE, "default deny")


def test_most_specific_rule_wins() -> None:
    policy = Policy([
        Rule(methods=("*",), peers=("*",), require_user=False, name="anyone"),
        Rule(methods=("/a.S/*",), peers=("x",), require_user=False, name="service"),
        Rule(methods=("/a.S/M",), peers=("y",), require_user=False, name="method"),
    ])
    assert policy.rule_for("/a.S/M") == "method"
    assert policy.rule_for("/a.S/N") == "service"
    assert policy.rule_for("/b.S/M") == "anyone"
    assert policy.decide("/a.S/M", app_call("x")).reason == PEER_NOT_ALLOWED
    assert policy.decide("/a.S/N", app_call("x")).allowed


def test_empty_policy_denies_everything() -> None:
    assert Policy([]).decide(GET, user_call("gateway")).reason == NO_POLICY_RULE


@pytest.mark.parametrize(("rule", "message"), [
    (Rule(methods=(GET,)), "must say who may call"),
    (Rule(methods=(GET,), peers=("*", "a")), "mixes '*'"),
    (Rule(methods=("Get",), peers=("a",)), "method pattern 'Get' is invalid"),
    (Rule(methods=(), peers=("a",)), "covers no method"),
    (Rule(methods=(GET,), peers=("Bad_Name",)), "service name"),
    (Rule(methods=(GET,), chains=((),)), "at least one service"),
    (Rule(methods=(GET,), peers=("a",), scopes=("a b",)), "contains a space"),
])
def test_bad_python_rules_are_refused(rule: Rule, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy([rule])


def test_duplicate_method_names_the_other_rule() -> None:
    with pytest.raises(PolicyError, match="already covered by first"):
        Policy([Rule(methods=(GET,), peers=("a",), name="first"),
                Rule(methods=(GET,), peers=("b",), name="second")])


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[[rule]]\nmethods = ["/a.S/M"]\npeers = ["a"]\nscopez = ["x"]\n', 4, "unknown key 'scopez'"),
    ('[[rule]]\nmethods = ["/a.S/M"]\npeers = "a"\n', 3, "peers .* must be a list of strings"),
    ('[[rule]]\nmethods = ["/a.S/M"]\npeers = ["a"]\nrequire_user = "yes"\n', 4,
     "must be true or false"),
    ('[[rule]]\nmethods = ["/a.S/M"]\npeers = ["a"]\n\n[[rule]]\nmethods = ["/a.S/M"]\n'
     'peers = ["b"]\n', 5, "already covered"),
    ('[[rule]]\nmethods = ["/a.S/M"]\n', 1, "must say who may call"),
    ('[[rule]]\nmethods = ["/a.S/M"\n', 2, "not valid TOML"),
    ('[[rule]]\npeers = ["a"]\n', 1, "has no methods"),
    ('trust_domain = "Bad!"\n[[rule]]\nmethods = ["*"]\npeers = ["a"]\n', 1, "trust domain"),
    ('rules = 1\n', 1, "unknown key 'rules'"),
    ('trust_domain = "mesh.internal"\n', None, "no \\[\\[rule\\]\\] table"),
    ('[[rule]]\nmethods = ["*"]\npeers = ["a"]\nrequire_user = true\nallow_app_tokens = true\n',
     5, "contradict"),
    ('[[rule]]\nmethods = ["*"]\nchains = ["a"]\n', 3, "list of lists"),
])
def test_bad_toml_names_line_and_reason(text: str, line: int | None, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message) as exc:
        parse_policy(text, source="p.toml")
    assert exc.value.line == line
    assert str(exc.value).startswith(f"p.toml:{line}: " if line else "p.toml: ")


def test_missing_file_is_a_policy_file_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policy(tmp_path / "nope.toml")


def test_allow_app_tokens_is_the_inverse_of_require_user() -> None:
    policy = parse_policy('[[rule]]\nmethods = ["*"]\npeers = ["a"]\nallow_app_tokens = true\n')
    assert policy.decide(GET, app_call("a")).allowed
    policy = parse_policy('[[rule]]\nmethods = ["*"]\npeers = ["a"]\n')
    assert policy.decide(GET, app_call("a")).reason == USER_REQUIRED


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_loads_or_fails_with_a_policy_file_error(text: str) -> None:
    try:
        parse_policy(text)
    except PolicyFileError as err:
        assert err.reason


_names = st.sampled_from(["gateway", "orders", "*", "spiffe://mesh.internal/svc/x", "B@d", 1])
_values = st.one_of(st.booleans(), st.integers(), st.lists(_names, max_size=3),
                    st.lists(st.lists(_names, max_size=3), max_size=2), _names)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["methods", "peers", "chains", "require_user",
                                        "allow_app_tokens", "scopes", "roles", "name", "x"]),
                       _values, max_size=6))
def test_structured_rules_load_or_fail_cleanly(rule: dict[str, Any]) -> None:
    import tomllib  # noqa: F401  (the writer below only emits what tomllib reads back)

    def toml(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v + '"'
        return "[" + ", ".join(toml(x) for x in v) + "]"

    text = "[[rule]]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in rule.items())
    try:
        policy = parse_policy(text)
    except PolicyFileError as err:
        assert err.line is None or 1 <= err.line <= text.count("\n")
        return
    assert isinstance(policy.decide(GET, user_call("gateway")).allowed, bool)


def test_deny_all_is_explicit_in_python_and_toml() -> None:
    for policy in (Policy.deny_all(), parse_policy("deny_all = true\n")):
        decision = policy.decide(GET, user_call("gateway"))
        assert (decision.allowed, decision.reason, decision.rule) == (
            False, NO_POLICY_RULE, "deny_all")
        assert policy.denies_all
    # control: an ordinary policy is not deny-all, and a file with no rule is still refused
    assert not Policy([]).denies_all
    with pytest.raises(PolicyFileError, match="deny_all = true if that is the intent"):
        parse_policy("deny_all = false\n")


@pytest.mark.parametrize(("text", "line", "message"), [
    ('deny_all = "yes"\n', 1, "deny_all must be true or false"),
    ('trust_domain = "mesh.internal"\ndeny_all = true\n[[rule]]\nmethods = ["*"]\n'
     'peers = ["a"]\n', 2, "remove one or the other"),
])
def test_bad_deny_all_names_line_and_reason(text: str, line: int, message: str) -> None:
    with pytest.raises(PolicyFileError, match=message) as exc:
        parse_policy(text, source="p.toml")
    assert exc.value.line == line
