"""gunicorn's workers take new connections in turn (webapi/connection_share.py), on the real
``chargewatch serve ingest`` with two workers; which worker holds a connection is read from /proc."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import IngestServer, free_port

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets' owners from Linux's /proc")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IngestServer]:
    server = IngestServer(tmp_path, free_port()).start()
    yield server
    server.stop()


def workers(server: IngestServer) -> list[int]:
    assert server.process is not None
    master = server.process.pid
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def serving_workers(server: IngestServer, exclude: int = 0) -> list[int]:
    """The two workers' pids, once both answer requests (a new worker boots for a while)."""
    deadline = time.monotonic() + 30
    while True:
        pids = [pid for pid in workers(server) if pid != exclude]
        if len(pids) == 2:
            clients = open_and_ask(server, 8)
            held = holders(server, clients, pids)
            close(clients)
            if all(held[pid] for pid in pids):
                return pids
        assert time.monotonic() < deadline, f"two workers did not come up: {workers(server)}"
        time.sleep(0.2)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def holders(server: IngestServer, clients: list[socket.socket], pids: list[int]) -> Counter[int | None]:
    """How many of ``clients`` each worker holds (None: no worker has accepted it)."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    client_ports = {sock.getsockname()[1] for sock in clients}
    held: Counter[int | None] = Counter({pid: 0 for pid in pids})
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = (int(address.split(":")[1], 16) for address in fields[1:3])
        if local_port == server.port and remote_port in client_ports:
            held[owner.get(int(fields[9]))] += 1
    return held


def open_and_ask(server: IngestServer, count: int) -> list[socket.socket]:
    """``count`` connections opened at once, each answered once and kept open."""
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(count)]
    for sock in clients:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    for sock in clients:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    return clients


def close(clients: list[socket.socket]) -> None:
    for sock in clients:
        sock.close()
    time.sleep(0.3)  # the workers have seen them close


def assert_shared_in_turn(server: IngestServer, pids: list[int]) -> None:
    for _ in range(3):  # before the share, 7 of 8 often landed on one worker, and 50 of 50 stalled ones did
        clients = open_and_ask(server, 8)
        held = holders(server, clients, pids)
        close(clients)
        assert sorted(held.values()) in ([4, 4], [3, 5]), held


def test_connections_opened_at_once_are_shared_between_the_workers(server: IngestServer) -> None:
    assert_shared_in_turn(server, serving_workers(server))


def test_a_stopped_worker_leaves_new_connections_to_the_other_after_a_short_wait(server: IngestServer) -> None:
    stopped, running = serving_workers(server)
    os.kill(stopped, signal.SIGSTOP)
    try:
        clients = open_and_ask(server, 8)  # each is answered although the stopped worker holds none
        assert holders(server, clients, [stopped, running]) == Counter({running: 8, stopped: 0})
    finally:
        os.kill(stopped, signal.SIGCONT)
    close(clients)


def test_a_worker_that_died_no_longer_counts_and_its_replacement_takes_its_share(server: IngestServer) -> None:
    dead, _ = serving_workers(server)
    os.kill(dead, signal.SIGKILL)  # gunicorn starts another; the arbiter releases the dead one's slot
    assert_shared_in_turn(server, serving_workers(server, exclude=dead))
