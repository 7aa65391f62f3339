"""The identity folder takes only a set this service may become (fault tests on a live server).

A pair landing in the folder that is expired, not yet valid, or another service's keeps the
current identity: new connections still succeed with it, and one WARNING names the rule, once
per distinct bad state (a file missing for many polls is reported once too). Each has a control:
a good renewed pair is taken.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from support.minimesh import UNARY, decode

from mesh.policy import Policy, Rule

POLICY = Policy([Rule(methods=("*",), peers=("gateway",), require_user=False)])


def _serve_orders(mesh: Any) -> tuple[Any, int]:
    source = mesh.identity("orders", poll=0)
    port = mesh.serve("orders", POLICY, source=source)
    return source, port


def _fresh_call(mesh: Any, port: int) -> dict[str, Any]:
    """A call on a NEW connection (a new channel each time): it sees the certificate served now."""
    channel = mesh.channel(port, "orders", mesh.identity("gateway"))
    try:
        return decode(channel.unary_unary(UNARY)(b"x", timeout=10))  # type: ignore[no-any-return]
    finally:
        channel.close()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "mesh.identity.svid" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("offset", "rule"),
    [(timedelta(hours=-3), "not valid now"), (timedelta(hours=2), "not valid now")],
    ids=["expired", "not-yet-valid"],
)
def test_a_pair_outside_its_validity_is_not_taken(
        mesh: Any, caplog: pytest.LogCaptureFixture, offset: timedelta, rule: str) -> None:
    source, port = _serve_orders(mesh)
    first = source.current()
    caplog.set_level(logging.WARNING, logger="mesh.identity.svid")
    bad = mesh.ca.issue("orders", not_before=datetime.now(UTC) + offset, ttl=timedelta(hours=1))
    bad.write_to(mesh.folder("orders"))
    for _ in range(5):
        assert source.current() is first
        assert source.refresh() is False
    assert _fresh_call(mesh, port)["peer"] == str(mesh.id("gateway"))
    warned = _warnings(caplog)
    assert len(warned) == 1 and rule in warned[0] and "keeping spiffe://" in warned[0]
    # control: a good renewal is taken, and the warning state is cleared
    mesh.rotate("orders")
    assert source.refresh() is True
    assert source.current().leaf == mesh.cert("orders")
    assert _fresh_call(mesh, port)["peer"] == str(mesh.id("gateway"))


def test_another_services_pair_is_not_taken(mesh: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    source, port = _serve_orders(mesh)
    first = source.current()
    caplog.set_level(logging.WARNING, logger="mesh.identity.svid")
    mesh.ca.issue("payments").write_to(mesh.folder("orders"))  # valid, matching, not orders
    for _ in range(5):
        assert source.refresh() is False
    assert source.current() is first and source.spiffe_id == mesh.id("orders")
    # New connections still get orders' certificate: the client pins orders.svc.<td>, so a
    # payments certificate would fail the handshake.
    assert _fresh_call(mesh, port)["peer"] == str(mesh.id("gateway"))
    warned = _warnings(caplog)
    assert len(warned) == 1
    assert "is for spiffe://mesh.internal/svc/payments" in warned[0]
    assert "never changes who it is" in warned[0]


def test_a_missing_file_is_reported_once_not_every_poll(
        mesh: Any, caplog: pytest.LogCaptureFixture) -> None:
    source, port = _serve_orders(mesh)
    caplog.set_level(logging.WARNING, logger="mesh.identity.svid")
    (mesh.folder("orders") / "svid.pem").unlink()
    for _ in range(20):
        assert source.refresh() is False
    assert _fresh_call(mesh, port)["kind"] == "service"
    warned = _warnings(caplog)
    assert len(warned) == 1 and "cannot stat" in warned[0]
    mesh.rotate("orders")  # the writer finishes: taken, and a later fault is reported again
    assert source.refresh() is True
    (mesh.folder("orders") / "svid_key.pem").unlink()
    assert source.refresh() is False
    assert len(_warnings(caplog)) == 2


def test_an_expired_pair_does_not_break_handshakes_under_traffic(mesh: Any) -> None:
    """The fault that was seen: an expired pair loaded, then new handshakes failed."""
    source, port = _serve_orders(mesh)
    bad = mesh.ca.issue("orders", not_before=datetime.now(UTC) - timedelta(hours=3),
                        ttl=timedelta(hours=1))
    bad.write_to(mesh.folder("orders"))
    source.refresh()
    failures = 0
    for _ in range(10):
        try:
            _fresh_call(mesh, port)
        except grpc.RpcError:
            failures += 1
    assert failures == 0
