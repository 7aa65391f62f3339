"""Wrong join tokens in bulk: all refused, nothing changed, no lock taken, agents unaffected.

The proof that refusals take no global lock is not a timing: the test itself holds the CA's
exclusive lock (the one every writer needs) for the whole flood. Every wrong token is still
refused, so none of them waited for it; the valid agent's reads are served meanwhile too.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import secrets
import threading

import ca_service_client as cc
import grpc
import pytest

from mesh.ca.v1 import ca_pb2
from mesh.transport.status import error_info

WRONG = 300


def _wrong_attempt(svc, i: int) -> tuple[grpc.StatusCode, str | None]:  # type: ignore[no-untyped-def]
    token = "meshjoin-" + secrets.token_urlsafe(32) if i % 3 else f"guess-{i}"
    node = ("node-1", "node-2", f"n{i}")[i % 3]
    try:
        svc.endpoint.attest(node, token, cc.new_key(), csr=CSR)
    except grpc.RpcError as err:
        info = error_info(err)
        return err.code(), info.reason if info else None
    return grpc.StatusCode.OK, None


CSR = cc.csr_for(cc.new_key())


def test_wrong_tokens_in_bulk_change_nothing_and_wait_for_no_lock(svc) -> None:  # type: ignore[no-untyped-def]
    svc.register("orders", "node-1")
    agent = svc.agent("node-1")
    valid = svc.token("node-2")  # a real token, for the control at the end
    before = svc.snapshot()

    stop = threading.Event()
    served: list[int] = []

    def valid_agent_reads() -> None:
        while True:  # at least one call, then until the flood is over
            served.append(len(agent.registrations().registrations))
            if stop.is_set():
                return

    fd = os.open(svc.ca.ca_dir / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # every CA writer now waits; refusals must not
    try:
        reader = threading.Thread(target=valid_agent_reads)
        reader.start()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(lambda i: _wrong_attempt(svc, i), range(WRONG)))
        stop.set()
        reader.join()
        assert svc.snapshot() == before  # checked while the lock is still held
    finally:
        os.close(fd)

    assert set(outcomes) == {(grpc.StatusCode.UNAUTHENTICATED, "JOIN_TOKEN_UNKNOWN")}
    assert served and set(served) == {1}  # the agent was answered throughout
    # the service still works for good requests: issuance (which needs the lock) and a join
    assert agent.issue("orders").svid.serial
    resp = svc.endpoint.attest("node-2", valid, cc.new_key())
    assert resp.agent_svid.spiffe_id == "spiffe://mesh.internal/agent/node-2"


def test_valid_issuance_waits_for_the_lock_and_then_completes(svc) -> None:  # type: ignore[no-untyped-def]
    """The control of the test above: a request that writes does need the lock."""
    svc.register("orders", "node-1")
    agent = svc.agent("node-1")
    fd = os.open(svc.ca.ca_dir / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        future = agent.stub.IssueWorkloadSvid.future(
            ca_pb2.IssueWorkloadSvidRequest(service="orders",
                                            csr_pem=cc.csr_for(cc.new_key())),
            timeout=60,
        )
        # a refused request is answered while the writer waits
        with pytest.raises(grpc.RpcError) as caught:
            agent.issue("payments")
        assert error_info(caught.value).reason == "NOT_REGISTERED"
        assert not future.done()
    finally:
        os.close(fd)
    assert future.result().svid.spiffe_id == "spiffe://mesh.internal/svc/orders"
