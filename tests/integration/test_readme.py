"""The README's client example runs as written against a real server."""

from __future__ import annotations

import contextlib
import io
import re

from ..conftest import RunningServer, repo_root


def test_the_readme_client_example_works(app: object, running_server: RunningServer) -> None:
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
