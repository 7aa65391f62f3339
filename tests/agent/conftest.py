"""Fixtures for the agent tests: the real CA service (``mesh-ca serve``'s CAService) on
loopback over a CA with an intermediate, and agents run in-process on their own event loop
thread (or as ``mesh agent`` subprocesses, in the tests that need a process to kill).

``ca_service`` is a started :class:`support.caservice.RunningCA`; ``start_ca(**options)``
starts another with CAService options (``agent_ttl``, ``max_valid``, ...).
``agent_runner(node="node-a", *, ca=None, token="new", **overrides)`` starts an agent of
``node`` against ``ca`` (default ``ca_service``) and returns its
:class:`support.caservice.AgentThread`; every agent started is stopped at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.caservice import AgentThread, RunningCA, agent_config, short_dir, wait_for

from ca.authority import CertificateAuthority


@pytest.fixture
def start_ca(ca_factory: Callable[..., CertificateAuthority]) -> Iterator[Callable[..., RunningCA]]:
    started: list[RunningCA] = []

    def start(**options: Any) -> RunningCA:
        running = RunningCA(ca_factory(intermediate=True), **options).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def ca_service(start_ca: Callable[..., RunningCA]) -> RunningCA:
    return start_ca()


@pytest.fixture
def agent_runner(request: pytest.FixtureRequest) -> Iterator[Callable[..., AgentThread]]:
    started: list[AgentThread] = []

    def start(node: str = "node-a", *, ca: RunningCA | None = None, token: str | None = "new",
              state: Path | None = None, sock: Path | None = None, **kw: Any) -> AgentThread:
        if ca is None:
            ca = request.getfixturevalue("ca_service")
        base = short_dir("agt-")
        if token == "new":
            token = ca.join_token(node)
        config = agent_config(ca, node, base, join_token=token, state=state or base / "state",
                              socket=sock or base / "agent.sock", **kw)
        t = AgentThread(config)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


__all__ = ["AgentThread", "RunningCA", "short_dir", "wait_for"]
