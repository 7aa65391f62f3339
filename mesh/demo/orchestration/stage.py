"""The demo's stage: a fresh state folder, a CA run through its own commands and served to two
node agents, the services' SVIDs obtained and renewed by those agents, the demo users, and the
six services as processes on loopback, health-checked over mutual TLS.

``mesh`` never imports ``ca``: the CA is driven as the README drives it, with ``mesh-ca``,
``ca-issue`` and ``mesh agent`` from the same environment, as subprocesses.

Two "nodes" share this host: node-a's agent keeps a spiffe-helper folder per service
(``--write``); node-b's service reads its identity from node-b's SPIFFE Workload API socket.
The launcher's own identity (``operator``: health checks, TLS probes, the staged attacks) is
issued with ``ca-issue``, the way an operator's would be.

State folder layout::

    ca/                 the CA (keys, registry, bundle.spiffe.json, crl.pem)
    identities/NAME/    svid.pem, svid_key.pem, svid_bundle.pem, bundle.spiffe.json, crl.pem of
                        each service, kept current by its node's agent (the operator's by
                        ca-issue)
    nodes/NODE/         an agent's state folder (state/) and Workload API socket (agent.sock)
    users.json          demo users (scrypt hashes only)
    data/NAME/          a service's own state (orders.sqlite)
    logs/NAME.log       a process's output; logs/NAME.audit.jsonl a service's authorization
                        decisions
    ready/NAME.json     written by a service (or the CA service) once it listens
    endpoints.json      where to call the mesh from outside (for ``mesh demo call``), while
                        a mesh is kept running
    pids.json           the launcher's children
    launcher.lock       held by the running launcher, holds its pid (statelock.py)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from mesh.demo.errors import DemoConfigError, DemoError
from mesh.demo.logic.users import new_user, write_users_file
from mesh.demo.orchestration.procs import Supervisor, wait_for_file
from mesh.demo.orchestration.statelock import LOCK_FILE, StateLock, acquire
from mesh.identity.spiffeid import DEFAULT_TRUST_DOMAIN, TrustDomain
from mesh.identity.svid import StaticSvid, Svid
from mesh.transport.credentials import channel_credentials

MARKER = ".meshid-demo-state"
# What a demo leaves in its state folder (scripts/ca_demo.py, the CA-only demo, too): a folder
# holding only these may be emptied even without the marker.
_DEMO_ENTRIES = frozenset({MARKER, "ca", "svids", "identities", "nodes", "users.json", "data",
                           "logs", "ready", "endpoints.json", "pids.json", "pids.tmp",
                           "summary.json", LOCK_FILE})
ENDPOINTS_FILE = "endpoints.json"
OPERATOR = "operator"  # the launcher's own identity: health checks and the staged attacks
# Started in waves: a service is started once the services it calls listen.
WAVES: tuple[tuple[str, ...], ...] = (
    ("inventory", "payments", "auth"),
    ("orders", "reporting"),
    ("gateway",),
)
CALLS = {"gateway": ("orders",), "orders": ("inventory", "payments"), "reporting": ("inventory",)}
EDGE = ("auth", "gateway")
# Which node runs which service. node-a's agent writes each service a folder; node-b's service
# asks node-b's agent over the Workload API.
NODES: dict[str, tuple[str, ...]] = {
    "node-a": ("auth", "gateway", "orders", "inventory", "payments"),
    "node-b": ("reporting",),
}
VIA_WORKLOAD_API = frozenset({"reporting"})
# Short lives, so that renewals happen during the story: the agent renews at a quarter to a
# third of the life. auth signs user tokens for 15 minutes and a token never outlives the
# certificate that signed it (spec 3.3), so auth's SVIDs live longer than its tokens.
SVID_SECONDS = 20
SVID_TTL = f"{SVID_SECONDS}s"
TTL = {"auth": "1h"}


@dataclass(frozen=True, slots=True)
class DemoUserSpec:
    username: str
    password: str
    name: str
    scope: tuple[str, ...]


# Demo credentials, printed by the launcher; the users file itself holds scrypt hashes only.
USERS = (
    DemoUserSpec("alice", "alice-demo-pw", "Alice Example", ("orders:read", "orders:write")),
    DemoUserSpec("bob", "bob-demo-pw", "Bob Example", ("orders:read",)),
)


class StageError(DemoError):
    """A setup step (CA command, service start, health check) failed."""

    reason = "STAGE_FAILED"


@dataclass(frozen=True, slots=True)
class CaService:
    """Where ``mesh-ca serve`` listens (from its ready file)."""

    agent: str
    attest: str
    fingerprint: str
    pid: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    service: str
    listen: str
    edge: str | None
    pid: int


def _tool(name: str) -> str:
    """The console script from this interpreter's environment (the .venv), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StageError(f"{name} is not installed: run ./scripts/demo (it installs the project)")
    return found


def rel_path(path: Path) -> str:
    """``path`` as printed: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check_folder(state: Path) -> None:
    """Refuse a path that is not a folder, or a non-empty folder the demo did not make."""
    if state.exists():
        if not state.is_dir():
            raise DemoConfigError(f"{state} exists and is not a folder")
        entries = {entry.name for entry in state.iterdir()}
        if entries and MARKER not in entries and not entries <= _DEMO_ENTRIES:
            raise DemoConfigError(
                f"{state} is not empty and was not made by the demo; pick another --state "
                "folder (the demo deletes its state folder on every run)"
            )


def claim_state(state: Path) -> StateLock:
    """Lock ``state`` for this launcher (:mod:`statelock`), then empty it for a fresh run.

    Refuses (``DemoConfigError``) a folder the demo did not make, and one another launcher
    holds, naming its pid; nothing in the folder is touched then."""
    _check_folder(state)
    state.mkdir(parents=True, exist_ok=True)
    lock = acquire(state)
    try:
        prepare_state(state)
    except BaseException:
        lock.release()
        raise
    return lock


def prepare_state(state: Path) -> None:
    """Empty ``state`` for a fresh run; refuse a non-empty folder the demo did not make. The
    lock file stays (see :mod:`statelock`): call this only while holding it, or for a folder
    no launcher uses."""
    _check_folder(state)
    if state.exists():
        _stop_leftovers(state)
        for entry in state.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    state.mkdir(parents=True, exist_ok=True)
    (state / MARKER).write_text(
        "made by python -m mesh.demo.orchestration.launcher; deleted on every run\n")


def _stop_leftovers(state: Path) -> None:
    """A previous run killed with SIGKILL may have left children: stop those of this folder."""
    for pid in processes_mentioning(state):
        try:
            os.kill(pid, 15)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + 5
    while processes_mentioning(state) and time.monotonic() < deadline:
        time.sleep(0.1)


def processes_mentioning(state: Path) -> list[int]:
    """Live processes with an argument inside ``state``'s identities, nodes or CA folder: the
    demo's services, agents and CA service (the launcher and its parents name only ``state``
    itself, so they are never among them)."""
    root = state.resolve()
    inside = (f"{root / 'identities'}/".encode(), f"{root / 'nodes'}/".encode())
    exact = str(root / "ca").encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "stat").read_text()
        except OSError:
            continue
        args = [arg.split(b"=", 1)[-1] for arg in cmdline.split(b"\0")]
        mentions = any(arg == exact or arg.startswith(inside) for arg in args)
        # A zombie is already dead; it only waits for its parent to collect it.
        if mentions and status.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


class Stage:
    """Everything the story acts on; build with :meth:`create`, then :meth:`start_all`."""

    def __init__(self, state: Path, supervisor: Supervisor,
                 trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self.state = state.resolve()
        self.sup = supervisor
        self.td = TrustDomain(trust_domain)
        self.ca_dir = self.state / "ca"
        self.ids = self.state / "identities"
        self.users_file = self.state / "users.json"
        self.nodes = self.state / "nodes"
        self.endpoints: dict[str, Endpoint] = {}
        self.ca_service: CaService | None = None

    # -- the CA, through its commands ----------------------------------------------------------

    def run_tool(self, tool: str, *args: str) -> str:
        argv = [_tool(tool), *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise StageError(f"{tool} {' '.join(args[:1])} failed (exit {done.returncode}): "
                             f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def init_ca(self) -> str:
        return self.run_tool("mesh-ca", "init", "--ca-dir", str(self.ca_dir),
                             "--trust-domain", self.td.name)

    def issue(self, names: Sequence[str]) -> str:
        return self.run_tool("ca-issue", *names, "--ca-dir", str(self.ca_dir),
                             "--out", str(self.ids))

    def start_ca_service(self, *, timeout: float = 30.0) -> CaService:
        """``mesh-ca serve`` on two free loopback ports, supervised like the services."""
        ready = self.state / "ready" / "ca.json"
        ready.unlink(missing_ok=True)
        child = self.sup.start("ca", [_tool("mesh-ca"), "serve", "--ca-dir", str(self.ca_dir),
                                      "--listen", "127.0.0.1:0", "--ready-file", str(ready)])
        doc = wait_for_file(ready, child, timeout=timeout)
        self.ca_service = CaService(doc["agent_address"], doc["attest_address"],
                                    doc["root_fingerprint"], child.pid)
        return self.ca_service

    def join_token(self, node: str) -> str:
        """A one-time join token for ``node`` (``mesh-ca join-token`` prints it alone)."""
        return self.run_tool("mesh-ca", "join-token", node, "--ca-dir", str(self.ca_dir)).strip()

    def register(self, service: str, node: str) -> str:
        return self.run_tool("mesh-ca", "register", service, "--node", node,
                             "--uid", str(os.getuid()), "--ttl", TTL.get(service, SVID_TTL),
                             "--allow-short-ttl", "--ca-dir", str(self.ca_dir))

    def socket(self, node: str) -> Path:
        return self.nodes / node / "agent.sock"

    def agent_argv(self, node: str) -> list[str]:
        if self.ca_service is None:
            raise StageError("the CA service is not running")
        argv = [_tool("mesh"), "agent", "--ca", self.ca_service.agent,
                "--ca-attest", self.ca_service.attest,
                "--ca-fingerprint", self.ca_service.fingerprint, "--node", node,
                "--state", str(self.nodes / node / "state"), "--socket", str(self.socket(node)),
                "--sync-interval", "5", "--retry-max", "2",
                # one host: every agent hears of a new key at once; a 1 s hold keeps the
                # renewal well inside half of a 20 s life
                "--key-propagation", "1"]
        for service in NODES[node]:
            if service not in VIA_WORKLOAD_API:
                argv += ["--write", f"{service}={self.ids / service}"]
        return argv

    def start_agent(self, node: str, token: str, *, timeout: float = 30.0) -> None:
        """Start ``node``'s agent (the join token goes in its environment, not on its command
        line, which every local user can read), and wait until it serves: its socket answers
        and every folder it keeps holds an SVID."""
        env = {**os.environ, "MESH_AGENT_JOIN_TOKEN": token}
        child = self.sup.start(f"agent-{node}", self.agent_argv(node), env=env)
        wanted = [self.socket(node)] + [self.ids / s / "svid.pem" for s in NODES[node]
                                        if s not in VIA_WORKLOAD_API]
        deadline = time.monotonic() + timeout
        while not all(path.exists() for path in wanted):
            if not child.alive() or time.monotonic() > deadline:
                missing = ", ".join(str(p) for p in wanted if not p.exists())
                state = (f"exited with code {child.popen.returncode}" if not child.alive()
                         else f"not ready after {timeout:.0f} s")
                raise StageError(f"the agent of {node} {state} (missing: {missing}); last lines "
                                 f"of {child.log_path}:\n{child.log_tail()}")
            time.sleep(0.05)

    def agent_status(self, node: str) -> str:
        return self.run_tool("mesh", "agent", "status", "--socket", str(self.socket(node)))

    def evict(self, node: str) -> str:
        return self.run_tool("mesh-ca", "evict", node, "--ca-dir", str(self.ca_dir))

    def issuing_nodes(self) -> dict[str, set[str | None]]:
        """For each name in the CA's registry, the nodes its valid certificates were issued
        through (None: by ``ca-issue`` on the CA's host)."""
        doc = json.loads(self.run_tool("mesh-ca", "list", "--json", "--ca-dir", str(self.ca_dir)))
        found: dict[str, set[str | None]] = {}
        for cert in doc["certificates"]:
            if cert["status"] == "valid":
                found.setdefault(cert["name"], set()).add(cert["node"])
        return found

    def nodes_table(self) -> str:
        return self.run_tool("mesh-ca", "nodes", "--ca-dir", str(self.ca_dir))

    def ca_list(self) -> str:
        return self.run_tool("mesh-ca", "list", "--ca-dir", str(self.ca_dir))

    def write_users(self) -> None:
        write_users_file(self.users_file, [
            new_user(u.username, u.password, name=u.name, scope=u.scope) for u in USERS
        ])

    # -- identities and files ------------------------------------------------------------------

    def svid(self, name: str) -> Svid:
        """``name``'s SVID from its folder; one generation of the agent's folder (the
        ``.current`` link resolved once), so the key always matches the certificate."""
        if name in VIA_WORKLOAD_API:
            raise StageError(f"{name} reads its SVID from the Workload API; it has no folder")
        folder = self.ids / name
        if (folder / ".current").is_symlink():
            folder = (folder / ".current").resolve()
        return StaticSvid.from_pem((folder / "svid.pem").read_bytes(),
                                   (folder / "svid_key.pem").read_bytes(),
                                   (folder / "svid_bundle.pem").read_bytes()).current()

    def roots_pem(self) -> bytes:
        return (self.ca_dir / "svid_bundle.pem").read_bytes()

    def audit_file(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.audit.jsonl"

    def audit(self, name: str) -> list[dict[str, Any]]:
        path = self.audit_file(name)
        if not path.exists():
            return []
        lines = []
        for raw in path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def log_text(self, name: str) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- services ------------------------------------------------------------------------------

    def argv(self, name: str) -> list[str]:
        argv = [sys.executable, "-m", "mesh.demo", name]
        if name in VIA_WORKLOAD_API:
            node = next(n for n, services in NODES.items() if name in services)
            argv += ["--workload-api", str(self.socket(node))]
        else:
            argv += ["--identity", str(self.ids / name)]
        argv += [
            "--listen", "127.0.0.1:0",
            "--audit-log", str(self.audit_file(name)),
            "--ready-file", str(self.state / "ready" / f"{name}.json"),
            "--data", str(self.state / "data" / name),
        ]
        if name in EDGE:
            argv += ["--edge-listen", "127.0.0.1:0"]
        if name == "auth":
            argv += ["--users", str(self.users_file)]
        if name == "reporting":
            argv += ["--report-interval", "1"]
        for callee in CALLS.get(name, ()):
            argv += ["--peer", f"{callee}={self.endpoints[callee].listen}"]
        return argv

    def start(self, names: Sequence[str], *, timeout: float = 30.0) -> None:
        """Start ``names`` together, wait for each to listen and to answer its health check."""
        children = []
        for name in names:
            ready = self.state / "ready" / f"{name}.json"
            ready.unlink(missing_ok=True)
            children.append((name, ready, self.sup.start(name, self.argv(name))))
        for name, ready, child in children:
            doc = wait_for_file(ready, child, timeout=timeout)
            self.endpoints[name] = Endpoint(name, doc["listen"], doc.get("edge"), child.pid)
        for name in names:
            self.health(name)

    def start_all(self) -> None:
        for wave in WAVES:
            self.start(wave)

    def stop(self, name: str) -> int | None:
        self.endpoints.pop(name, None)
        return self.sup.stop(name)

    def mtls_channel(self, target: str, callee: str, as_service: str) -> grpc.Channel:
        """A raw mutual-TLS channel presenting ``as_service``'s SVID (no token interceptor)."""
        return grpc.secure_channel(
            target, channel_credentials(self.svid(as_service)),
            options=[("grpc.ssl_target_name_override", self.td.service_dns_name(callee))],
        )

    def health(self, name: str, *, timeout: float = 15.0) -> None:
        """grpc.health.v1 over mutual TLS, as the operator identity; SERVING or StageError."""
        endpoint = self.endpoints[name]
        deadline = time.monotonic() + timeout
        last = "no answer"
        with self.mtls_channel(endpoint.listen, name, OPERATOR) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = f"status {status.status}"
                except grpc.RpcError as err:
                    last = f"{err.code().name}: {err.details()}"
                time.sleep(0.1)
        raise StageError(f"{name} did not pass its health check over mutual TLS: {last}")

    def write_endpoints(self) -> Path:
        doc = {
            "trust_domain": self.td.name,
            "roots": str(self.ca_dir / "svid_bundle.pem"),
            "auth": self.endpoints["auth"].edge if "auth" in self.endpoints else None,
            "gateway": self.endpoints["gateway"].edge,
        }
        path = self.endpoints_file
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, path)  # `mesh demo call` never reads half a file
        return path

    @property
    def endpoints_file(self) -> Path:
        return self.state / ENDPOINTS_FILE

    def served_certificate(self, name: str) -> x509.Certificate:
        """The leaf ``name`` presents to a new connection right now (a TLS probe)."""
        host, port = self.endpoints[name].listen.rsplit(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=self.roots_pem().decode())
        folder = self.ids / OPERATOR
        ctx.load_cert_chain(folder / "svid.pem", folder / "svid_key.pem")
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(
            raw, server_hostname=self.td.service_dns_name(name)
        ) as tls:
            der = tls.getpeercert(binary_form=True)
        if der is None:
            raise StageError(f"{name} presented no certificate")
        return x509.load_der_x509_certificate(der)
