"""Changes announced by any replica through PostgreSQL LISTEN/NOTIFY, and their payload format."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from ..domain.changes import AccessTokenChange, Change, UserKeyChange
from .database import libpq_url

log = logging.getLogger(__name__)

CHANGE_CHANNEL = "modelroute_config_changed"


def change_payload(revision: int | None, change: Change | None) -> str:
    """`REVISION`, `REVISION user-key PROVIDER USER` or `token TOKEN_ID`.

    User ids hold no white space and provider and token ids are slugs, so spaces separate the parts.
    """
    if isinstance(change, AccessTokenChange):
        return f"token {change.access_token_id}"
    if isinstance(change, UserKeyChange):
        return f"{revision} user-key {change.provider_config_id} {change.user}"
    return str(revision)


def parse_change_payload(payload: str) -> tuple[int | None, Change | None]:
    """(revision, change); (None, None) for anything unexpected (the reader then reloads in full)."""
    parts = payload.split(" ")
    if len(parts) == 2 and parts[0] == "token":
        return None, AccessTokenChange(parts[1])
    try:
        revision = int(parts[0])
    except ValueError:
        return None, None
    if len(parts) == 4 and parts[1] == "user-key":
        return revision, UserKeyChange(user=parts[3], provider_config_id=parts[2])
    return revision, None


ConfigCallback = Callable[[int | None, UserKeyChange | None], None]
TokenCallback = Callable[[AccessTokenChange | None], None]


class ChangeListener:
    """A daemon thread that reports every NOTIFY: configuration changes to `on_config` (revision, change),
    access token changes to `on_token`; after every (re)connect both are called with None.

    It LISTENs before anyone reloads, and after a reconnect it reports a change
    unconditionally: notifications sent while it was away are lost.
    """

    def __init__(
        self,
        conninfo: str,
        on_config: ConfigCallback,
        on_token: TokenCallback | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self._conninfo = libpq_url(conninfo)
        self._on_config = on_config
        self._on_token = on_token
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelroute-change-listener", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _dispatch(self, revision: int | None, change: Change | None) -> None:
        if isinstance(change, AccessTokenChange):
            if self._on_token is not None:
                self._on_token(change)
            return
        self._on_config(revision, change)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {CHANGE_CHANNEL}")
                    self.connected.set()
                    self._on_config(None, None)
                    if self._on_token is not None:
                        self._on_token(None)
                    while not self._stop.is_set():
                        # Drain promptly; the timeout lets the loop notice a stop request.
                        for notify in connection.notifies(timeout=0.5):
                            self._dispatch(*parse_change_payload(notify.payload))
            except psycopg.Error as exc:
                if self.connected.is_set():
                    log.warning("change listener lost the database: %s", type(exc).__name__)
                # No change is reported here: resolution keeps its last snapshot
                # until the database is back (the reconnect reports one).
                self.connected.clear()
                self._stop.wait(self._retry_seconds)
