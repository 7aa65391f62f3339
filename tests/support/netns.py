"""Several hosts on one machine: Linux network namespaces joined by a bridge (tests run as root).

    with Network(["ca", "a", "b"]) as net:
        proc = net["a"].popen([sys.executable, "-m", "mesh.cli", "agent", ...])
        net["ca"].ip                        # "10.77.0.1": hosts reach each other by address

Layout: one namespace per host and one more, the "switch", holding a bridge. Each host has one
interface ``eth0`` (a veth pair whose other end is a port of the bridge in the switch
namespace), the address ``10.77.0.N/24`` (N = 1, 2, ... in the order given) and ``lo`` up. No
interface is ever made in the root namespace: each is created directly inside a namespace of
this network, where interface names cannot collide with anyone's. Namespace names carry a
per-network prefix (``mt-<pid>-<6 hex>-``: the creating process and a random part), so parallel
test workers never collide, and :func:`leftovers` finds what a network left behind.

``close()`` cannot run in a process killed outright (``kill -9`` of a test worker): the next
network made on the machine removes the namespaces of creators that no longer exist, and the
processes still running in them (:func:`sweep_orphans`).

``close()`` (also on leaving the ``with``) kills every process started on a host and still
running, then deletes the namespaces (which deletes their interfaces and the bridge). It runs
after a failure half-way through setup too, and removes exactly what was made.

Anything that cannot be made raises :class:`NetnsError`: a test needing hosts fails, it is
never skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "mt-"
SUBNET = "10.77.0"
#: environment variables that would send gRPC or HTTP clients to a proxy outside the network
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy",
               "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class NetnsError(RuntimeError):
    """A namespace, interface or address could not be made (not root, no ``ip``, ...)."""


def _ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NetnsError(f"`ip {' '.join(args)}` could not run: {err}") from err
    if done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Every named network namespace on the machine."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def leftovers(prefix: str = PREFIX) -> list[str]:
    """Namespaces whose name starts with ``prefix`` (a network's own prefix: what it left)."""
    return [n for n in namespaces() if n.startswith(prefix)]


def sweep_orphans() -> list[str]:
    """Delete the namespaces of networks whose creating process is gone (killed before its
    ``close()``), after killing what still runs in them. Returns the names deleted."""
    gone = []
    for ns in leftovers():
        pid = ns[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its creator lives: its network is in use
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for proc in _ip("netns", "pids", ns).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(proc), signal.SIGKILL)
        with contextlib.suppress(NetnsError):
            _ip("netns", "del", ns)
            gone.append(ns)
    return gone


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) without proxy settings: inside a namespace there is no proxy."""
    out = dict(os.environ if env is None else env)
    for name in _PROXY_VARS:
        out.pop(name, None)
    return out


@dataclass
class Host:
    """One host: a namespace with one address. Processes started here are the network's."""

    name: str
    netns: str
    ip: str
    network: Network = field(repr=False)

    def argv(self, argv: Sequence[str], *, uid: int | None = None) -> list[str]:
        """``argv`` run in this host's namespace, as ``uid`` if given (no supplementary
        groups)."""
        inner = list(argv)
        if uid is not None:
            inner = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *inner]
        return ["ip", "netns", "exec", self.netns, *inner]

    def popen(self, argv: Sequence[str], *, uid: int | None = None,
              env: Mapping[str, str] | None = None, **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on this host (``ip netns exec`` execs it: the pid is the program's).
        The network kills it at close if it still runs."""
        proc = subprocess.Popen(self.argv(argv, uid=uid), env=clean_env(env), **kw)
        self.network.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, uid: int | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 60,
            **kw: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.argv(argv, uid=uid), env=clean_env(env), timeout=timeout,
                              check=False, **kw)

    def address(self, port: int) -> str:
        return f"{self.ip}:{port}"


class Network:
    """Hosts named ``names`` on one bridge; see the module docstring."""

    def __init__(self, names: Sequence[str], *, prefix: str | None = None) -> None:
        if len(set(names)) != len(names) or not 0 < len(names) < 250:
            raise ValueError("give between 1 and 249 distinct host names")
        self.prefix = prefix or f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}-"
        self.switch = f"{self.prefix}sw"
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self._made: list[str] = []
        try:
            sweep_orphans()
            self._make(names)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _make(self, names: Sequence[str]) -> None:
        self._netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, name in enumerate(names, start=1):
            ns = f"{self.prefix}{name}"
            self._netns(ns)
            port = f"p{i}"
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                "netns", self.switch)
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            ip = f"{SUBNET}.{i}"
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.hosts[name] = Host(name, ns, ip, self)

    def close(self) -> None:
        """Kill what runs on the hosts, delete every namespace made (idempotent)."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.processes.clear()
        errors = []
        for ns in reversed(self._made):
            try:
                _ip("netns", "del", ns)
            except NetnsError as err:
                errors.append(str(err))
        self._made.clear()
        if errors:
            raise NetnsError("; ".join(errors))
