"""Unix socket paths past sun_path's 107 bytes: reached through the folder's descriptor."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.identity.unixsock import SUN_PATH_MAX, SocketPath, SocketPathError


@pytest.fixture
def base() -> Iterator[Path]:
    """A short folder to build exact lengths from (pytest's tmp_path is already long)."""
    folder = Path(tempfile.mkdtemp(prefix="us-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _deep(base: Path, length: int) -> Path:
    """A socket path of exactly ``length`` bytes under ``base``, its file name 10..40 bytes."""
    folder = base
    while len(str(folder)) + 41 < length:
        folder = folder / ("d" * min(30, length - len(str(folder)) - 41))
    folder.mkdir(parents=True, exist_ok=True)
    name = "s" * (length - len(str(folder)) - 1)
    path = folder / name
    assert len(str(path)) == length and 1 <= len(name) <= 41
    return path


def _echo_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(16))


@pytest.mark.parametrize("length", [60, SUN_PATH_MAX, SUN_PATH_MAX + 1, 200])
def test_bind_and_connect_at_any_length(base: Path, length: int) -> None:
    path = _deep(base, length)
    with SocketPath(path) as server_side, socket.socket(socket.AF_UNIX) as server:
        # A path that fits is used as it is; a longer one only through the alias.
        assert (server_side.address == str(path)) == (length <= SUN_PATH_MAX)
        server.bind(server_side.address)
        server.listen(1)
        assert path.is_socket()  # the socket file is where it was asked for
        echo = threading.Thread(target=_echo_once, args=(server,))
        echo.start()
        with SocketPath(path) as client_side, socket.socket(socket.AF_UNIX) as client:
            client.connect(client_side.address)
            client.sendall(b"ping")
            assert client.recv(16) == b"ping"
        echo.join(5)


def test_without_the_alias_the_kernel_refuses_the_long_path(base: Path) -> None:
    """The negative control: the problem this module solves is real."""
    path = _deep(base, SUN_PATH_MAX + 1)
    with socket.socket(socket.AF_UNIX) as server, pytest.raises(OSError, match="too long"):
        server.bind(str(path))


def test_missing_folder_is_one_sentence(base: Path) -> None:
    path = _deep(base, 150)
    missing = path.parent / "gone" / path.name
    with pytest.raises(SocketPathError, match=r"longer than the 107 bytes .* cannot be opened"):
        SocketPath(missing)


def test_a_file_name_too_long_even_for_the_alias_is_refused(base: Path) -> None:
    with pytest.raises(SocketPathError, match="choose a shorter path"):
        SocketPath(base / ("n" * 120))


def test_close_releases_the_descriptor(base: Path) -> None:
    path = _deep(base, 150)
    held = SocketPath(path)
    fd = int(held.address.split("/")[4])
    assert Path(f"/proc/self/fd/{fd}").exists()
    held.close()
    held.close()  # twice is harmless
    assert not Path(f"/proc/self/fd/{fd}").exists() or Path(
        f"/proc/self/fd/{fd}").resolve() != path.parent
