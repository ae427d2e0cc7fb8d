"""Issue 26 at the edge, measured: what an attacker on loopback costs the server.

Three probes, each printing one figure (run it on two builds to compare them):

1. ``dashboard``: ``--subscribers`` open ``GET /dashboard/events`` streams for
   ``--seconds``; prints the server process's CPU use over that time (user + system,
   from ``/proc``), as a percentage of one core.
2. ``slowloris``: 300 sockets that send a partial request head and then one more
   header line a second; prints how many the server has closed after ``--seconds``.
3. ``buckets``: the in-process rate-limit store holding 10,000 buckets, none of them
   full, then ``--identities`` new identities; prints the mean and largest cost of
   admitting a new one (in process, on this build's ``LocalBuckets``).

    python bench/edge.py                       # all three, 40 subscribers, 15 s each
    python bench/edge.py --probe slowloris --seconds 20
    python bench/edge.py --probe dashboard --server-option=--dashboard-max-subscribers=40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from launch import start_streamapi, stop

from streamapi.state.local import LocalBuckets


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _subscriber(host: str, port: int, stop_at: float) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /dashboard/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    served = b" 200 " in status
    while served and time.monotonic() < stop_at:
        try:
            if not await asyncio.wait_for(reader.read(65536), 1.0):
                break
        except TimeoutError:
            continue
    writer.close()
    return served


def dashboard(options: list[str], subscribers: int, seconds: float) -> None:
    process, base = start_streamapi(options)
    try:
        address = urlsplit(base)
        host, port = address.hostname or "127.0.0.1", address.port or 80
        before = _cpu_s(process.pid)

        async def run() -> list[bool]:
            stop_at = time.monotonic() + seconds
            return await asyncio.gather(
                *(_subscriber(host, port, stop_at) for _ in range(subscribers))
            )

        started = time.monotonic()
        served = asyncio.run(run())
        elapsed = time.monotonic() - started
        used = _cpu_s(process.pid) - before
    finally:
        stop(process)
    print(
        f"dashboard: {sum(served)} of {subscribers} subscribers served; server CPU "
        f"{100 * used / elapsed:.1f} % of a core over {elapsed:.1f} s"
    )


def slowloris(options: list[str], seconds: float, count: int = 300) -> None:
    process, base = start_streamapi(options)
    address = urlsplit(base)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((address.hostname, address.port), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.setblocking(False)
            sockets.append(sock)
        closed: set[int] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            for index, sock in enumerate(sockets):
                if index in closed:
                    continue
                try:
                    if sock.recv(4096) == b"":
                        closed.add(index)
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(index)
                    continue
                try:
                    sock.send(b"X-Trickle: 1\r\n")
                except OSError:
                    closed.add(index)
        # A socket answered (408) is closed right after: read its end.
        for index, sock in enumerate(sockets):
            try:
                while sock.recv(4096):
                    pass
                closed.add(index)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(index)
    finally:
        for sock in sockets:
            sock.close()
        stop(process)
    print(
        f"slowloris: {len(closed)} of {count} trickling sockets closed by the server "
        f"within {seconds:g} s"
    )


def buckets(identities: int) -> None:
    store = LocalBuckets(clock=lambda: 1000.0)

    def admit(identity: str) -> None:
        # The store's take never suspends: run the coroutine to its end here, so that
        # the figure is the store's alone, not an event loop's.
        step = store.take(identity, "m", requests_per_minute=1, tokens_per_minute=0, tokens=0)
        try:
            step.send(None)
        except StopIteration:
            return
        raise RuntimeError("LocalBuckets.take suspended")

    for number in range(10_000):
        admit(f"seed-{number}")
    costs = []
    for number in range(identities):
        started = time.perf_counter()
        admit(f"new-{number}")
        costs.append(time.perf_counter() - started)
    print(
        f"buckets: a new identity past 10,000 buckets costs {1e6 * sum(costs) / len(costs):.1f} "
        f"µs on average, {1e6 * max(costs):.1f} µs at most ({identities} identities)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--probe", choices=["dashboard", "slowloris", "buckets", "all"], default="all"
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--subscribers", type=int, default=40)
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        help="an option for streamapi serve (repeatable)",
    )
    args = parser.parse_args()
    options = ["--latency-profile", "instant", *args.server_option]
    if args.probe in ("dashboard", "all"):
        dashboard(options, args.subscribers, args.seconds)
    if args.probe in ("slowloris", "all"):
        slowloris(options, args.seconds)
    if args.probe in ("buckets", "all"):
        buckets(args.identities)


if __name__ == "__main__":
    main()
