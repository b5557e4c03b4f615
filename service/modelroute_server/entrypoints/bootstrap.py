"""Embedded mode's tokens: one per role in the data directory, so the quick start needs no extra step."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..domain.access import Role, token_hash
from ..domain.audit import Caller
from ..service_layer import access_tokens
from ..service_layer.access_tokens import AccessTokenInput
from ..service_layer.context import ServiceContext

log = logging.getLogger(__name__)

BOOTSTRAP_CALLER = "cli:serve"


def token_file(data_dir: Path, role: Role) -> Path:
    return data_dir / f"{role.value}.token"


def embedded_token_id(role: Role) -> str:
    return f"embedded-{role.value}"


def write_private_file(path: Path, text: str) -> None:
    """Written whole under a temporary name, readable by the owner only, then moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    os.chmod(scratch, 0o600)
    os.replace(scratch, path)


def ensure_role_tokens(ctx: ServiceContext, data_dir: Path) -> list[Path]:
    """Makes sure `<data dir>/<role>.token` holds a live token of that role; returns the files written.

    First start: each token is created. A file that was lost (or no longer matches) gets a new secret for
    the same token. A token an admin revoked stays revoked: its file is not rewritten.
    """
    written = []
    for role in Role:
        path = token_file(data_dir, role)
        token_id = embedded_token_id(role)
        existing = access_tokens.get_access_token(ctx, token_id)
        if existing is None:
            caller = Caller(BOOTSTRAP_CALLER, "CreateAccessToken")
            created = access_tokens.create_access_token(ctx, caller, token_id, AccessTokenInput(roles=(role,)))
        elif existing.revoke_time is not None:
            log.warning("embedded token revoked; not reissued", extra={"access_token": existing.name})
            continue
        elif path.exists() and token_hash(path.read_text().strip()) == existing.token_hash:
            continue
        else:
            created = access_tokens.reissue_access_token(ctx, Caller(BOOTSTRAP_CALLER, "ReissueAccessToken"), token_id)
        write_private_file(path, created.secret)
        written.append(path)
    return written
