"""Changes announced through PostgreSQL LISTEN/NOTIFY: the database's triggers send each change sequence."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from .database import libpq_url

log = logging.getLogger(__name__)

CHANGE_CHANNEL = "modelroute_config_changed"


def parse_change_payload(payload: str) -> int | None:
    """The change sequence a notification announces (the database's triggers send it); None if unreadable."""
    try:
        return int(payload)
    except ValueError:
        return None


ChangeCallback = Callable[[int | None], None]


class ChangeListener:
    """A daemon thread that reports every announced change sequence to `on_change`, and None after every
    (re)connect (notifications sent while it was away are lost, so the reader then catches up from the
    change log) and when it loses the database. Its connection is its own
    (`MODELROUTE_LISTEN_DATABASE_URL`): LISTEN cannot go through a transaction-pooling PgBouncer.
    """

    def __init__(self, conninfo: str, on_change: ChangeCallback, retry_seconds: float = 1.0) -> None:
        self._conninfo = libpq_url(conninfo)
        self._on_change = on_change
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelroute-change-listener", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {CHANGE_CHANNEL}")
                    self.connected.set()
                    self._on_change(None)
                    while not self._stop.is_set():
                        # Drain promptly; the timeout lets the loop notice a stop request.
                        for notify in connection.notifies(timeout=0.5):
                            self._on_change(parse_change_payload(notify.payload))
            except psycopg.Error as exc:
                lost = self.connected.is_set()
                self.connected.clear()
                if lost:
                    log.warning("change listener lost the database: %s", type(exc).__name__)
                    # Reported (None) so that the snapshot's applier tries the database now and learns that it
                    # is away: the snapshot stays as it is, and the replica knows since when it has been cut
                    # off (MODELROUTE_MAX_SNAPSHOT_AGE), instead of finding out at its next poll.
                    self._on_change(None)
                self._stop.wait(self._retry_seconds)
