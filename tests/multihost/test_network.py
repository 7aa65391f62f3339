"""The hosts helper itself (support/netns.py): hosts reach each other by address and have no
route elsewhere; every namespace is removed on the way out, on failure too."""

from __future__ import annotations

import sys
import textwrap

import pytest
from support.netns import PREFIX, NetnsError, Network, leftovers, namespaces

_SERVE = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.bind((sys.argv[1], 9000))
    s.listen(1)
    print("listening", flush=True)
    conn, peer = s.accept()
    conn.sendall(peer[0].encode())
    conn.close()
""")
_CONNECT = textwrap.dedent("""
    import socket, sys
    with socket.create_connection((sys.argv[1], 9000), timeout=10) as c:
        print(c.recv(100).decode())
""")


def test_hosts_reach_each_other_by_address_and_only_each_other() -> None:
    with Network(["a", "b"]) as net:
        a, b = net["a"], net["b"]
        assert (a.ip, b.ip) == ("10.77.0.1", "10.77.0.2")
        server = b.popen([sys.executable, "-c", _SERVE, b.ip], stdout=-1, text=True)
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        got = a.run([sys.executable, "-c", _CONNECT, b.ip], capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == a.ip  # the server saw the caller's own address
        assert server.wait(10) == 0
        # a host's only route is the network's own: its traffic cannot leave the bridge
        routes = a.run(["ip", "route"], capture_output=True, text=True).stdout.splitlines()
        assert [r.split()[0] for r in routes] == ["10.77.0.0/24"]
        prefix = net.prefix
        assert len(leftovers(prefix)) == 3  # a, b and the switch
        # the interfaces live in the network's namespaces only
        assert "br0" not in a.run(["ip", "link"], capture_output=True, text=True).stdout
    assert leftovers(prefix) == []


def test_everything_is_removed_when_the_test_fails_inside() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), Network(["a"]) as net:
        prefix = net.prefix
        net["a"].popen(["sleep", "300"])  # still running when the network closes
        raise RuntimeError("the test failed")
    assert leftovers(prefix) == []


def test_a_setup_failing_half_way_removes_what_it_made() -> None:
    prefix = f"{PREFIX}halfway-"
    with pytest.raises(NetnsError, match="failed"):
        Network(["a", "b/c"], prefix=prefix)  # "b/c" is not a valid namespace name
    assert leftovers(prefix) == []


def test_two_networks_at_once_do_not_collide() -> None:
    with Network(["a"]) as one, Network(["a"]) as two:
        assert one.prefix != two.prefix
        assert {one["a"].netns, two["a"].netns} <= set(namespaces())


def test_a_network_whose_creator_was_killed_is_swept_by_the_next() -> None:
    orphan = f"{PREFIX}{2**22 + 12345}-dead00-"  # above pid_max: no such process
    Network(["a"], prefix=orphan)  # never closed, as if its worker was killed
    assert len(leftovers(orphan)) == 2
    with Network(["a"]) as net:
        assert leftovers(orphan) == []  # swept
        assert len(leftovers(net.prefix)) == 2  # a live creator's network is left alone
