"""Who is calling: the accept loop that reads ``SO_PEERCRED`` and splices each connection to
the gRPC server bound to that caller's uid.

gRPC Python gives a handler no peer credentials on a Unix socket (``context.peer()`` is just
``unix:``), so the Workload API socket is not a gRPC server. This loop accepts on it, reads the
kernel's ``(pid, uid, gid)`` of the connecting process, and copies bytes both ways between that
connection and an internal Unix socket served by a gRPC server that answers as that uid
(``route(uid)``; an unknown uid goes to one that answers ``PERMISSION_DENIED``). The internal
sockets live in a private 0700 folder only the agent's user can enter, so no caller can skip
the check by connecting to them directly.

The kernel fills ``SO_PEERCRED`` at ``connect(2)``: a caller cannot change it afterwards, and
handing the connected socket to another process does not change it either (which is what
SPIRE's Unix attestor relies on as well).

Bounds: at most ``max_connections`` spliced at once (more are closed at accept, logged once per
burst); each copy reads at most 64 KiB before waiting for the other side to drain, so a slow
reader holds at most that much memory; a half-close (EOF one way) is passed on with
``shutdown(SHUT_WR)`` and the other direction keeps flowing until it ends too; both sockets are
closed when both directions have ended or either failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.identity.unixsock import SocketPath

_log = logging.getLogger(__name__)
_CRED = struct.Struct("3i")
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return PeerCred(pid, uid, gid)


Route = Callable[[PeerCred], Awaitable[str]]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(_CHUNK)
        if not data:
            if writer.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write_eof()
            return
        writer.write(data)
        await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError, asyncio.CancelledError):
        await writer.wait_closed()


def prepare_socket_path(path: Path) -> None:
    """Make room for the public socket: a stale socket file is removed, anything else kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


class PeerCredSplicer:
    """Accepts on ``path`` and splices each connection to ``route(cred)``'s socket."""

    def __init__(self, path: Path, route: Route, *, max_connections: int = 512) -> None:
        self.path = path
        self._route = route
        self._max = max_connections
        self._server: asyncio.AbstractServer | None = None
        self._address: SocketPath | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusing = False
        self.accepted = 0

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        prepare_socket_path(self.path)
        # A path too long for sun_path is bound through its folder's descriptor, kept open
        # until close().
        self._address = SocketPath(self.path)
        self._server = await asyncio.start_unix_server(
            self._on_connection, path=self._address.address, backlog=256
        )
        # Anyone local may connect: who they are is read from the kernel, not trusted from them.
        os.chmod(self.path, 0o666)  # noqa: S103

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._address is not None:
            self._address.close()
            self._address = None

    def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._tasks) >= self._max:
            if not self._refusing:
                self._refusing = True
                _log.warning(
                    "Workload API: %d connections open, the limit; refusing new ones until "
                    "some close", self._max,
                )
            writer.transport.abort()
            return
        if self._refusing:
            self._refusing = False
            _log.info("Workload API: accepting connections again")
        self.accepted += 1
        task = asyncio.get_running_loop().create_task(self._splice(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _splice(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        inner_writer: asyncio.StreamWriter | None = None
        try:
            sock = writer.get_extra_info("socket")
            cred = peer_cred(sock)
            target = await self._route(cred)
            inner_reader, inner_writer = await asyncio.open_unix_connection(target)
            up = asyncio.ensure_future(_pump(reader, inner_writer))
            down = asyncio.ensure_future(_pump(inner_reader, writer))
            try:
                done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
                if pending and any(t.exception() is not None for t in done):
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
            finally:
                for t in (up, down):
                    if not t.done():
                        t.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
        except (OSError, ConnectionError) as err:
            _log.debug("Workload API connection ended: %s", err)
        finally:
            await _close(writer)
            if inner_writer is not None:
                await _close(inner_writer)
