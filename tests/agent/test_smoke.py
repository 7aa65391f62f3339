from __future__ import annotations

from mesh.identity.svid import X509SvidFolder

from .conftest import short_dir, wait_for


def test_agent_attests_issues_and_writes(ca_service, agent_runner):
    ca_service.register("node-a", "orders", uid=0, ttl=60)
    out = short_dir("w-")
    t = agent_runner(writes={"orders": out / "orders"})
    agent = t.wait_ready()
    wait_for(lambda: "orders" in agent.store.svids, what="orders SVID")
    wait_for((out / "orders" / "svid.pem").exists, what="folder")
    folder = X509SvidFolder(out / "orders")
    assert str(folder.current().spiffe_id) == "spiffe://mesh.internal/svc/orders"
