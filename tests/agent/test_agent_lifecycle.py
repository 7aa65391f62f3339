"""The agent's life on one host against the real CA service: attestation, restart from state,
its own renewal with a new key, a CA outage, refusals as the agent reports them, the CA's
SVID limit, eviction and revocation."""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from mesh.agent.agent import AgentExit
from mesh.agent.state import NODE_FILE

from .conftest import wait_for


def _pub(svid):
    return svid.chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _state(agent, name: str) -> str | None:
    """The state the agent tracks for ``name`` (read from another thread: a single attribute,
    for waiting on; read several fields together with ``t.call``)."""
    tracked = agent.tracked.get(name)
    return None if tracked is None else tracked.state


def _exit_code(t) -> int:
    t.thread.join(30)
    assert t.result.done(), "the agent is still running"
    err = t.result.exception()
    assert isinstance(err, AgentExit), err
    return err.code


def test_restart_needs_no_token_and_keeps_state_private(ca_service, agent_runner):
    ca_service.register("node-a", "orders", uid=0, ttl=3600)
    t = agent_runner()
    agent = t.wait_ready()
    serial = agent.agent_svid.serial
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    orders_serial = agent.store.svids["orders"].serial
    state = t.config.state
    assert t.stop() == 0
    assert os.stat(state).st_mode & 0o777 == 0o700
    assert os.stat(state / "agent" / "svid_key.pem").st_mode & 0o777 == 0o600
    assert ca_service.issued("node-a", "agent") == [serial]
    t2 = agent_runner(token=None, state=state)
    agent2 = t2.wait_ready()
    assert agent2.agent_svid.serial == serial  # the stored agent SVID, no new attestation
    assert agent2.store.svids["orders"].serial == orders_serial  # served at once after restart
    assert ca_service.issued("node-a", "agent") == [serial]
    assert ca_service.issued("node-a", "workload") == [orders_serial]


def test_agent_renews_itself_with_a_new_key_and_moves_everything_to_it(start_ca, agent_runner):
    ca = start_ca(agent_ttl=timedelta(seconds=4))
    t = agent_runner(ca=ca)
    agent = t.wait_ready()
    first = agent.agent_svid
    wait_for(lambda: agent.agent_svid.serial != first.serial, timeout=10, what="agent renewal")
    second = agent.agent_svid
    assert _pub(second) != _pub(first)
    # renewal started before half the life: the new certificate came before first + L/2 (+slack)
    assert second.issued_at <= first.issued_at + first.lifetime / 2 + 1
    assert second.serial in ca.issued("node-a", "agent")
    # Everything moved to the new certificate, the trust stream included: once the channel of
    # the first is closed, revoking the first certificate leaves the agent in good standing
    # (a stream left on it would be ended by the CA with CERT_REVOKED and stop the agent).
    wait_for(lambda: t.call(lambda: agent.ca._retired == []), what="old channel closed")
    sequence = agent.store.trust.sequence
    ca.revoke(first.serial)
    wait_for(lambda: agent.store.trust.sequence > sequence, what="the new CRL over WatchTrust")
    ca.register("node-a", "orders", uid=0, ttl=3600)
    wait_for(lambda: "orders" in agent.store.svids, what="an SVID issued after the revocation")
    assert agent.evicted is None


def test_ca_outage_past_renewal_point_keeps_serving_then_resumes(ca_service, agent_runner,
                                                                 caplog):
    caplog.set_level(logging.INFO, logger="mesh.agent")
    ca_service.register("node-a", "orders", uid=0, ttl=10)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    held = agent.store.svids["orders"]
    ca_service.stop()
    # past the renewal point (at most half of 10 s), before expiry
    wait_for(lambda: _state(agent, "orders") == "retrying", timeout=10,
             what="a renewal attempt failing")
    assert time.time() < held.not_after
    assert t.call(lambda: agent.store.svids_for(0)) == [held]  # still served
    assert len(_messages(caplog, "CA unreachable")) == 1, "one line per state change, not per retry"
    ca_service.start()  # the same ports
    wait_for(lambda: agent.store.svids["orders"].serial != held.serial, timeout=15,
             what="renewal after the CA returned")
    assert _messages(caplog, "CA reachable again")
    assert agent.store.svids["orders"].serial in ca_service.issued("node-a", "workload")


def test_svid_dropped_from_workload_api_at_expiry_when_ca_stays_down(ca_service, agent_runner):
    ca_service.register("node-a", "orders", uid=0, ttl=3)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    held = agent.store.svids["orders"]
    ca_service.stop()
    wait_for(lambda: _state(agent, "orders") == "expired", timeout=10, what="expired state")
    assert time.time() >= held.not_after
    assert t.call(lambda: agent.store.svids_for(0)) == []
    ca_service.start()
    wait_for(lambda: t.call(lambda: agent.store.svids_for(0)), timeout=15,
             what="a fresh SVID once the CA is back")


@pytest.mark.parametrize("case", ["used", "expired", "other-node", "unknown"])
def test_join_token_refusals_exit_2_and_write_nothing(ca_service, agent_runner, case):
    if case == "used":
        token = ca_service.join_token("node-a")
        agent_runner(token=token).wait_ready()  # control: the token works once
        reason = "JOIN_TOKEN_USED"
    elif case == "expired":
        token = ca_service.join_token("node-a", ttl=1)
        ca_service.clock.offset = 5  # the service's clock is past the token's expiry
        reason = "JOIN_TOKEN_EXPIRED"
    elif case == "other-node":
        token = ca_service.join_token("node-b")
        reason = "JOIN_TOKEN_NODE_MISMATCH"
    else:
        token = "meshjoin-" + "A" * 43  # well formed, never made
        reason = "JOIN_TOKEN_UNKNOWN"
    t = agent_runner(token=token)
    with pytest.raises(AgentExit) as ex:
        t.wait_ready()
    assert ex.value.code == 2 and reason in ex.value.message, ex.value.message
    assert token not in ex.value.message
    assert not (t.config.state / NODE_FILE).exists()
    assert not (t.config.state / "agent").exists()
    if case == "other-node":
        # the refusal spent nothing: the token still admits the node it names
        assert ca_service.token_used("node-b") == [False]
        agent_runner("node-b", token=token).wait_ready()
    if case == "expired":
        ca_service.clock.offset = 0  # control: the same token within its life is accepted
        agent_runner(token=token).wait_ready()


def test_wrong_fingerprint_is_refused_before_any_request(ca_service, agent_runner):
    token = ca_service.join_token("node-a")
    t = agent_runner(token=token, ca_fingerprint="ab" * 32)
    with pytest.raises(AgentExit) as ex:
        t.wait_ready()
    assert ex.value.code == 2 and "fingerprint" in ex.value.message
    assert ca_service.token_used("node-a") == [False]  # the token never reached the CA
    assert ca_service.issued("node-a", "agent") == []
    agent_runner(token=token).wait_ready()  # control: the right fingerprint, the same token


def test_unregistered_service_is_reported_and_others_go_on(ca_service, agent_runner):
    ca_service.register("node-a", "orders", uid=0, ttl=3600)
    ca_service.register("node-a", "payments", uid=0, ttl=3600)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: {"orders", "payments"} <= set(agent.store.svids), what="SVIDs")
    ca_service.unregister("node-a", "payments")
    wait_for(lambda: "payments" not in agent.store.svids, what="payments dropped")
    assert [s.name for s in t.call(lambda: agent.store.svids_for(0))] == ["orders"]


def test_issuance_refused_as_not_registered_is_reported_and_resyncs(ca_service, agent_runner,
                                                                    caplog):
    """The agent asks for a service the CA no longer registers to it (its own list is stale):
    the CA refuses NOT_REGISTERED, the agent says so and fetches the list at once."""
    caplog.set_level(logging.INFO, logger="mesh.agent")
    ca_service.register("node-a", "orders", uid=0, ttl=3600)
    ca_service.register("node-a", "payments", uid=0, ttl=3600)
    t = agent_runner(sync_interval=3600)  # no poll would notice during the test
    agent = t.wait_ready()
    wait_for(lambda: {"orders", "payments"} <= set(agent.store.svids), what="SVIDs")
    before = ca_service.issued("node-a", "workload", "payments")
    ca_service.unregister("node-a", "payments")
    assert "payments" in agent.store.registrations  # the agent has not heard yet
    t.call(agent.renew_now)
    wait_for(lambda: "payments" not in agent.store.registrations, timeout=10,
             what="the registration list fetched again after the refusal")
    [refusal] = _messages(caplog, "service payments: refused")
    assert "NOT_REGISTERED" in refusal
    assert ca_service.issued("node-a", "workload", "payments") == before  # nothing issued
    assert [s.name for s in t.call(lambda: agent.store.svids_for(0))] == ["orders"]


def test_svid_limit_uses_what_it_has_and_waits_for_a_free_slot(start_ca, agent_runner, caplog):
    caplog.set_level(logging.INFO, logger="mesh.agent")
    ca = start_ca(max_valid=2)
    ca.register("node-a", "orders", uid=0, ttl=60)
    t = agent_runner(ca=ca)
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    first = agent.store.svids["orders"]
    t.call(agent.renew_now)
    wait_for(lambda: agent.store.svids["orders"].serial != first.serial, what="second SVID")
    second = agent.store.svids["orders"]
    t.call(agent.renew_now)  # a third would be over the CA's limit of two
    wait_for(lambda: _state(agent, "orders") == "limited", what="SVID_LIMIT reported")
    detail, next_renewal = t.call(
        lambda: (agent.tracked["orders"].detail, agent.tracked["orders"].next_renewal))
    assert "SVID_LIMIT" in detail
    # it keeps using what it has, and asks again when the CA said a slot frees (the first
    # SVID's expiry, ~60 s away), not after the half-second retry cap
    assert t.call(lambda: agent.store.svids_for(0)) == [second]
    assert next_renewal is not None
    assert next_renewal >= first.not_after - 2
    assert t.call(agent.status)["services"][0]["state"] == "limited"
    assert len(_messages(caplog, "service orders: limited")) == 1
    assert ca.issued("node-a", "workload", "orders") == [first.serial, second.serial]
    # a slot freed by the operator, and SIGHUP: renewed at once
    ca.revoke(first.serial)
    t.call(agent.renew_now)
    wait_for(lambda: agent.store.svids["orders"].serial not in (first.serial, second.serial),
             what="a renewal once a slot is free")
    wait_for(lambda: _state(agent, "orders") == "ok", what="state ok again")


def test_eviction_stops_renewal_serves_until_expiry_then_exits_1(start_ca, agent_runner):
    ca = start_ca(agent_ttl=timedelta(seconds=4))
    ca.register("node-a", "orders", uid=0, ttl=4)
    t = agent_runner(ca=ca)
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    revoked = ca.evict("node-a")
    wait_for(lambda: agent.evicted == "NODE_EVICTED", timeout=10, what="eviction noticed")
    held = agent.store.svids["orders"]
    assert int(held.serial, 16) in revoked  # everything issued through the node is revoked
    assert t.call(agent.status)["evicted"] == "NODE_EVICTED"
    issued = ca.issued("node-a", "workload") + ca.issued("node-a", "agent")
    # served until it expires, never renewed; then (the agent SVID expired too) exit 1
    assert _exit_code(t) == 1
    assert time.time() >= held.not_after
    assert ca.issued("node-a", "workload") + ca.issued("node-a", "agent") == issued


def test_revoked_agent_certificate_is_treated_as_eviction(ca_service, agent_runner, caplog):
    caplog.set_level(logging.INFO, logger="mesh.agent")
    ca_service.register("node-a", "orders", uid=0, ttl=3600)
    t = agent_runner()
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    ca_service.revoke(agent.agent_svid.serial)
    wait_for(lambda: agent.evicted == "CERT_REVOKED", timeout=10, what="revocation noticed")
    # (read on the agent's loop: the eviction marks every identity in one step there)
    assert t.call(agent.status)["services"][0]["state"] == "evicted"
    [said] = _messages(caplog, "can no longer renew anything")
    assert "CERT_REVOKED" in said
    # it still serves what it holds (valid until it expires; peers refuse it by the CRL)
    assert t.call(lambda: agent.store.svids_for(0)) == [agent.store.svids["orders"]]


def test_agent_svid_expired_while_ca_down_stops_and_asks_for_a_new_token(start_ca,
                                                                         agent_runner):
    ca = start_ca(agent_ttl=timedelta(seconds=3))
    t = agent_runner(ca=ca)
    agent = t.wait_ready()
    ca.stop()
    wait_for(lambda: agent.evicted == "CERT_UNTRUSTED", timeout=15,
             what="the agent noticing its own SVID expired")
    assert _exit_code(t) == 1
    ca.start()
    # X.509 validity includes the notAfter second: wait until no check can call it valid
    wait_for(lambda: time.time() >= agent.agent_svid.not_after + 1, what="a second past expiry")
    # a restart cannot go on without a new token, and says so
    again = agent_runner(ca=ca, token=None, state=t.config.state)
    with pytest.raises(AgentExit) as ex:
        again.wait_ready()
    assert ex.value.code == 2 and "join-token" in ex.value.message
    agent_runner(ca=ca, state=t.config.state).wait_ready()  # control: with one it joins again


def test_a_renewed_svid_is_served_after_its_key_had_time_to_propagate(ca_service,
                                                                      agent_runner):
    """The CA has issued the new SVID and this node's bundle carries its key, but the agent
    keeps serving the current one for --key-propagation (here capped at a tenth of the 20 s
    life: 2 s) so that agents reconnecting late hear of the key first."""
    ca_service.register("node-a", "orders", uid=0, ttl=20)
    t = agent_runner(key_propagation=60)
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders")
    held = agent.store.svids["orders"]
    t.call(agent.renew_now)
    wait_for(lambda: len(ca_service.issued("node-a", "workload", "orders")) == 2,
             what="the renewal issued by the CA")
    new = ca_service.issued("node-a", "workload", "orders")[1]
    # issued, its key in this node's bundle, and still the old SVID is served
    assert t.call(lambda: agent.store.svids_for(0)) == [held]
    wait_for(lambda: agent.store.svids["orders"].serial == new, timeout=10,
             what="the new SVID served once the hold is over")
    assert time.time() < held.not_after
