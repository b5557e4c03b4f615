"""The contract suite sees the service only as a client does: its modules import the client package (with
grpc, protobuf and pytest), never the server's."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CONTRACT = Path(__file__).resolve().parent.parent / "contract"
ALLOWED = {"modelroute", "grpc", "google", "pytest"} | set(sys.stdlib_module_names)


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.module in ("support",) or node.module is None, f"{path.name}: from .{node.module}"
            else:
                roots.add((node.module or "").split(".")[0])
    return roots


@pytest.mark.parametrize(
    "path", sorted(p for p in CONTRACT.glob("*.py") if p.name != "conftest.py"), ids=lambda p: p.name
)
def test_a_contract_module_imports_only_the_client_package(path: Path) -> None:
    assert imported_roots(path) <= ALLOWED, path.name


def test_the_suite_has_its_modules() -> None:
    names = {p.name for p in CONTRACT.glob("test_*.py")}
    assert {"test_error_reasons.py", "test_resources.py", "test_resolution.py", "test_schema.py"} <= names
