"""The README's client example runs as written against a real server."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from ..conftest import RunningServer, all_roles_token, repo_root


def test_the_readme_client_example_works(
    app: object, running_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(all_roles_token(running_server.app) + "\n")
    monkeypatch.setenv("MODELROUTE_TOKEN_FILE", str(token_file))
    readme = (repo_root() / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) == 1, "the README has one Python example"
    example = blocks[0].replace("127.0.0.1:50051", f"127.0.0.1:{running_server.port}")
    assert "sk-..." in example
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(example, "README.md", "exec"), {})
    printed = output.getvalue()
    assert printed.startswith("providerConfigs/openai-main True\n")
    assert 'name: "providerConfigs/openai-main"' in printed
    assert "sk-..." not in printed
