"""The node agent: attest once, then keep every identity on this node fresh.

One asyncio event loop runs everything: the renewal of the agent's own SVID, one renewal task
per service registered to the node, the registration sync, the trust-bundle stream, the
Workload API servers and the ``SO_PEERCRED`` accept loop. Keys are made here and never leave
the host; the CA sees CSRs only.

Rotation timeline of one SVID (``mesh.agent.schedule``): issued at ``t0`` with life ``L``;
renewal starts at a random point in ``[0.25 L, 0.33 L]`` and the new SVID is served
before ``0.5 L`` (after a key-propagation hold of at most ``0.1 L``); on failure the agent
retries with capped exponential backoff and keeps serving the current SVID; at ``t0 + L`` the
SVID is
dropped from the Workload API (the written folder keeps its files; the folder source keeps
its last good identity), and renewal goes on until the CA answers.

The log says each state change once (``ok``, ``retrying``, ``expired``, ``refused``,
``evicted``), not each retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from mesh.agent import bootstrap as boot
from mesh.agent.caclient import CAClient
from mesh.agent.errors import (
    AgentConfigError,
    AgentError,
    BootstrapError,
    CAAnswerInvalid,
    CARefused,
    CAUnavailable,
)
from mesh.agent.folder import SvidFolderWriter
from mesh.agent.model import HeldSvid, TrustState, csr_pem, hold, new_key, trust_from
from mesh.agent.peercred import PeerCred, PeerCredSplicer
from mesh.agent.schedule import PROPAGATION_SHARE, Backoff, renewal_time
from mesh.agent.state import StateDir, folder_content
from mesh.agent.store import IdentityStore, Registration
from mesh.agent.workload import add_views
from mesh.ca.v1 import ca_pb2
from mesh.errors import InvalidSpiffeIdError, Reason
from mesh.identity.certs import thumbprint
from mesh.identity.spiffeid import SpiffeId, TrustDomain, validate_service_name

_log = logging.getLogger("mesh.agent")

#: the largest share of a renewed SVID's life spent waiting for its key to propagate

#: CA answers after which nothing on this node can be renewed any more
_FATAL = {Reason.NODE_EVICTED, Reason.CERT_REVOKED, Reason.NOT_AN_AGENT}
_JOIN_REFUSALS = {
    Reason.JOIN_TOKEN_UNKNOWN, Reason.JOIN_TOKEN_EXPIRED, Reason.JOIN_TOKEN_USED,
    Reason.JOIN_TOKEN_NODE_MISMATCH, Reason.NODE_EVICTED, Reason.CSR_INVALID,
}


def validate_node_name(node: str) -> str:
    try:
        return validate_service_name(node)
    except InvalidSpiffeIdError as err:
        raise AgentConfigError(str(err).replace("service name", "node name")) from err


@dataclass(frozen=True)
class AgentConfig:
    ca: str
    ca_fingerprint: str
    node: str
    state: Path
    socket: Path
    ca_attest: str | None = None
    join_token: str | None = field(default=None, repr=False)
    writes: Mapping[str, Path] = field(default_factory=dict)
    retry_base: float = 1.0
    retry_cap: float = 30.0
    sync_interval: float = 30.0
    ca_timeout: float = 10.0
    max_connections: int = 512
    #: seconds a renewed service SVID waits, once this node has the bundle carrying its key,
    #: before it is served (see Agent._propagation_hold)
    key_propagation: float = 30.0


@dataclass
class _Tracked:
    """Per-identity bookkeeping for status and state-change logging."""

    state: str = "pending"
    since: float = field(default_factory=time.time)
    detail: str = ""
    next_renewal: float | None = None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AgentExit(Exception):
    """The agent stops with ``code`` after saying ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Agent:
    """One node agent. ``await run()`` until :meth:`stop` or a fatal condition."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        validate_node_name(config.node)
        for name in config.writes:
            validate_service_name(name)
        self.fingerprint = boot.normalise_fingerprint(config.ca_fingerprint)
        boot.split_host_port(config.ca)
        self.attest_target = config.ca_attest or boot.default_attest_target(config.ca)
        self.state = StateDir(config.state)
        self.backoff = Backoff(config.retry_base, config.retry_cap)
        self.store: IdentityStore | None = None
        self.td: TrustDomain | None = None
        self.agent_svid: HeldSvid | None = None
        self.ca: CAClient | None = None
        self.evicted: str | None = None
        self.tracked: dict[str, _Tracked] = {}
        self.ca_state = _Tracked(state="unknown")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._exit: AgentExit | None = None
        self._views: dict[int | None, tuple[grpc.aio.Server, str]] = {}
        self._run_dir: Path | None = None
        self._splicer: PeerCredSplicer | None = None
        self._writers: dict[str, SvidFolderWriter] = {}
        self.ready = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._trust_dirty = asyncio.Event()
        self._views_lock = asyncio.Lock()
        self._renew_now = asyncio.Event()
        self._sync_now = asyncio.Event()
        self._retired = 0
        # what was last written for each identity ("agent" or a service): see _persist
        self._persisted: dict[str, tuple[HeldSvid, TrustState]] = {}
        self._persist_locks: dict[str, threading.Lock] = {}
        self._persist_guard = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; returns the exit code (0 stopped, 1 evicted and all expired)."""
        self.state.prepare()
        try:
            await self._establish()
            await self._serve()
            self._load_persisted()
            self._start_loops()
            self._save_status_now()
            self.ready.set()
            await self._stop.wait()
        except AgentExit as ex:
            self._exit = ex
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
        finally:
            await self._shutdown()
            if self.store is not None:
                self._save_status_now()
        if self._exit is not None:
            raise self._exit
        return 0

    def _fail(self, code: int, message: str) -> None:
        self._exit = AgentExit(code, message)
        self._stop.set()

    async def _shutdown(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._splicer is not None:
            await self._splicer.close()
        for server, _ in self._views.values():
            await server.stop(grace=None)
        self._views.clear()
        if self.ca is not None:
            await self.ca.close()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)

    # --- attestation or restart ---------------------------------------------------------------

    def _agent_id(self) -> str:
        assert self.td is not None
        return str(SpiffeId(self.td, f"/agent/{self.config.node}"))

    async def _establish(self) -> None:
        cfg = self.config
        info = self.state.node_info()
        if info is not None:
            if info.get("node") != cfg.node:
                raise AgentExit(2, (
                    f"the state folder {cfg.state} belongs to node {info.get('node')!r}, not "
                    f"{cfg.node!r}: use another --state folder"
                ))
            if info.get("ca_fingerprint") != self.fingerprint:
                raise AgentExit(2, (
                    f"the state folder {cfg.state} was attested to a CA with another root "
                    "fingerprint than --ca-fingerprint: use another --state folder"
                ))
            self.td = TrustDomain(str(info.get("trust_domain")))
            loaded = self.state.load_agent(self._agent_id())
            if loaded is not None:
                self.agent_svid, trust = loaded
                self.store = IdentityStore(self.td.name)
                self.store.set_trust(trust)
                _log.info(
                    "restarted from %s: agent SVID %s (serial %s) valid until %s; no join "
                    "token needed", cfg.state, self.agent_svid.spiffe_id, self.agent_svid.serial,
                    _iso(self.agent_svid.not_after),
                )
                self._make_client(trust)
                return
            if not cfg.join_token:
                raise AgentExit(2, (
                    f"the agent SVID in {cfg.state} is missing or expired and no --join-token "
                    "was given: ask the CA operator for a new join token for node "
                    f"{cfg.node} (mesh-ca join-token {cfg.node})"
                ))
        elif not cfg.join_token:
            raise AgentExit(2, (
                f"{cfg.state} holds no agent identity yet: the first start needs --join-token "
                f"(mesh-ca join-token {cfg.node})"
            ))
        await self._attest()

    async def _attest(self) -> None:
        cfg = self.config
        attest_target = self.attest_target
        attempt = 0
        while True:
            try:
                pinned = await asyncio.to_thread(boot.bootstrap, attest_target, self.fingerprint)
                break
            except BootstrapError as err:
                raise AgentExit(2, str(err)) from None
            except CAUnavailable as err:
                self._set_ca("unreachable", str(err))
                await self._sleep(self.backoff.delay(attempt))
                attempt += 1
        self.td = pinned.trust_domain
        client = CAClient(cfg.ca, attest_target, pinned.ca_dns_name, pinned.root_pem,
                          timeout=cfg.ca_timeout, reconnect_max=cfg.retry_cap)
        key = new_key()
        csr = csr_pem(key, f"agent {cfg.node}")
        assert cfg.join_token is not None
        attempt = 0
        while True:
            try:
                resp = await client.attest(cfg.node, cfg.join_token, csr)
                break
            except CARefused as err:
                await client.close()
                raise AgentExit(2, (
                    f"attestation of node {cfg.node} refused ({err.code}): {err}; nothing was "
                    f"written to {cfg.state}"
                )) from None
            except CAUnavailable as err:
                self._set_ca("unreachable", str(err))
                await self._sleep(self.backoff.delay(attempt))
                attempt += 1
        await client.close()
        self._set_ca("ok", "attested")
        try:
            trust = trust_from(resp.trust.roots_pem, resp.trust.bundle_json, resp.trust.crl_pem,
                               resp.trust.sequence)
            if pinned.root not in trust.roots:
                raise CAAnswerInvalid(
                    "the CA's trust state does not contain the pinned root; refusing it"
                )
            svid = hold("agent", resp.agent_svid.cert_chain_pem, key, self._agent_id(),
                        trust.roots)
        except AgentError as err:
            raise AgentExit(2, f"attestation answer refused: {err}") from None
        # SVID first, node.json last: a crash in between leaves no node.json, and the next
        # start attests again (the same token is then refused as used: the operator sees it).
        self.state.save_agent(svid, trust)
        self.state.save_node_info(cfg.node, pinned.trust_domain.name, self.fingerprint)
        self.agent_svid = svid
        self.store = IdentityStore(pinned.trust_domain.name)
        self.store.set_trust(trust)
        _log.info("attested node %s: agent SVID %s (serial %s) valid until %s",
                  cfg.node, svid.spiffe_id, svid.serial, _iso(svid.not_after))
        self._make_client(trust)

    def _make_client(self, trust: TrustState) -> None:
        assert self.td is not None and self.agent_svid is not None
        cfg = self.config
        self.ca = CAClient(cfg.ca, self.attest_target, boot.ca_dns_name(self.td),
                           trust.roots_pem, timeout=cfg.ca_timeout, reconnect_max=cfg.retry_cap)
        self.ca.use_identity(trust.roots_pem, self.agent_svid.chain_pem, self.agent_svid.key_pem)

    # --- the Workload API ---------------------------------------------------------------------

    async def _serve(self) -> None:
        self._run_dir = Path(tempfile.mkdtemp(prefix="mesh-agent."))
        os.chmod(self._run_dir, 0o700)
        self._splicer = PeerCredSplicer(
            self.config.socket, self._route, max_connections=self.config.max_connections
        )
        await self._view(None)  # the deny view exists before the first caller
        await self._splicer.start()
        _log.info("Workload API on %s", self.config.socket)

    async def _view(self, uid: int | None) -> str:
        """The internal socket of ``uid``'s view, its server started on first use (one lock:
        callers racing for a new uid must not start two servers on one path)."""
        got = self._views.get(uid)
        if got is not None:
            return got[1]
        async with self._views_lock:
            got = self._views.get(uid)
            if got is not None:
                return got[1]
            return await self._start_view(uid)

    async def _start_view(self, uid: int | None) -> str:
        assert self._run_dir is not None and self.store is not None
        path = str(self._run_dir / ("deny.sock" if uid is None else f"uid-{uid}.sock"))
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_views(server, self.store, uid, self.status)
        server.add_insecure_port(f"unix:{path}")
        await server.start()
        self._views[uid] = (server, path)
        return path

    async def _route(self, cred: PeerCred) -> str:
        assert self.store is not None
        uid = cred.uid
        if uid == 0 or uid == os.geteuid() or self.store.entitled(uid):
            return await self._view(uid)
        return await self._view(None)

    # --- loops --------------------------------------------------------------------------------

    def _start_loops(self) -> None:
        self._spawn("agent", self._agent_loop())
        self._spawn("registrations", self._registrations_loop())
        self._spawn("trust", self._trust_loop())
        self._spawn("expiry", self._expiry_loop())
        self._spawn("status", self._status_loop())
        self._spawn("trust-flush", self._trust_flush_loop())

    def _spawn(self, name: str, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"agent:{name}")
        self._tasks[name] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(name) is t:
                del self._tasks[name]
            if not t.cancelled() and t.exception() is not None:
                err = t.exception()
                _log.error("agent task %s failed: %r", name, err)
                self._fail(1, f"internal error in {name}: {err!r}")

        task.add_done_callback(done)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))
        if self._stop.is_set():
            raise asyncio.CancelledError

    async def _wait_due(self, seconds: float) -> None:
        """Sleep until a renewal is due, or until :meth:`renew_now` asks for it at once."""
        event = self._renew_now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, seconds))
        if self._stop.is_set():
            raise asyncio.CancelledError

    def renew_now(self) -> None:
        """Renew every SVID now (loop thread only): after a key compromise, or to measure a
        renewal storm. SIGHUP does this for ``mesh agent``."""
        event, self._renew_now = self._renew_now, asyncio.Event()
        event.set()

    def _set_ca(self, state: str, detail: str) -> None:
        if state != self.ca_state.state:
            if state == "ok":
                _log.info("CA reachable again" if self.ca_state.state == "unreachable"
                          else "CA reachable")
            else:
                _log.warning("CA unreachable: %s; retrying with backoff, current SVIDs are "
                             "served until they expire", detail)
            self.ca_state = _Tracked(state=state, detail=detail)

    def _track(self, name: str, state: str, detail: str = "",
               next_renewal: float | None = None) -> None:
        t = self.tracked.setdefault(name, _Tracked())
        if t.state != state:
            t.state, t.since = state, time.time()
            what = "agent SVID" if name == "agent" else f"service {name}"
            level = logging.INFO if state == "ok" else logging.WARNING
            _log.log(level, "%s: %s%s", what, state, f" ({detail})" if detail else "")
        t.detail = detail
        t.next_renewal = next_renewal
        self._write_status()

    async def _renewal_loop(self, name: str) -> None:
        """Keep one identity (``agent`` or a service) renewed until cancelled."""
        attempt = 0
        while True:
            held = self.agent_svid if name == "agent" else self._held(name)
            now = time.time()
            if held is not None and attempt == 0:
                due = renewal_time(held.issued_at, held.not_after)
                self._track(name, "ok", f"serial {held.serial}", due)
                if due > now:
                    await self._wait_due(due - now)
            try:
                await (self._renew_agent() if name == "agent" else self._issue(name))
                self._set_ca("ok", "")
                attempt = 0
                continue
            except CAUnavailable as err:
                self._set_ca("unreachable", str(err))
                expires = held.not_after if held is not None else None
                now = time.time()
                if name == "agent" and held is not None and now >= held.not_after:
                    # The CA only talks to a valid agent SVID: nothing can be renewed any more.
                    self._evict(CARefused(
                        f"the agent SVID expired at {_iso(held.not_after)} while the CA was "
                        f"unreachable ({err}); the node must join again with a new join token "
                        f"(mesh-ca join-token {self.config.node})", Reason.CERT_UNTRUSTED))
                    return
                if held is not None and now >= held.not_after:
                    self._track(name, "expired",
                                f"expired at {_iso(held.not_after)}; the CA is unreachable")
                else:
                    self._track(name, "retrying", str(err), None)
                at = self.backoff.next_attempt(now, attempt, expires)
            except CARefused as err:
                if err.code in _FATAL:
                    self._evict(err)
                    return
                self._set_ca("ok", "")
                now = time.time()
                if err.code is Reason.SVID_LIMIT:
                    # The node holds as many valid SVIDs of this identity as the CA allows: use
                    # the one held and ask again when the CA says one leaves the count (or on
                    # SIGHUP), never in a retry loop that every answer would refuse.
                    wait = err.retry_after if err.retry_after is not None else max(
                        self.config.sync_interval, self.backoff.cap)
                    at = now + max(wait, self.backoff.base)
                    self._track(name, "limited", f"{err.code}: {err}", at)
                    attempt += 1
                    await self._wait_due(at - now)
                    continue
                if err.code is Reason.NOT_REGISTERED:
                    self._sync_now.set()  # the CA knows better than our last list: fetch it
                self._track(name, "refused", f"{err.code}: {err}")
                at = now + max(self.config.sync_interval, self.backoff.cap)
            except AgentError as err:  # CAAnswerInvalid: the CA answered nonsense
                self._track(name, "refused", str(err))
                at = self.backoff.next_attempt(time.time(), attempt, None)
            attempt += 1
            await self._sleep(at - time.time())

    def _held(self, name: str) -> HeldSvid | None:
        return None if self.store is None else self.store.svids.get(name)

    async def _agent_loop(self) -> None:
        await self._renewal_loop("agent")

    async def _renew_agent(self) -> None:
        assert self.ca is not None and self.store is not None and self.store.trust is not None
        key = new_key()  # a NEW key every time: the CA refuses the one we present
        resp = await self.ca.renew_agent(csr_pem(key, f"agent {self.config.node}"))
        trust = self.store.trust
        svid = hold("agent", resp.cert_chain_pem, key, self._agent_id(), trust.roots)
        await asyncio.to_thread(self._persist, svid, trust)
        self.agent_svid = svid
        self._switch_identity(trust.roots_pem)
        _log.info("agent SVID renewed: serial %s valid until %s", svid.serial,
                  _iso(svid.not_after))

    def _switch_identity(self, roots_pem: bytes) -> None:
        """Talk to the CA with the current agent SVID and roots from now on: a new channel
        (gRPC clients cannot rotate credentials), the trust stream reopened on it, and the old
        channel closed once the calls still running on it end. Without the reopening, the
        stream would stay on the old certificate until the CA refuses it as expired."""
        assert self.ca is not None and self.agent_svid is not None
        self.ca.use_identity(roots_pem, self.agent_svid.chain_pem, self.agent_svid.key_pem)
        trust = self._tasks.get("trust")
        if trust is not None:
            # (when the trust task itself switched, for new roots, it ends at its next await)
            trust.cancel()
            self._spawn("trust", self._trust_loop())
        self._retired += 1
        self._spawn(f"retire:{self._retired}", self.ca.close_retired(self.config.ca_timeout))

    async def _issue(self, name: str) -> None:
        assert self.ca is not None and self.store is not None and self.store.trust is not None
        reg = self.store.registrations.get(name)
        if reg is None:
            raise CARefused(f"{name} is no longer registered to this node",
                            Reason.NOT_REGISTERED)
        key = new_key()
        resp = await self.ca.issue(name, csr_pem(key, name))
        svid = hold(name, resp.cert_chain_pem, key, reg.spiffe_id, self.store.trust.roots)
        await self._key_published(svid)
        await self._propagation_hold(name, svid)
        if self.store.registrations.get(name) != reg:
            return  # unregistered while we waited: do not serve it
        await asyncio.to_thread(self._persist, svid, self.store.trust)
        self.store.put_svid(svid)
        _log.debug("service %s: SVID serial %s valid until %s", name, svid.serial,
                   _iso(svid.not_after))

    async def _key_published(self, svid: HeldSvid) -> None:
        """Wait (at most ``ca_timeout``) until the trust state from the CA carries ``svid``'s
        token-signing key. The CA publishes the bundle before it answers, and streams it to
        every agent at once; serving the SVID before this node has the bundle would let the
        service sign tokens that verifiers here (its own first) cannot check yet."""
        assert self.store is not None
        kid = thumbprint(svid.chain[0])
        deadline = time.monotonic() + self.config.ca_timeout
        while self.store.trust is None or kid not in self.store.trust.kids:
            left = deadline - time.monotonic()
            if left <= 0:
                _log.warning("service %s: the trust bundle from the CA does not carry the key "
                             "of its new SVID %s yet; serving it anyway", svid.name, svid.serial)
                return
            await self.store.wait_change(self.store.version, left)

    async def _propagation_hold(self, name: str, svid: HeldSvid) -> None:
        """Keep serving the current SVID for ``key_propagation`` seconds more (at most a tenth
        of the new one's life, never past the current one's expiry) before the renewed one.

        Its key is in this node's bundle now, but an agent that lost the CA (its stream
        reconnecting with backoff after an outage) hears of it later: a token signed with the
        new key before that would be refused there. The old SVID stays valid meanwhile."""
        assert self.store is not None
        old = self.store.svids.get(name)
        now = time.time()
        if old is None or not old.valid_at(now):
            return  # nothing else to serve
        wait = min(self.config.key_propagation, PROPAGATION_SHARE * svid.lifetime,
                   old.not_after - now - 1.0)
        if wait > 0:
            _log.debug("service %s: SVID %s served in %.1f s (key propagation)", name,
                       svid.serial, wait)
            await self._sleep(wait)

    def _persist(self, svid: HeldSvid, trust: TrustState, *, new_svid: bool = True) -> None:
        """(a worker thread) Write the folders of ``svid``'s identity, never backwards.

        A renewal writes its new SVID with the trust state it knew; the trust flush writes the
        newest trust state with the SVIDs it saw when it started. The two may cross, so each
        write takes the newer SVID (received later) and the newer trust state (higher
        sequence) of what it was given and what was last written: the folders never go back
        to a replaced SVID or an older bundle, whichever write comes last.

        A service's folder in the state folder holds its SVID and key only (the trust state is
        kept once, in the agent's folder): it is written for a new SVID, not for a new bundle
        (``new_svid=False``: the trust flush), which only the ``--write`` folder shows."""
        with self._persist_guard:
            lock = self._persist_locks.setdefault(svid.name, threading.Lock())
        with lock:
            last = self._persisted.get(svid.name)
            if last is not None:
                if last[0].issued_at > svid.issued_at:
                    svid = last[0]
                    new_svid = False  # already written by the renewal that received it
                if last[1].sequence > trust.sequence:
                    trust = last[1]
            if svid.name == "agent":
                self.state.save_agent(svid, trust)
            else:
                if new_svid:
                    self.state.save_service(svid, trust)
                self._write_folder(svid, trust)
            self._persisted[svid.name] = (svid, trust)

    def _writer(self, name: str) -> SvidFolderWriter | None:
        target = self.config.writes.get(name)
        if target is None or self.store is None:
            return None
        reg = self.store.registrations.get(name)
        owner = None
        if reg is not None and os.geteuid() == 0 and reg.uid != 0:
            try:
                gid = pwd.getpwuid(reg.uid).pw_gid
            except KeyError:
                gid = reg.uid
            owner = (reg.uid, gid)
        writer = self._writers.get(name)
        if writer is None or writer.owner != owner:
            writer = SvidFolderWriter(target, owner=owner)
            self._writers[name] = writer
        return writer

    def _write_folder(self, svid: HeldSvid, trust: TrustState) -> None:
        writer = self._writer(svid.name)
        if writer is not None:
            try:
                writer.write(folder_content(svid, trust))
            except OSError as err:
                _log.error("cannot write the SVID folder %s of %s: %s", writer.folder,
                           svid.name, err)

    async def _registrations_loop(self) -> None:
        assert self.ca is not None and self.store is not None
        warned: set[str] = set()
        attempt = 0
        while True:
            try:
                regs = await self.ca.registrations()
                attempt = 0
                self._set_ca("ok", "")
            except CAUnavailable as err:
                self._set_ca("unreachable", str(err))
                await self._sleep(self.backoff.delay(attempt))
                attempt += 1
                continue
            except CARefused as err:
                if err.code in _FATAL:
                    self._evict(err)
                    return
                _log.warning("registration list refused: %s", err)
                await self._sleep(self.config.sync_interval)
                continue
            self._apply_registrations(_registrations(regs, self.store.trust_domain))
            for name in set(self.config.writes) - set(self.store.registrations) - warned:
                _log.warning("--write %s: no service %s is registered to node %s",
                             name, name, self.config.node)
                warned.add(name)
            # Until the next poll, or until the CA refused an issuance as NOT_REGISTERED.
            self._sync_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_now.wait(), self.config.sync_interval)
            if self._stop.is_set():
                raise asyncio.CancelledError

    def _apply_registrations(self, regs: dict[str, Registration]) -> None:
        assert self.store is not None
        old = self.store.registrations
        if regs == old:
            return
        self.store.set_registrations(regs)
        self.state.save_registrations(regs)
        for name in set(old) - set(regs):
            task = self._tasks.get(f"svc:{name}")
            if task is not None:
                task.cancel()
            self.tracked.pop(name, None)
            _log.info("service %s: no longer registered to this node; its SVID is no longer "
                      "served", name)
        for name in sorted(set(regs) - set(old)):
            _log.info("service %s: registered (uid %d, SVID life %ds)", name, regs[name].uid,
                      regs[name].ttl_seconds)
        for name, reg in regs.items():
            if old.get(name) not in (None, reg):
                self.store.svids.pop(name, None)  # its identity changed: issue a new SVID
                task = self._tasks.get(f"svc:{name}")
                if task is not None:
                    task.cancel()
            if f"svc:{name}" not in self._tasks and not self.evicted:
                self._spawn(f"svc:{name}", self._renewal_loop(name))
        self._write_status()

    async def _trust_loop(self) -> None:
        assert self.ca is not None and self.store is not None
        attempt = 0
        while True:
            known = self.store.trust.sequence if self.store.trust is not None else 0
            try:
                async for msg in self.ca.watch_trust(known):
                    self._set_ca("ok", "")
                    attempt = 0
                    await self._apply_trust(msg)
                raise CAUnavailable("the CA ended the trust bundle stream")
            except CAUnavailable as err:
                self._set_ca("unreachable", str(err))
            except CARefused as err:
                if err.code in _FATAL:
                    self._evict(err)
                    return
                _log.warning("trust bundle stream refused: %s", err)
            except AgentError as err:
                _log.error("trust bundle from the CA refused: %s", err)
            await self._sleep(self.backoff.delay(attempt))
            attempt += 1

    async def _apply_trust(self, msg: ca_pb2.TrustState) -> None:
        assert self.store is not None and self.agent_svid is not None and self.ca is not None
        trust = trust_from(msg.roots_pem, msg.bundle_json, msg.crl_pem, msg.sequence)
        old = self.store.trust
        if old is not None and trust.sequence <= old.sequence and trust == old:
            return
        if old is not None and msg.sequence < old.sequence:
            _log.warning("ignoring a trust bundle with sequence %d older than the %d in force",
                         msg.sequence, old.sequence)
            return
        self.store.set_trust(trust)
        self._trust_dirty.set()
        if old is None or old.roots_pem != trust.roots_pem:
            self._switch_identity(trust.roots_pem)
        _log.debug("trust bundle updated: sequence %d", trust.sequence)
        self._write_status()

    async def _trust_flush_loop(self) -> None:
        """Write the latest trust state into the state folder and every SVID folder, at most
        once a second: every issuance changes the CA's bundle (the new key joins it), so a
        renewal storm brings a stream of bundle updates, and rewriting every folder for each
        would be quadratic. The Workload API streams see each update at once."""
        assert self.store is not None
        while True:
            await self._trust_dirty.wait()
            self._trust_dirty.clear()
            trust, agent = self.store.trust, self.agent_svid
            svids = list(self.store.svids.values())
            if trust is not None and agent is not None:

                await asyncio.to_thread(self._persist_all, agent, svids, trust)
            await self._sleep(1.0)

    def _persist_all(self, agent: HeldSvid, svids: list[HeldSvid], trust: TrustState) -> None:
        self._persist(agent, trust)
        for svid in svids:
            if svid.name in self.config.writes:
                self._persist(svid, trust, new_svid=False)

    async def _expiry_loop(self) -> None:
        """Wake the Workload API streams when an SVID expires, and end an evicted agent once
        nothing it serves is valid any more."""
        assert self.store is not None
        while True:
            now = time.time()
            soon = self.store.next_expiry(now)
            if self.agent_svid is not None and self.agent_svid.not_after > now:
                soon = min(soon or self.agent_svid.not_after, self.agent_svid.not_after)
            if soon is None:
                if self.evicted:
                    self._fail(1, f"node {self.config.node} is evicted ({self.evicted}) and "
                               "every SVID it held has expired; stopping")
                    return
                await self._sleep(self.config.sync_interval)
                continue
            await self._sleep(soon - now + 0.01)
            self.store.expire()
            for name, svid in list(self.store.svids.items()):
                if not svid.valid_at(time.time()):
                    self._track(name, "expired", f"expired at {_iso(svid.not_after)}")
            self._write_status()

    def _evict(self, err: CARefused) -> None:
        if self.evicted:
            return
        self.evicted = str(err.code)
        _log.error(
            "node %s can no longer renew anything: %s. No SVID on this node will be renewed; "
            "the current ones are served until they expire, then the agent stops.",
            self.config.node, err,
        )
        for name, task in list(self._tasks.items()):
            renews = name in ("agent", "registrations", "trust") or name.startswith("svc:")
            if renews and task is not asyncio.current_task():
                task.cancel()
        for name in list(self.tracked):
            self.tracked[name].state = "evicted"
            self.tracked[name].next_renewal = None
        self._write_status()

    def _load_persisted(self) -> None:
        """Serve what the last run held at once (restart while the CA is unreachable)."""
        assert self.store is not None and self.store.trust is not None
        regs = self.state.load_registrations()
        if not regs:
            return
        self.store.set_registrations(regs)
        for name, reg in regs.items():
            svid = self.state.load_service(name, reg.spiffe_id, self.store.trust)
            if svid is not None:
                self.store.put_svid(svid)
                self._write_folder(svid, self.store.trust)
            self._spawn(f"svc:{name}", self._renewal_loop(name))

    # --- status ---------------------------------------------------------------------------

    def status(self, uid: int | None = None) -> dict[str, Any]:
        """Everything (``uid`` None) or what ``uid``'s services are (JSON-able)."""
        store = self.store
        services = []
        if store is not None:
            for name in sorted(store.registrations):
                reg = store.registrations[name]
                if uid is not None and reg.uid != uid:
                    continue
                svid = store.svids.get(name)
                t = self.tracked.get(name, _Tracked())
                services.append({
                    "service": name,
                    "spiffe_id": reg.spiffe_id,
                    "uid": reg.uid,
                    "serial": svid.serial if svid else None,
                    "not_after": _iso(svid.not_after) if svid else None,
                    "next_renewal": _iso(t.next_renewal),
                    "state": t.state,
                    "detail": t.detail,
                    "write": str(self.config.writes[name]) if name in self.config.writes
                    else None,
                })
        out: dict[str, Any] = {
            "node": self.config.node,
            "trust_domain": self.td.name if self.td else None,
            "ca": {"state": self.ca_state.state, "since": _iso(self.ca_state.since),
                   "detail": self.ca_state.detail},
            "evicted": self.evicted,
            "trust_sequence": store.trust.sequence if store and store.trust else None,
            "services": services,
            "updated_at": _iso(time.time()),
        }
        if uid is None and self.agent_svid is not None:
            t = self.tracked.get("agent", _Tracked())
            out["agent"] = {
                "spiffe_id": self.agent_svid.spiffe_id,
                "serial": self.agent_svid.serial,
                "not_after": _iso(self.agent_svid.not_after),
                "next_renewal": _iso(t.next_renewal),
                "state": t.state,
            }
        return out

    def _write_status(self) -> None:
        """Mark status.json stale; the status task rewrites it at most twice a second (a
        renewal storm of a thousand services must not mean a thousand fsyncs)."""
        self._status_dirty.set()

    def _save_status_now(self) -> None:
        try:
            self.state.save_status(self.status())
        except OSError as err:
            _log.debug("status.json not written: %s", err)

    async def _status_loop(self) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            self._save_status_now()
            await self._sleep(0.5)


def _registrations(regs: list[ca_pb2.Registration], td: str) -> dict[str, Registration]:
    out: dict[str, Registration] = {}
    for r in regs:
        try:
            name = validate_service_name(r.service)
            sid = SpiffeId.parse(r.spiffe_id)
        except InvalidSpiffeIdError as err:
            _log.warning("ignoring a registration the CA sent: %s", err)
            continue
        if sid.trust_domain.name != td:
            _log.warning("ignoring registration %s: %s is outside trust domain %s",
                         name, sid, td)
            continue
        out[name] = Registration(name, str(sid), int(r.uid), int(r.ttl_seconds))
    return out


def status_json(status: Mapping[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
