"""Fixtures for the agent tests: a CA (ours, from ca/) behind a CA service, and agents run
in-process on their own event loop thread or as `mesh agent` subprocesses.

``fake_ca`` is :class:`tests.agent.fakeca.FakeCA` on 127.0.0.1 (ports chosen by the OS).
``agent_runner(**overrides)`` starts an in-process :class:`mesh.agent.agent.Agent` and returns an
:class:`AgentThread` (``.agent``, ``.call(coro)`` to run code on its loop, ``.stop()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from mesh.agent.agent import Agent, AgentConfig, AgentExit

from .fakeca import FakeCA


@pytest.fixture
def fake_ca(mesh_ca) -> Iterator[FakeCA]:  # type: ignore[no-untyped-def]
    fake = FakeCA(mesh_ca).start()
    yield fake
    fake.stop()


def short_dir(prefix: str) -> Path:
    """A folder with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class AgentThread:
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


@pytest.fixture
def agent_runner(fake_ca: FakeCA) -> Iterator[Callable[..., AgentThread]]:
    started: list[AgentThread] = []

    def start(node: str = "node-a", *, token: str | None = "new", state: Path | None = None,
              sock: Path | None = None, **kw: Any) -> AgentThread:
        base = short_dir("agt-")
        if token == "new":
            token = fake_ca.join_token(node)
        config = AgentConfig(**{
            "ca": f"127.0.0.1:{fake_ca.agent_port}",
            "ca_attest": f"127.0.0.1:{fake_ca.attest_port}",
            "ca_fingerprint": fake_ca.fingerprint,
            "node": node,
            "join_token": token,
            "state": state or base / "state",
            "socket": sock or base / "agent.sock",
            "retry_base": 0.05, "retry_cap": 0.5, "sync_interval": 0.3, "ca_timeout": 3.0,
            **kw,
        })
        t = AgentThread(config)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy (for state held in another process or thread)."""
    import time

    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


__all__ = ["AgentThread", "os", "short_dir", "wait_for"]
