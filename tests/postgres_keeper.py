"""Keeps one embedded PostgreSQL for a fault test, in a process of its own: `python postgres_keeper.py PGDATA`,
then one command per line on stdin (`start`, `stop`, `kill`, `exit`), each answered with one line on stdout
(`ok [URL]` or `error MESSAGE`).

Why a process of its own: running as root, pgserver starts PostgreSQL as another user, so Python forks
instead of using vfork, and the child runs every pthread_atfork handler before it executes pg_ctl. In a
test process that also runs a gRPC server, gRPC's handlers sometimes crash that child (a segmentation
fault), and PostgreSQL does not come back. This process never loads gRPC.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from modelroute_server.adapters.database import EmbeddedPostgres


def postgres_processes(pgdata: Path) -> list[int]:
    """The postmaster (from its pid file) and every process it started."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


def kill(server: EmbeddedPostgres) -> None:
    """SIGKILL to every PostgreSQL process, as the kernel's OOM killer or a lost machine would."""
    pgdata = server.pgdata.resolve()
    processes = postgres_processes(pgdata)
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in processes):
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL processes outlived SIGKILL")
        time.sleep(0.05)
    # pgserver keeps one handle per data directory: forget the dead one, so that starting again runs a new
    # postmaster (which recovers from the crash).
    handle = server._server
    type(handle)._instances.pop(pgdata, None)
    server._server = None


def main() -> None:
    server = EmbeddedPostgres(Path(sys.argv[1]))
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "start":
                answer = "ok " + server.start()
            elif command == "stop":
                server.stop()
                answer = "ok"
            elif command == "kill":
                kill(server)
                answer = "ok"
            elif command == "exit":
                server.stop()
                print("ok", flush=True)
                return
            else:
                answer = f"error unknown command {command!r}"
        except Exception as error:  # reported to the test, which fails with it
            answer = f"error {type(error).__name__}: {error}".replace("\n", " ")
        print(answer, flush=True)
    server.stop()  # the test process went away


if __name__ == "__main__":
    main()
