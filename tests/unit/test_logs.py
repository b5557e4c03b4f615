"""Logs (docs/operations.md, "Logs"): every stderr line is JSON, and a repeated warning is written once per
window with the count of those left out."""

from __future__ import annotations

import json
import logging

import pytest

from modelroute_server.entrypoints.logs import JsonFormatter, RepeatLimit, as_json_line


def record(message: str, *args: object, level: int = logging.WARNING, name: str = "modelroute.x") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


@pytest.mark.parametrize(
    ("line", "level", "logger", "message"),
    [
        (
            "I1202 08:51:12.441403    9355 fork_posix.cc:71] Other threads are currently calling into gRPC",
            "INFO",
            "grpc",
            "Other threads are currently calling into gRPC",
        ),
        ("E1202 08:51:12.441403 12 chttp2_server.cc:1000] bind failed\n", "ERROR", "grpc", "bind failed"),
        ("W0101 00:00:00.000000 1 a.cc:1] careful", "WARNING", "grpc", "careful"),
        ("Segmentation fault in something else", "WARNING", "stderr", "Segmentation fault in something else"),
        ('{"not": "closed"', "WARNING", "stderr", '{"not": "closed"'),
        ("[1, 2]", "WARNING", "stderr", "[1, 2]"),
    ],
)
def test_a_line_that_is_not_json_is_wrapped(line: str, level: str, logger: str, message: str) -> None:
    entry = json.loads(as_json_line(line))
    assert (entry["level"], entry["logger"], entry["message"]) == (level, logger, message)
    assert entry["time"].endswith("+00:00")


def test_a_json_line_passes_as_it_is() -> None:
    line = JsonFormatter().format(record("database unreachable: %s", "OperationalError"))
    assert as_json_line(line + "\n") == line


def test_a_repeated_warning_is_written_once_per_window_with_the_count_left_out() -> None:
    clock = [100.0]
    limit = RepeatLimit(window=10.0, clock=lambda: clock[0])
    written = []
    for second in range(25):  # one failed call per second for 25 s
        clock[0] = 100.0 + second
        entry = record("database unreachable: %s", "OperationalError")
        if limit.filter(entry):
            written.append((second, getattr(entry, "suppressed", 0)))
    assert written == [(0, 0), (10, 9), (20, 9)]


def test_different_warnings_and_info_lines_are_not_limited() -> None:
    limit = RepeatLimit(window=10.0, clock=lambda: 0.0)
    assert limit.filter(record("a: %s", 1))
    assert limit.filter(record("b: %s", 1))
    assert limit.filter(record("a: %s", 1, name="modelroute.other"))
    assert limit.filter(record("a: %s", 1, level=logging.ERROR))
    assert not limit.filter(record("a: %s", 2))  # same template, other argument: the same warning
    assert all(limit.filter(record("call", level=logging.INFO)) for _ in range(5))
