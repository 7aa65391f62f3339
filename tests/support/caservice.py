"""The real CA service (``mesh-ca serve``'s :class:`ca.service.server.CAService`) for tests that
need one on loopback, and node agents run in-process against it.

:class:`RunningCA` serves a CA on 127.0.0.1 (ports chosen by the OS at the first start, kept
across :meth:`RunningCA.stop` / :meth:`RunningCA.start`, so agents see an outage and a
return at the same address), with the operator's actions (join tokens, registrations,
eviction, revocation) done by the same functions ``mesh-ca`` runs, and read-only views of
what the registry recorded. Its clock is real time plus an offset a test may move (join-token
expiry), as the CA service tests do.

:class:`AgentThread` runs one :class:`mesh.agent.agent.Agent` on its own event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path
from typing import Any

from ca.authority import CertificateAuthority
from ca.registry import Registry
from ca.service import admin
from ca.service.server import CAService
from mesh.agent.agent import Agent, AgentConfig, AgentExit


class OffsetClock:
    """Real time plus ``offset`` seconds (certificates are still checked at real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class RunningCA:
    """The CA service over ``ca`` on 127.0.0.1; ``options`` go to :class:`CAService`."""

    def __init__(self, ca: CertificateAuthority, **options: Any) -> None:
        self.ca = ca
        self.clock = OffsetClock()
        options.setdefault("trust_interval", 0.05)
        options.setdefault("recheck_seconds", 0.5)
        self.options = options
        self.agent_port = 0
        self.attest_port = 0
        self.service: CAService | None = None

    # --- serving ---------------------------------------------------------------------------

    def start(self) -> RunningCA:
        service = CAService(
            self.ca, listen=f"127.0.0.1:{self.agent_port}",
            attest_listen=f"127.0.0.1:{self.attest_port}", clock=self.clock, **self.options,
        )
        addresses = service.start()
        self.service = service
        self.agent_port = int(addresses.agent.rsplit(":", 1)[1])
        self.attest_port = int(addresses.attestation.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=None)
            self.service = None

    @property
    def running(self) -> bool:
        return self.service is not None

    @property
    def fingerprint(self) -> str:
        return self.ca.root_fingerprint

    @property
    def td(self) -> str:
        return str(self.ca.trust_domain)

    # --- the operator ------------------------------------------------------------------------

    def join_token(self, node: str, ttl: float = 600) -> str:
        return admin.make_join_token(self.ca, node, timedelta(seconds=ttl)).token

    def register(self, node: str, service: str, uid: int, ttl: float = 3600) -> None:
        """Register ``service`` to ``node``; lifetimes of seconds are allowed here (the
        operator's floor is a minute) so that tests see rotations."""
        admin.register(self.ca, service, node, uid, timedelta(seconds=ttl),
                       min_ttl=admin.SHORTEST_SVID_TTL)

    def unregister(self, node: str, service: str) -> None:
        admin.unregister(self.ca, service, node)

    def evict(self, node: str) -> list[int]:
        return admin.evict(self.ca, node)

    def revoke(self, serial: str | int) -> None:
        self.ca.revoke(serial=serial if isinstance(serial, int) else int(serial, 16))

    # --- what the registry recorded ------------------------------------------------------------

    def _query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.ca.ca_dir / Registry.FILE)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def issued(self, node: str, kind: str, name: str | None = None) -> list[str]:
        """Serials (32 hex digits) of the certificates issued through ``node`` of ``kind``
        (``agent`` or ``workload``), and of service ``name`` if given, oldest first."""
        rows = self._query(
            "SELECT v.serial, c.name FROM issued_via v JOIN certs c ON c.serial = v.serial "
            "WHERE v.node = ? AND v.kind = ? ORDER BY c.issued_at, c.rowid", node, kind)
        return [format(int(s, 16), "032x") for s, n in rows if name is None or n == name]

    def token_used(self, token_node: str) -> list[bool]:
        """For each join token of ``token_node``: whether it was spent."""
        return [used is not None for (used,) in self._query(
            "SELECT used_at FROM join_tokens WHERE node = ?", token_node)]

    def status_of(self, serial: str) -> str:
        [(status,)] = self._query("SELECT status FROM certs WHERE serial = ?",
                                  format(int(serial, 16), "x"))
        return str(status)


def short_dir(prefix: str) -> Path:
    """A folder with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def agent_config(ca: RunningCA, node: str, base: Path, **overrides: Any) -> AgentConfig:
    """An agent of ``node`` for ``ca`` with quick retries, its folders under ``base``."""
    fields: dict[str, Any] = {
        "ca": f"127.0.0.1:{ca.agent_port}",
        "ca_attest": f"127.0.0.1:{ca.attest_port}",
        "ca_fingerprint": ca.fingerprint,
        "node": node,
        "state": base / "state",
        "socket": base / "agent.sock",
        "retry_base": 0.05, "retry_cap": 0.5, "sync_interval": 0.3, "ca_timeout": 3.0,
        "key_propagation": 0.5,
    }
    fields.update(overrides)
    return AgentConfig(**fields)


class AgentThread:
    """One in-process agent on its own event loop thread."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.agent: Agent | None = None
        self.result: Future[int] = Future()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def run() -> int:
            self.agent = Agent(self.config)
            waiter = asyncio.ensure_future(self.agent.ready.wait())
            waiter.add_done_callback(lambda _: self._ready.set())
            return await self.agent.run()

        try:
            self.result.set_result(self.loop.run_until_complete(run()))
        except BaseException as err:  # AgentExit included
            self.result.set_exception(err)
        finally:
            self._ready.set()
            self.loop.close()

    def wait_ready(self, timeout: float = 30) -> Agent:
        assert self._ready.wait(timeout), "agent did not become ready"
        if self.result.done():
            self.result.result()  # raises what run raised
        assert self.agent is not None
        return self.agent

    def call(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Run ``fn()`` on the agent's loop thread and return its result."""
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as err:
                done.set_exception(err)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout)

    def stop(self, timeout: float = 20) -> int | None:
        if not self.result.done() and self.agent is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(timeout)
        try:
            return self.result.result(0)
        except AgentExit as ex:
            return ex.code


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy: for state held by another thread or process that
    offers no event to wait on. Raises AssertionError naming ``what`` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
