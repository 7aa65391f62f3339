"""Identities that renew themselves, on three hosts (network namespaces): the CA service on
``ca``, one agent on each of ``a`` and ``b``, and services calling across hosts by IP while
pinning DNS names:

    auth (host a, uid 1001) --user alice--> orders (host b, uid 1003) --> payments (host a)
    auth --user alice--> payments (host a, uid 1002)

``auth`` signs alice's token, so ``orders`` and ``payments`` verify it with auth's key from the
bundle their own agent streams them: every rotation of auth on host a must have reached host b
before auth signs with the new key. SVIDs (services' and agents') live 20 s, so rotations come
every 8 to 10 s and a test sees several in a bounded run.
"""

from __future__ import annotations

import time

from ca.service import admin

from .conftest import Agent, Cluster, Reports

AUTH, PAYMENTS, ORDERS = 1001, 1002, 1003
PAYMENTS_PORT, ORDERS_PORT = 7002, 7003


def _summary(failures: list[dict[str, object]]) -> str:
    return f"{len(failures)} failed calls, the first: " + "; ".join(
        f"{e['target']} {e['code']} {e['reason']} at {e['t']:.2f}: {e['details']}"
        for e in failures[:3])


def _start(cluster: Cluster, *, orders_calls_payments: bool = False
           ) -> tuple[Agent, Agent, Reports, Reports, Reports]:
    cluster.register("auth", "node-a", AUTH)
    cluster.register("payments", "node-a", PAYMENTS)
    cluster.register("orders", "node-b", ORDERS)
    cluster.start_ca()
    a = cluster.start_agent("node-a", "a")
    b = cluster.start_agent("node-b", "b")
    for agent, names in ((a, {"auth", "payments"}), (b, {"orders"})):
        agent.wait_status(f"SVIDs for {sorted(names)}", lambda d, names=names: {
            s["service"] for s in d.get("services", []) if s["state"] == "ok"} == names, 60)
    payments_at = a.host.address(PAYMENTS_PORT)
    orders_at = b.host.address(ORDERS_PORT)
    payments = cluster.start_service(
        "payments", a, PAYMENTS, "--listen", payments_at, "--allow-peer", "auth",
        "--allow-peer", "orders")
    extra = ["--call", f"payments={payments_at}"] if orders_calls_payments else []
    orders = cluster.start_service(
        "orders", b, ORDERS, "--listen", orders_at, "--allow-chain", "auth",
        "--forward", f"payments={payments_at}", *extra)
    for svc in (payments, orders):
        svc.wait("serving", svc.count("serving"), 60)
    auth = cluster.start_service("auth", a, AUTH, "--as-user", "--call", f"orders={orders_at}",
                                 "--call", f"payments={payments_at}")
    for target in ("orders", "payments"):
        auth.wait(f"a call to {target}",
                  lambda r, t=target: bool(r.of("call", target=t, ok=True)), 60)
    return a, b, auth, orders, payments


def _check_replies(auth: Reports) -> None:
    """The calls crossed hosts as the chain says: orders (host b) passed alice on to payments
    (host a), each hop verifying the layers below with keys from its own agent's bundle."""
    via_orders = auth.of("call", target="orders", ok=True)[-1]["reply"]
    assert (via_orders["peer"], via_orders["user"], via_orders["chain"]) == (
        "spiffe://mesh.internal/svc/auth", "alice", ["auth"])
    inner = via_orders["downstream"]
    assert (inner["peer"], inner["user"], inner["chain"]) == (
        "spiffe://mesh.internal/svc/orders", "alice", ["auth", "orders"])
    direct = auth.of("call", target="payments", ok=True)[-1]["reply"]
    assert (direct["user"], direct["chain"]) == ("alice", ["auth"])


def test_rotations_across_hosts_with_zero_failed_calls(cluster: Cluster) -> None:
    a, b, auth, orders, payments = _start(cluster)
    agent_serials = {agent.node: agent.status()["agent"]["serial"] for agent in (a, b)}
    for svc in (auth, orders, payments):
        svc.wait("two rotations", lambda r: len(r.of("rotated")) >= 2, 60)
    last = max(e["t"] for svc in (auth, orders, payments) for e in svc.of("rotated"))
    auth.wait("calls after the last rotation", lambda r: sum(
        1 for e in r.of("call", ok=True) if e["t"] > last) >= 6, 30)
    # the agents renewed their own SVIDs too (RenewAgent, WatchTrust moved to the new one)
    for agent in (a, b):
        agent.wait_status("its own renewal",
                          lambda d, s=agent_serials[agent.node]: d["agent"]["serial"] != s, 30)
    cluster.stop_services()
    assert cluster.failures() == [], _summary(cluster.failures())
    _check_replies(auth)
    # every caller and callee kept working through each of its rotations: a successful call
    # went through after every rotation of every service
    calls = [e["t"] for e in auth.of("call", ok=True)]
    for svc in (auth, orders, payments):
        for rotation in svc.of("rotated"):
            assert any(t > rotation["t"] for t in calls), (svc.name, rotation)


def test_ca_down_past_the_renewal_point_then_back(cluster: Cluster) -> None:
    a, b, auth, orders, payments = _start(cluster)
    services = (auth, orders, payments)
    # Renew everything now (SIGHUP), so that every SVID's renewal point and expiry are known:
    # renewal at 8-10 s, expiry at 20 s from here.
    before = {svc.name: len(svc.of("rotated")) for svc in services}
    for agent in (a, b):
        agent.hup()
    for svc in services:
        svc.wait("the renewal SIGHUP asked for",
                 lambda r, n=before[svc.name]: len(r.of("rotated")) > n, 30)
    expiry = min(svc.of("rotated")[-1]["not_after"] for svc in services)
    cluster.stop_ca()
    down = time.time()
    # past the renewal point of every SVID: each agent says it is retrying each of them
    for agent, names in ((a, {"auth", "payments"}), (b, {"orders"})):
        agent.wait_status("every renewal failing", lambda d, names=names: {
            s["service"] for s in d["services"] if s["state"] == "retrying"} == names, 30)
    assert time.time() < expiry, "the test came too late: an SVID expired meanwhile"
    rotated_while_down = {svc.name: len(svc.of("rotated")) for svc in services}
    cluster.start_ca()
    # renewals resume at once: each service receives a new SVID
    for svc in services:
        svc.wait("a renewal after the CA returned",
                 lambda r, n=rotated_while_down[svc.name]: len(r.of("rotated")) > n, 30)
    back = time.time()
    auth.wait("calls after the renewals", lambda r: sum(
        1 for e in r.of("call", ok=True) if e["t"] > back) >= 4, 30)
    cluster.stop_services()
    assert cluster.failures() == [], _summary(cluster.failures())
    outage = [e for e in auth.of("call", ok=True) if down < e["t"] < back]
    assert len(outage) >= 10, "calls went on while the CA was down"
    for agent in (a, b):
        assert "expired" not in agent.service_states().values()
    _check_replies(auth)


def _serials(svc: Reports) -> set[int]:
    return {int(e["serial"], 16) for e in svc.of("identity") + svc.of("rotated")}


def test_an_evicted_node_stops_renewing_and_its_services_are_refused(cluster: Cluster) -> None:
    a, b, auth, orders, payments = _start(cluster, orders_calls_payments=True)
    orders.wait("a call to payments", lambda r: bool(r.of("call", target="payments", ok=True)),
                30)
    evicted_at = time.time()
    revoked = set(cluster.operator(lambda ca: admin.evict(ca, "node-b")))
    b.wait_status("the eviction", lambda d: d.get("evicted") == "NODE_EVICTED", 30)
    # orders (node b) is refused by payments (node a) by the CRL its agent streamed to it
    orders.wait("a refusal as revoked", lambda r: any(
        e["reason"] == "CERT_REVOKED" for e in r.of("call", target="payments", ok=False)), 30)
    # agent b serves what it holds until it expires, renews nothing, then stops with 1
    assert b.proc.wait(timeout=60) == 1, b.tail()
    final = b.status()
    assert final["evicted"] == "NODE_EVICTED"
    assert {s["state"] for s in final["services"]} <= {"evicted", "expired"}
    assert _serials(orders) <= revoked, "an SVID was issued to node b after its eviction"
    expired_at = max(e["not_after"] for e in orders.of("identity") + orders.of("rotated"))
    auth.wait("a call after orders' SVID expired",
              lambda r: any(e["t"] > expired_at + 1 for e in r.of("call")), 30)
    cluster.stop_services()
    refused = [e for e in orders.of("call", target="payments") if e["t"] > evicted_at + 5]
    assert refused and not any(e["ok"] for e in refused)
    assert {e["reason"] or e["code"] for e in refused} <= {
        "CERT_REVOKED", "CERT_UNTRUSTED", "UNAVAILABLE"}
    # what went through orders fails from the eviction on; node a's own traffic never did
    assert not any(e["ok"] for e in auth.of("call", target="orders") if e["t"] > evicted_at + 5)
    assert auth.of("call", target="payments", ok=False) == []
    assert payments.of("call", ok=False) == []
    assert a.proc.poll() is None  # node a's agent goes on
