"""What a downgrade below the upstream model name overrides does when told it may lose data.

Shared by the revisions that guard overrides (0006, 0007), so both remove them the same way.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# A cross-family attachment exists only by its override: it goes with it. The rest are renumbered in
# order, a live model left with no attachment is soft-deleted (as a forced provider delete does), and a
# default lost that way is handed to the next enabled live model, by (create time, id).
REMOVE_OVERRIDES = (
    "DELETE FROM model_attachments WHERE family <> model_family",
    "UPDATE model_attachments SET model_override = NULL WHERE model_override IS NOT NULL",
    """
    UPDATE model_attachments a SET position = renumbered.position
    FROM (SELECT model_config_id, provider_config_id,
                 row_number() OVER (PARTITION BY model_config_id ORDER BY position) - 1 AS position
          FROM model_attachments) renumbered
    WHERE a.model_config_id = renumbered.model_config_id
      AND a.provider_config_id = renumbered.provider_config_id
      AND a.position <> renumbered.position
    """,
    """
    UPDATE model_configs m SET delete_time = now(), update_time = now(), is_default = false
    WHERE m.delete_time IS NULL AND NOT EXISTS (SELECT 1 FROM model_attachments a WHERE a.model_config_id = m.id)
    """,
    """
    UPDATE model_configs SET is_default = true, update_time = now()
    WHERE id = (SELECT id FROM model_configs WHERE delete_time IS NULL AND enabled ORDER BY create_time, id LIMIT 1)
      AND NOT EXISTS (SELECT 1 FROM model_configs WHERE is_default AND delete_time IS NULL)
    """,
)


def remove_overrides_or_refuse(below: str) -> None:
    """Refuse (RuntimeError) while any override exists, unless the downgrade may lose data; then remove them."""
    bind = op.get_bind()
    found = sa.text("SELECT EXISTS (SELECT 1 FROM model_attachments WHERE model_override IS NOT NULL)")
    if not bind.execute(found).scalar():
        return
    config = op.get_context().config
    if not (config is not None and config.attributes.get("allow_data_loss")):
        raise RuntimeError(
            f"downgrading below {below} would drop every upstream model name override, and every attachment "
            "of another family than its model; run `modelroute-server migrate --downgrade --allow-data-loss` "
            "to do it anyway"
        )
    for statement in REMOVE_OVERRIDES:
        bind.execute(sa.text(statement))
