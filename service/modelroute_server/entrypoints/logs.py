"""Structured (JSON lines) logging on stderr: every line the process writes there, the gRPC runtime's
own included, is one JSON object (docs/operations.md, "Logs")."""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({})))
# The gRPC core's lines (absl format): `I1202 08:51:12.441403    9355 fork_posix.cc:71] message`.
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]]+)\] ?(.*)$")
_NATIVE_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
# A warning or error repeated within this many seconds (same logger, same message template) is counted
# instead of written; the next one written after the window says how many were left out.
REPEAT_WINDOW_SECONDS = 10.0


def _now(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _now(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and k != "message"})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RepeatLimit(logging.Filter):
    """Lets the first of a run of identical warnings through, counts the rest for `window` seconds, and
    adds `suppressed` (the count) to the next one it lets through. Identical: same logger, level and
    message template, so "database unreachable: %s" during an outage is one line per window, not one per
    failed call."""

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (last written, suppressed since)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            written, suppressed = self._runs.get(key, (None, 0))
            if written is not None and now - written < self._window:
                self._runs[key] = (written, suppressed + 1)
                return False
            if len(self._runs) > 1000:  # bounded: templates are few; forget them all if not
                self._runs.clear()
            self._runs[key] = (now, 0)
        if suppressed:
            record.suppressed = suppressed
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty at INFO (every migration context, every pg_ctl command): keep their warnings only.
    for noisy in ("alembic", "pgserver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def as_json_line(line: str) -> str:
    """`line` as it should reach stderr: a JSON object as it is, anything else wrapped in one."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            if isinstance(json.loads(stripped), dict):
                return stripped
        except ValueError:
            pass
    native = _NATIVE_LINE.match(stripped)
    if native:
        level, where, message = native.groups()
        entry = {"level": _NATIVE_LEVELS[level], "logger": "grpc", "message": message, "source": where}
    else:
        entry = {"level": "WARNING", "logger": "stderr", "message": stripped}
    return json.dumps({"time": _now(time.time()), **entry})


def route_native_stderr() -> None:
    """Makes file descriptor 2 a pipe whose lines reach the real stderr as JSON: the gRPC core (and any
    other C library, or a stray print) writes there directly, past Python's logging."""
    real = os.dup(2)
    restore = os.dup(2)  # fd 2 goes back to the real stderr at exit
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "r", errors="replace") as lines, os.fdopen(real, "w", buffering=1) as out:
            for line in lines:
                if line.strip():
                    out.write(as_json_line(line) + "\n")

    thread = threading.Thread(target=forward, name="modelroute-stderr", daemon=True)
    thread.start()

    def drain() -> None:
        # Closing the pipe's last write end (fd 2, by pointing it back at the real stderr) ends the thread
        # once it has forwarded everything written so far.
        sys.stderr.flush()
        os.dup2(restore, 2)
        thread.join(timeout=2)

    atexit.register(drain)
