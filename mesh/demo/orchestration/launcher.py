"""The demo launcher: ``python -m mesh.demo.orchestration.launcher`` (what ``./scripts/demo`` runs).

Builds a fresh mesh in ``--state`` (default ``./demo-state``): a CA through ``mesh-ca``, served
by ``mesh-ca serve`` to two node agents (``mesh agent``) that obtain and renew every service's
SVID, the six services as processes on 127.0.0.1, each health-checked over mutual TLS; then
tells the story (:mod:`mesh.demo.orchestration.story`),
prints a summary table and stops every process it started, also on Ctrl-C, SIGTERM or a failed
step. Exit code: 0 when every step went as expected, 1 when one did not, 2 for bad arguments
or a state folder in use by another launcher, 130 on Ctrl-C.
``--keep-running`` leaves the mesh up after the story and prints how to call it; its
``endpoints.json`` is removed when the mesh stops. A step that did not go as expected is shown
in full below the summary table and in ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from mesh.cliutil import ArgumentParser
from mesh.demo.errors import DemoConfigError
from mesh.demo.orchestration.procs import Supervisor
from mesh.demo.orchestration.stage import (
    NODES,
    OPERATOR,
    SVID_TTL,
    TTL,
    USERS,
    VIA_WORKLOAD_API,
    Stage,
    claim_state,
    processes_mentioning,
)
from mesh.demo.orchestration.stage import rel_path as _rel
from mesh.demo.orchestration.story import Out, Report, Story
from mesh.demo.services import SERVICES

DEFAULT_STATE = "demo-state"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m mesh.demo.orchestration.launcher",
        description="Run the meshid demo: a CA service, two node agents, six services on "
        "loopback, and the story.\n"
        "./scripts/demo runs this, passing its arguments on.")
    p.add_argument("--state", default=DEFAULT_STATE, type=Path,
                   help=f"state folder, emptied on every run; one launcher at a time may use it "
                   f"(default: ./{DEFAULT_STATE})")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the mesh up after the story (Ctrl-C stops it)")
    return p


def set_up(stage: Stage, out: Out, report: Report) -> None:
    out.section("0. Set-up: a CA service, two node agents, six services on loopback")
    started = time.monotonic()
    ca_dir = _rel(stage.ca_dir)
    out.line(f"$ mesh-ca init --ca-dir {ca_dir}", 2)
    out.line(stage.init_ca().rstrip(), 4)
    out.line(f"$ ca-issue {OPERATOR} --ca-dir {ca_dir} --out {_rel(stage.ids)}", 2)
    out.line(f"({OPERATOR} is the launcher's own identity, for health checks and the staged "
             "attacks)", 4)
    stage.issue([OPERATOR])
    ca = stage.start_ca_service()
    out.line(f"$ mesh-ca serve --ca-dir {ca_dir} --listen 127.0.0.1:0", 2)
    out.line(f"pid {ca.pid}: agent port (mutual TLS) {ca.agent}, attestation port (server "
             f"TLS) {ca.attest}", 4)
    out.line(f"root fingerprint (SHA-256) {ca.fingerprint}: each agent pins it", 4)
    for node, services in NODES.items():
        for service in services:
            out.line(f"$ mesh-ca register {service} --node {node} --uid {os.getuid()} --ttl "
                     f"{TTL.get(service, SVID_TTL)}"
                     + (" --allow-short-ttl" if service not in TTL else ""), 2)
            stage.register(service, node)
    out.line(f"SVIDs live {SVID_TTL}, so their renewals happen during the story; auth's live "
             "1h: it signs user tokens for 15 minutes, and a token never outlives the "
             "certificate that signed it", 4)
    for node, services in NODES.items():
        token = stage.join_token(node)
        out.line(f"$ mesh-ca join-token {node}   (a one-time token, handed to the agent in "
                 "its environment)", 2)
        out.line("$ mesh " + _shown(stage.agent_argv(node)[1:], ca.fingerprint), 2)
        stage.start_agent(node, token)
        folders = [s for s in services if s not in VIA_WORKLOAD_API]
        via_api = [s for s in services if s in VIA_WORKLOAD_API]
        what = []
        if folders:
            what.append(f"keeps a folder for {', '.join(folders)} in {_rel(stage.ids)}/")
        if via_api:
            what.append(f"serves {', '.join(via_api)} on the Workload API at "
                        f"{_rel(stage.socket(node))}")
        out.line(f"pid {stage.sup.get(f'agent-{node}').pid}: attested as "
                 f"spiffe://{stage.td.name}/agent/{node}; {'; '.join(what)}", 4)
    out.line(f"$ mesh-ca nodes --ca-dir {ca_dir}", 2)
    out.line(stage.nodes_table().rstrip(), 4)
    sample = stage.ids / "orders" / "svid.pem"
    out.line(f"$ mesh-ca inspect --leaf {_rel(sample)}", 2)
    out.line(stage.run_tool("mesh-ca", "inspect", "--leaf", str(sample)).rstrip(), 4)
    stage.write_users()
    out.line("demo users (users.json holds scrypt hashes only): "
             + ", ".join(f"{u.username} / {u.password} (scope {' '.join(u.scope)})"
                         for u in USERS), 2)
    issued = stage.issuing_nodes()
    wrong = {s: issued.get(s, set()) for node, services in NODES.items() for s in services
             if issued.get(s) != {node}}
    out.result(report.add(
        "0 CA service and agents", "every service's SVID issued through its node's agent",
        f"{len(SERVICES) - len(wrong)} of {len(SERVICES)} services' SVIDs issued through "
        f"{len(NODES)} agents ({len(VIA_WORKLOAD_API)} read through the Workload API)"
        + (f"; not as expected: {wrong}" if wrong else ""), not wrong))
    stage.start_all()
    out.line("services, each its own process, each health-checked over mutual TLS:", 2)
    for name in SERVICES:
        ep = stage.endpoints[name]
        edge = f"edge (server TLS) {ep.edge}" if ep.edge else ""
        node = next(n for n, services in NODES.items() if name in services)
        out.line(f"{name:<10} {node}  pid {ep.pid:<7} mTLS {ep.listen:<16} {edge}", 4)
    row = report.add("0 six services healthy",
                     "grpc.health.v1 SERVING", f"all SERVING after "
                     f"{time.monotonic() - started:.1f} s", True)
    out.result(row)


def _shown(argv: list[str], fingerprint: str) -> str:
    """A command line as printed: paths relative to here, the fingerprint shortened."""
    words = []
    for arg in argv:
        name, sep, value = arg.rpartition("=")
        word = f"{name}{sep}{_rel(Path(value))}" if value.startswith("/") else arg
        words.append(word.replace(fingerprint, fingerprint[:12] + "..."))
    return " ".join(words)


def keep_running(stage: Stage, out: Out) -> None:
    out.section("The mesh is up")
    if "auth" not in stage.endpoints:
        stage.start(["auth"])
        out.line("auth restarted, so new logins work", 2)
    endpoints = stage.write_endpoints()
    state = _rel(stage.state)
    mesh = _rel(Path(sys.executable).parent / "mesh")
    out.line(textwrap.dedent(f"""\
        endpoints: {_rel(endpoints)}; audit logs: {state}/logs/*.audit.jsonl
        node-a's agent keeps renewing its services' SVIDs; to see them:
          {mesh} agent status --socket {_rel(stage.socket("node-a"))}
        node-b stays evicted: inventory refuses reporting, the demo's other calls work
        call it from another terminal (password: see the set-up above, or --password):
          {mesh} demo call --state {state} --user alice order coffee-beans=2 mug=1
          {mesh} demo call --state {state} --user alice list
          {mesh} demo call --state {state} --user bob order mug=1   # SCOPE_MISSING
        Ctrl-C stops every service."""), 2)
    while True:
        dead = [c.name for c in stage.sup.children()
                if not c.alive() and c.name in stage.endpoints]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} stopped unexpectedly; see {state}/logs/")
        time.sleep(0.5)


def shut_down(stage: Stage, out: Out, report: Report) -> None:
    # Stop first, print after: output can fail (a closed pipe), stopping must not.
    children = stage.sup.children()
    stage.sup.stop_all()
    out.section("6. Shutdown")
    alive = [c.name for c in children if c.alive()]
    strays = processes_mentioning(stage.state)
    row = report.add("6 clean shutdown", "no process left",
                     f"{len(children)} processes started, {len(alive) + len(strays)} left"
                     + (f": {alive or strays}" if alive or strays else ""),
                     not alive and not strays)
    out.result(row)


def print_summary(out: Out, report: Report) -> None:
    """The summary table (long cells cut to fit), then every failed step in full."""
    out.section("Summary")
    width = max((len(r.step) for r in report.rows), default=10)
    exp_width = min(40, max((len(r.expected) for r in report.rows), default=10))
    out.line(f"{'step':<{width}}  {'expected':<{exp_width}}  result  observed")
    for r in report.rows:
        observed = r.observed if len(r.observed) <= 60 else r.observed[:57] + "..."
        expected = r.expected if len(r.expected) <= exp_width else (
            r.expected[: exp_width - 3] + "...")
        out.line(f"{r.step:<{width}}  {expected:<{exp_width}}  "
                 f"{'ok' if r.ok else 'FAIL':<6}  {observed}")
    failed = [r for r in report.rows if not r.ok]
    out.line()
    out.line(f"{len(report.rows) - len(failed)} of {len(report.rows)} steps as expected"
             + ("" if not failed else f"; {len(failed)} not: " + "; ".join(r.step for r in failed)))
    if failed:
        out.line()
        out.line("What did not go as expected, in full:")
        for r in failed:
            out.line(f"[FAIL] {r.step}: expected {r.expected}", 2)
            out.line(r.observed, 9)
            if r.detail:
                out.line(r.detail, 9)


def write_summary(state: Path, report: Report) -> Path:
    """``summary.json``: every step with its full observation and detail."""
    path = state / "summary.json"
    path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return path


def _traceback_file(state: Path) -> Path | None:
    """Where an unexpected error's traceback goes (the summary names the file)."""
    path = state / "logs" / "launcher-traceback.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except OSError:
        return None
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Out(sys.stdout)
    state: Path = args.state.resolve()
    try:
        lock = claim_state(state)
    except DemoConfigError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"demo: error: cannot use the state folder {state}: {err.strerror or err}",
              file=sys.stderr)
        return 2
    out.line(f"meshid demo: a CA service, two node agents and six services on 127.0.0.1, "
             f"state in {_rel(state)} "
             f"(launcher pid {os.getpid()})")
    supervisor = Supervisor(state)
    supervisor.install_handlers()
    stage = Stage(state, supervisor)
    report = Report()
    story = Story(stage, out, report)
    code: int | None = None
    try:
        try:
            set_up(stage, out, report)
        except Exception as err:
            out.result(report.add("0 set-up", "CA, SVIDs, six healthy services",
                                  f"{type(err).__name__}: {err}", False))
            raise _Abort from err
        story.login_and_order()
        story.attacks()
        story.auth_down()
        story.renewals_under_traffic()
        story.node_evicted()
        if args.keep_running:
            if report.all_ok:
                keep_running(stage, out)
            else:
                out.line("\n(--keep-running ignored: a step did not go as expected)")
    except _Abort:
        pass
    except KeyboardInterrupt:
        out.line("\ninterrupted")
        if not args.keep_running:
            report.add("run to the end", "the whole story", "interrupted (Ctrl-C)", False)
            code = 130
    except Exception as err:
        where = _traceback_file(state)
        report.add("run to the end", "the whole story", f"{type(err).__name__}: {err}", False,
                   detail=f"traceback in {_rel(where)}" if where else "")
    finally:
        # Callers must stop finding the mesh before it goes away.
        stage.endpoints_file.unlink(missing_ok=True)
        shut_down(stage, out, report)
        print_summary(out, report)
        write_summary(state, report)
        lock.release()
    if code is not None:
        return code
    return 0 if report.all_ok else 1


class _Abort(Exception):
    """Control flow: set-up failed, skip to the shutdown."""


if __name__ == "__main__":
    sys.exit(main())
