"""Several hosts as network namespaces (:mod:`support.netns`): the CA service on one, node
agents on others, meshid services calling each other across hosts by IP, pinning DNS names.

``cluster`` is a :class:`Cluster` on a fresh :class:`support.netns.Network` of the hosts
``ca`` (10.77.0.1), ``a`` (10.77.0.2) and ``b`` (10.77.0.3), torn down after the test (every
process killed, every namespace deleted, even when the test failed). Everything runs as a real
process: ``mesh-ca serve``, ``mesh agent``, and the services of ``meshsvc.py`` beside this file,
each as its own Unix user, its identity from its host's agent.

Observations are events, never sleeps: a service's report lines (:class:`Reports`), an agent's
``status.json``, a process's exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support.netns import Host, Network

from ca.authority import CertificateAuthority
from ca.service import admin

TESTS = Path(__file__).resolve().parents[1]
MESHSVC = Path(__file__).with_name("meshsvc.py")
MESH_CA = Path(sys.executable).parent / "mesh-ca"
CA_PORT = 8443
TD = "mesh.internal"


class Reports:
    """The JSON lines a process writes on stdout, collected by a thread; waited on."""

    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.other.append(line.rstrip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e.get("event") == kind
                    and all(e.get(k) == v for k, v in match.items())]

    def wait(self, what: str, predicate: Callable[[Reports], bool], timeout: float) -> None:
        """Until ``predicate(self)`` holds; fails naming ``what`` at the deadline or when the
        process ends first."""
        end = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    raise AssertionError(
                        f"{self.name}: timed out waiting for {what} (exit {self.proc.poll()}, "
                        f"last events {self.events[-3:]}, other output {self.other[-5:]})")
                self._changed.wait(min(left, 1.0))

    def count(self, kind: str, **match: Any) -> Callable[[Reports], int]:
        return lambda r: len(r.of(kind, **match))


class Agent:
    """``mesh agent`` on a host: its state folder, socket and log."""

    def __init__(self, node: str, host: Host, base: Path, proc: subprocess.Popen[str],
                 log: Path) -> None:
        self.node, self.host, self.base, self.proc, self.log = node, host, base, proc, log

    @property
    def socket(self) -> Path:
        return self.base / "agent.sock"

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.base / "state" / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def service_states(self) -> dict[str, str]:
        return {s["service"]: s["state"] for s in self.status().get("services", [])}

    def wait_status(self, what: str, predicate: Callable[[dict[str, Any]], bool],
                    timeout: float) -> dict[str, Any]:
        """``status.json`` is rewritten at most twice a second on every change: polled."""
        end = time.monotonic() + timeout
        while True:
            doc = self.status()
            if doc and predicate(doc):
                return doc
            if time.monotonic() > end or self.proc.poll() is not None:
                raise AssertionError(f"agent {self.node}: timed out waiting for {what} "
                                     f"(exit {self.proc.poll()}; log: {self.tail()})")
            time.sleep(0.1)

    def tail(self, lines: int = 8) -> list[str]:
        try:
            return self.log.read_text().splitlines()[-lines:]
        except OSError:
            return []

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)


class Cluster:
    """The CA folder, the CA service on host ``ca``, agents and services on the others."""

    def __init__(self, net: Network, base: Path) -> None:
        self.net = net
        self.base = base
        self.ca_dir = base / "ca"
        ca = CertificateAuthority.init(self.ca_dir, trust_domain=TD, intermediate=True)
        self.fingerprint = ca.root_fingerprint
        ca.close()
        self.ca_proc: subprocess.Popen[str] | None = None
        self.agents: dict[str, Agent] = {}
        self.services: dict[str, Reports] = {}

    # --- the CA ------------------------------------------------------------------------------

    @property
    def ca_address(self) -> str:
        return self.net["ca"].address(CA_PORT)

    def start_ca(self, *, ttl: str = "20s") -> None:
        """``mesh-ca serve`` on host ``ca`` (agent and server certificates living ``ttl``);
        returns once it serves (its ready file is written before its banner)."""
        ready = self.base / "ca-ready.json"
        ready.unlink(missing_ok=True)
        log = open(self.base / "ca.log", "a")  # noqa: SIM115 - the process owns it
        self.ca_proc = self.net["ca"].popen(
            [str(MESH_CA), "serve", "--ca-dir", str(self.ca_dir), "--listen", self.ca_address,
             "--ready-file", str(ready), "--agent-ttl", ttl, "--server-ttl", ttl],
            stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        end = time.monotonic() + 60
        while not ready.exists():
            if self.ca_proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"mesh-ca serve did not start: "
                                     f"{(self.base / 'ca.log').read_text()[-800:]}")
            time.sleep(0.05)

    def stop_ca(self) -> None:
        assert self.ca_proc is not None
        self.ca_proc.send_signal(signal.SIGTERM)
        assert self.ca_proc.wait(timeout=30) == 0
        self.ca_proc = None

    def operator(self, fn: Callable[[CertificateAuthority], Any]) -> Any:
        """Run an operator action on the CA folder (as ``mesh-ca`` would, beside the service)."""
        with CertificateAuthority.open(self.ca_dir) as ca:
            return fn(ca)

    def register(self, service: str, node: str, uid: int, ttl: int = 20) -> None:
        self.operator(lambda ca: admin.register(ca, service, node, uid, timedelta(seconds=ttl),
                                                min_ttl=admin.SHORTEST_SVID_TTL))

    # --- agents and services -----------------------------------------------------------------

    def start_agent(self, node: str, host: str) -> Agent:
        base = Path(tempfile.mkdtemp(prefix=f"{node}-", dir=self.base))
        os.chmod(base, 0o755)  # the services' users reach the socket in it
        token = self.operator(lambda ca: admin.make_join_token(ca, node).token)
        log = base / "agent.log"
        with open(log, "w") as out:
            proc = self.net[host].popen(
                [sys.executable, "-m", "mesh.cli", "agent", "--ca", self.ca_address,
                 "--ca-fingerprint", self.fingerprint, "--node", node,
                 "--state", str(base / "state"), "--socket", str(base / "agent.sock"),
                 "--sync-interval", "1", "--retry-max", "1", "--key-propagation", "4"],
                env={**os.environ, "MESH_AGENT_JOIN_TOKEN": token},
                stdout=out, stderr=subprocess.STDOUT, text=True)
        agent = Agent(node, self.net[host], base, proc, log)
        self.agents[node] = agent
        return agent

    def start_service(self, name: str, agent: Agent, uid: int, *args: str) -> Reports:
        proc = agent.host.popen(
            [sys.executable, str(MESHSVC), "--socket", str(agent.socket), "--name", name,
             "--trust-domain", TD, *args],
            uid=uid, env={**os.environ, "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        reports = Reports(proc, name)
        self.services[name] = reports
        return reports

    def stop_services(self) -> None:
        """SIGTERM every service, the last started first, each once the one before has written
        its ``final`` line: callers stop before the services they call."""
        for reports in reversed(self.services.values()):
            if reports.proc.poll() is None:
                reports.proc.send_signal(signal.SIGTERM)
            reports.wait("its final report", reports.count("final"), 30)

    def dump(self) -> None:
        """Print what happened (shown by pytest with a failure): every service's events but
        its successful calls, and each agent's log."""
        for name, reports in self.services.items():
            for e in reports.events:
                if e.get("event") != "call" or not e.get("ok"):
                    print(f"[{name}] {json.dumps(e)}")
            for line in reports.other[-20:]:
                print(f"[{name}] {line}")
        for agent in self.agents.values():
            for line in agent.tail(200):
                print(f"[agent {agent.node}] {line}")

    def failures(self) -> list[dict[str, Any]]:
        return [e for r in self.services.values() for e in r.of("call", ok=False)]


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="mh-", dir="/tmp"))  # short: sockets live here
    os.chmod(base, 0o755)
    with Network(["ca", "a", "b"]) as net:
        cluster = Cluster(net, base)
        yield cluster
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            cluster.dump()
    # (the network is gone here: every process killed, every namespace deleted)
    subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
