"""What meshid costs per gRPC call, against plain gRPC with mutual TLS in the same run.

Unary calls on loopback, closed loop, 1 and 8 client threads, each cell run for ``--seconds``
after a short warm-up; throughput is calls/s, latency p50/p99 in microseconds.

Cells:
- ``plain``: gRPC with mutual TLS, no interceptors (the baseline, ratio 1.00);
- ``plain_md``: the same, each call carrying an ``authorization`` entry as large as meshid's
  (a real app-asserted token, which the plain server ignores): what gRPC itself charges to
  carry the token, a floor for any design that sends it in metadata;
- ``mesh``: meshid on both sides, a user's call: the client mints an app-asserted token
  wrapping the user token for every call, the server checks peer, token chain and policy, sets
  the context and writes the audit decision (logger disabled), with warm caches (minted-token
  reuse, verified-token cache, parsed peer certificates);
- ``mesh_nocache``: the same with every cache off (a new token is signed and every layer's
  signature verified on every call);
- ``plain_2hop`` / ``mesh_2hop``: client -> orders -> payments, orders' handler calling on
  (meshid: the user and chain propagate with no handler code);
- ``plain_edge`` / ``mesh_edge``: a client outside the mesh calling gateway over server TLS
  only (no client certificate). meshid: an edge port (spec 4.7, 4.8), the client sending its
  DPoP-bound user token and a NEW proof per call (``mesh.DpopClient``'s interceptor: one ES256
  sign), the server checking the token (cached after the first call), the proof (one ES256
  verify, the replay cache) and the policy. ``mesh_edge`` is also compared with
  ``plain_edge`` (``ratio_edge``); ``plain_edge_proof`` is the plain server called by the same
  DPoP client (the proof made and sent, and ignored): the client's share of the cost.

The servers run in a child process (as in a deployment, client and server do not share a
GIL). ``cpu us`` is the CPU time per call of both processes together: it moves less than
calls/s when other programs load the machine.

The cells run in interleaved rounds (the order reversed every other round), so load from
other programs drifting over the run hits every cell alike. A cell's ratio is the median over
rounds of its calls/s divided by ``plain``'s in the same round (the 2-hop rows also to
``plain_2hop``); ``range`` is the lowest and highest of those per-round ratios. ``cpu ratio``
is the median over rounds of ``plain``'s CPU per call divided by the cell's: the throughput
ratio to expect once the CPU is the limit, and steadier on a shared machine. Calls/s and CPU
per call are medians over rounds, p50/p99 over all calls.
Target (issue 4): ``mesh`` >= 0.90x of ``plain`` at both thread counts. ``--json`` prints the
same figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc

from ca.authority import CertificateAuthority
from mesh.dpop import DpopClient
from mesh.identity.bundle import FileBundleSource
from mesh.identity.svid import X509SvidFolder
from mesh.policy import Policy, Rule
from mesh.tokens.signer import TokenSigner
from mesh.tokens.verify import ChainVerifier
from mesh.transport.channel import MeshChannel
from mesh.transport.context import enter_call, leave_call
from mesh.transport.server import MeshServer

METHOD = "/bench.v1.Echo/Unary"
TARGET = 0.90
THREADS = (1, 8)


def handler(forward: Callable[[bytes], bytes] | None) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return forward(request) if forward is not None else request

    return grpc.method_handlers_generic_handler(
        "bench.v1.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})


class Mesh:
    """Identities, trust bundle and server/channel builders rooted in one folder.

    The parent creates the CA and the files (``create``); the server process opens the same
    folder without the CA, as a service would.
    """

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.ids = {n: X509SvidFolder(root / n) for n in ("gateway", "orders", "payments")}
        self.bundle = FileBundleSource(root / "ca" / "bundle.spiffe.json",
                                       root / "ca" / "crl.pem")

    @staticmethod
    def create(root: Path, jkt: str) -> tuple[str, str]:
        """Make the CA and identities; return a user token for gateway (scope ``orders``), and
        the same bound to the DPoP key ``jkt`` (for the edge cells)."""
        ca = CertificateAuthority.init(root / "ca")
        try:
            for name in ("gateway", "orders", "payments"):
                ca.issue(name).write_to(root / name)
            auth = ca.issue("auth")
            assert auth.private_key is not None
            signer = TokenSigner(auth.private_key, auth.chain)
            gateway = ca.trust_domain.service("gateway")
            return (signer.user_token("alice", [gateway], scope="orders", ttl=3600),
                    signer.user_token("alice", [gateway], scope="orders", ttl=3600, jkt=jkt))
        finally:
            ca.close()

    def user_chain(self, token: str) -> Any:
        """The verified user call, as gateway's edge port would see it."""
        gateway = self.ids["gateway"].current().spiffe_id
        return ChainVerifier(gateway, self.bundle).verify(token, None)

    def as_gateway(self, token: str, callee: str) -> str:
        """The app-asserted token gateway sends ``callee`` for this user (what meshid carries)."""
        svid = self.ids["gateway"].current()
        return TokenSigner(svid.private_key, svid.chain).app_asserted_token(
            token, aud=svid.spiffe_id.trust_domain.service(callee))

    def pem(self, name: str) -> tuple[bytes, bytes, bytes]:
        d = self.root / name
        return ((d / "svid_key.pem").read_bytes(), (d / "svid.pem").read_bytes(),
                (d / "svid_bundle.pem").read_bytes())

    def _server(self, server: Any, creds: Any) -> int:
        port: int = server.add_secure_port("127.0.0.1:0", creds) if creds else server.add_port(
            "127.0.0.1:0")
        server.start()
        self.stack.callback(server.stop, None)
        return port

    def plain_server(self, name: str, forward: Callable[[bytes], bytes] | None = None) -> int:
        key, chain, roots = self.pem(name)
        server = grpc.server(futures.ThreadPoolExecutor(16))
        server.add_generic_rpc_handlers([handler(forward)])
        creds = grpc.ssl_server_credentials([(key, chain)], root_certificates=roots,
                                            require_client_auth=True)
        return self._server(server, creds)

    def plain_edge_server(self) -> int:
        key, chain, _ = self.pem("gateway")
        server = grpc.server(futures.ThreadPoolExecutor(16))
        server.add_generic_rpc_handlers([handler(None)])
        return self._server(server, grpc.ssl_server_credentials([(key, chain)]))

    def mesh_edge_server(self) -> int:
        policy = Policy([Rule(methods=("/bench.v1.Echo/*",), peers=("*",), scopes=("orders",))])
        server = MeshServer(self.ids["gateway"], policy, self.bundle, max_workers=16, edge=True)
        server.add_generic_rpc_handlers([handler(None)])
        return self._server(server, None)

    def edge_channel(self, port: int) -> grpc.Channel:
        """A client outside the mesh: server TLS, the CA's roots, gateway's name pinned."""
        _, _, roots = self.pem("gateway")
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(roots),
            options=[("grpc.ssl_target_name_override", "gateway.svc.mesh.internal")])
        self.stack.callback(channel.close)
        return channel

    def plain_channel(self, port: int, me: str, callee: str) -> grpc.Channel:
        key, chain, roots = self.pem(me)
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(roots, key, chain),
            options=[("grpc.ssl_target_name_override", f"{callee}.svc.mesh.internal")])
        self.stack.callback(channel.close)
        return channel

    def mesh_server(self, name: str, chains: tuple[tuple[str, ...], ...], caches: bool,
                    forward: Callable[[bytes], bytes] | None = None) -> int:
        policy = Policy([Rule(methods=("/bench.v1.Echo/*",), chains=chains,
                              scopes=("orders",))])
        server = MeshServer(self.ids[name], policy, self.bundle, max_workers=16, caches=caches)
        server.add_generic_rpc_handlers([handler(forward)])
        return self._server(server, None)

    def mesh_channel(self, port: int, me: str, callee: str, caches: bool) -> MeshChannel:
        channel = MeshChannel(f"127.0.0.1:{port}", callee, self.ids[me], token_cache=caches)
        self.stack.callback(channel.close)
        return channel

    def start_servers(self) -> dict[str, int]:
        """Every server the cells call; 2-hop servers forward to payments from their handler."""
        ports = {
            "plain": self.plain_server("orders"),
            "mesh": self.mesh_server("orders", (("gateway",),), True),
            "mesh_nocache": self.mesh_server("orders", (("gateway",),), False),
        }
        plain_pay = self.plain_channel(self.plain_server("payments"), "orders", "payments")
        plain_pay_call: Any = plain_pay.unary_unary(METHOD)
        ports["plain_2hop"] = self.plain_server(
            "orders", lambda r: plain_pay_call(r, timeout=10))
        mesh_pay = self.mesh_channel(
            self.mesh_server("payments", (("gateway", "orders"),), True), "orders", "payments",
            True).unary_unary(METHOD)
        ports["mesh_2hop"] = self.mesh_server(
            "orders", (("gateway",),), True, lambda r: mesh_pay(r, timeout=10))
        ports["plain_edge"] = self.plain_edge_server()
        ports["mesh_edge"] = self.mesh_edge_server()
        return ports


def serve(root: str, conn: Any) -> None:
    """Server process: start every server, send the ports, answer CPU-time queries."""
    with ExitStack() as stack:
        mesh = Mesh(Path(root), stack)
        conn.send(mesh.start_servers())
        while True:
            command = conn.recv()
            if command == "cpu":
                conn.send(time.process_time())
            else:
                break


def run_cell(call: Callable[[], Any], threads: int, seconds: float, as_user: Any | None,
             server_cpu: Callable[[], float]) -> dict[str, Any]:
    stop = threading.Event()
    start_gate = threading.Barrier(threads + 1)
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        handle = enter_call(as_user) if as_user is not None else None
        try:
            for _ in range(20):  # warm-up: connections, caches
                call()
            start_gate.wait()
            out = lat[i]
            clock = time.perf_counter
            while not stop.is_set():
                t0 = clock()
                call()
                out.append(clock() - t0)
        except BaseException as err:  # a benchmark that fails must say so
            errors.append(err)
            start_gate.abort()
        finally:
            if handle is not None:
                leave_call(handle)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        start_gate.wait()
    except threading.BrokenBarrierError:
        stop.set()
        for w in workers:
            w.join()
        raise RuntimeError(f"calls failed during warm-up: {errors[0]!r}") from None
    t0 = time.perf_counter()
    cpu0 = time.process_time() + server_cpu()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() + server_cpu() - cpu0
    if errors:
        raise RuntimeError(f"calls failed during the benchmark: {errors[0]!r}")
    return {"elapsed": elapsed, "cpu": cpu, "lat": [x for per in lat for x in per]}


def rate(run: dict[str, Any]) -> float:
    return float(len(run["lat"]) / run["elapsed"])


def merge(runs: list[dict[str, Any]], base: list[dict[str, Any]] | None = None
          ) -> dict[str, Any]:
    """One cell's figures over its rounds; ``base``: the baseline's runs, round for round."""
    all_lat = sorted(x for r in runs for x in r["lat"])
    n = len(all_lat)
    out: dict[str, Any] = {
        "cpu_us_per_call": round(statistics.median(r["cpu"] / len(r["lat"]) for r in runs)
                                 * 1e6, 1),
        "calls_per_s": round(statistics.median(rate(r) for r in runs), 1),
        "p50_us": round(statistics.median(all_lat) * 1e6, 1),
        "p99_us": round(all_lat[min(n - 1, int(n * 0.99))] * 1e6, 1),
        "calls": n,
    }
    if base is not None:
        ratios = [rate(r) / rate(b) for r, b in zip(runs, base, strict=True)]
        out["round_ratios"] = [round(x, 3) for x in ratios]
        out["ratio"] = round(statistics.median(ratios), 3)
        # Baseline CPU per call over this cell's, round for round: the throughput ratio to
        # expect when the CPU is the limit (8 threads on a small machine), and steadier than
        # calls/s when other programs share the machine.
        out["cpu_ratio"] = round(statistics.median(
            (b["cpu"] / len(b["lat"])) / (r["cpu"] / len(r["lat"]))
            for r, b in zip(runs, base, strict=True)), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per cell")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per cell")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = parser.parse_args(argv)

    results: dict[str, dict[str, dict[str, Any]]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshbench-")))
        dpop_key = DpopClient()  # the outside client's key, for the edge cells
        token, bound = Mesh.create(tmp, dpop_key.jkt)
        m = Mesh(tmp, stack)
        user = m.user_chain(token)
        # Servers in their own process, as in a deployment: client and server do not share a
        # GIL. "cpu us" adds both processes' CPU time.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(str(tmp), child), daemon=True)
        proc.start()
        stack.callback(proc.join, 10)
        stack.callback(parent.send, "stop")
        ports = parent.recv()

        def server_cpu() -> float:
            parent.send("cpu")
            value: float = parent.recv()
            return value

        def chan(name: str, callee: str, mesh: bool, caches: bool = True) -> Any:
            if mesh:
                return m.mesh_channel(ports[name], "gateway", callee, caches).unary_unary(METHOD)
            return m.plain_channel(ports[name], "gateway", callee).unary_unary(METHOD)

        plain, warm = chan("plain", "orders", False), chan("mesh", "orders", True)
        cold = chan("mesh_nocache", "orders", True, caches=False)
        plain_2hop, mesh_2hop = chan("plain_2hop", "orders", False), chan("mesh_2hop", "orders",
                                                                          True)
        carried = (("authorization", "Bearer " + m.as_gateway(token, "orders")),)
        plain_edge = m.edge_channel(ports["plain_edge"]).unary_unary(METHOD)
        mesh_edge = dpop_key.intercept(m.edge_channel(ports["mesh_edge"]),
                                       "gateway.svc.mesh.internal", token=bound
                                       ).unary_unary(METHOD)
        plain_edge_proof = dpop_key.intercept(m.edge_channel(ports["plain_edge"]),
                                              "gateway.svc.mesh.internal", token=bound
                                              ).unary_unary(METHOD)
        cells: list[tuple[str, Callable[[], Any], Any]] = [
            ("plain", lambda: plain(b"x", timeout=10), None),
            ("plain_md", lambda: plain(b"x", timeout=10, metadata=carried), None),
            ("mesh", lambda: warm(b"x", timeout=10), user),
            ("mesh_nocache", lambda: cold(b"x", timeout=10), user),
            ("plain_2hop", lambda: plain_2hop(b"x", timeout=10), None),
            ("mesh_2hop", lambda: mesh_2hop(b"x", timeout=10), user),
            ("plain_edge", lambda: plain_edge(b"x", timeout=10), None),
            ("plain_edge_proof", lambda: plain_edge_proof(b"x", timeout=10), None),
            ("mesh_edge", lambda: mesh_edge(b"x", timeout=10), None),
        ]
        # Interleave the cells in rounds so that load from other processes drifting over the
        # run hits every cell alike; each cell gets ``seconds`` in total.
        for threads in THREADS:
            parts: dict[str, list[dict[str, Any]]] = {}
            for r in range(args.rounds):
                for name, call, as_user in (cells if r % 2 == 0 else cells[::-1]):
                    parts.setdefault(name, []).append(run_cell(
                        call, threads, args.seconds / args.rounds, as_user, server_cpu))
            for name, runs in parts.items():
                cell = merge(runs, parts["plain"])
                if name == "mesh_2hop":
                    cell["ratio_2hop"] = merge(runs, parts["plain_2hop"])["ratio"]
                if name in ("mesh_edge", "plain_edge_proof"):
                    edge = merge(runs, parts["plain_edge"])
                    cell["ratio_edge"] = edge["ratio"]
                    cell["cpu_ratio_edge"] = edge["cpu_ratio"]
                    cell["round_ratios_edge"] = edge["round_ratios"]
                results.setdefault(name, {})[str(threads)] = cell

    print(f"{'cell':<17}{'threads':>8}{'calls/s':>10}{'p50 us':>9}{'p99 us':>9}"
          f"{'cpu us':>9}{'ratio':>8}{'range':>13}{'cpu ratio':>11}")
    for name, per in results.items():
        for count, c in per.items():
            extra = f"  ({c['ratio_2hop']:.2f}x plain_2hop)" if "ratio_2hop" in c else ""
            if "ratio_edge" in c:
                spread_edge = (f"{min(c['round_ratios_edge']):.2f}-"
                               f"{max(c['round_ratios_edge']):.2f}")
                extra = (f"  ({c['ratio_edge']:.2f}x plain_edge, range {spread_edge}, "
                         f"cpu {c['cpu_ratio_edge']:.2f}x)")
            spread = f"{min(c['round_ratios']):.2f}-{max(c['round_ratios']):.2f}"
            print(f"{name:<17}{count:>8}{c['calls_per_s']:>10.0f}{c['p50_us']:>9.0f}"
                  f"{c['p99_us']:>9.0f}{c['cpu_us_per_call']:>9.0f}{c['ratio']:>7.2f}x"
                  f"{spread:>13}{c['cpu_ratio']:>10.2f}x{extra}")
    met = {t: results["mesh"][t]["ratio"] >= TARGET for t in results["mesh"]}
    print(f"target: mesh >= {TARGET:.2f}x plain at 1 and 8 threads: "
          + ", ".join(f"{t} thread(s) {'met' if ok else 'MISSED'}" for t, ok in met.items()))
    if args.json:
        print(json.dumps({"bench": "grpc_overhead", "seconds": args.seconds, "target": TARGET,
                          "target_met": met, "results": results}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
