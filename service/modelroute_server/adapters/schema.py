"""Table definitions used by the repositories' queries.

The authoritative DDL (checks, partial indexes, foreign keys) lives in the
Alembic revisions under migrations/versions; these mirror the columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

SLUG_REGEX = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
metadata = sa.MetaData()

config_revision = sa.Table(
    "config_revision",
    metadata,
    sa.Column("singleton", sa.Boolean, primary_key=True),
    # The config revision callers see: the sequence of the latest configuration or user-key change.
    sa.Column("revision", sa.BigInteger, nullable=False),
    # The change sequence: moved by every change replicas must see (migration 0004).
    sa.Column("sequence", sa.BigInteger, nullable=False),
    # The change log holds every change after this sequence; a replica behind it reloads in full.
    sa.Column("pruned_through", sa.BigInteger, nullable=False),
)

change_log = sa.Table(
    "change_log",
    metadata,
    sa.Column("sequence", sa.BigInteger, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("entity_id", sa.Text, primary_key=True),
    # The user of a user-key change, else ''.
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("change_time", sa.DateTime(timezone=True), nullable=False),
)

provider_configs = sa.Table(
    "provider_configs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("family", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("base_url", sa.Text),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("central_api_key_enabled", sa.Boolean, nullable=False),
    sa.Column("allow_user_api_key", sa.Boolean, nullable=False),
    sa.Column("allow_central_api_key_fallback", sa.Boolean, nullable=False),
    sa.Column("api_key_ciphertext", sa.LargeBinary),
    sa.Column("api_key_key_id", sa.Text),
    # Drawn anew at every key write and bound into the ciphertext; NULL: sealed before 0003.
    sa.Column("key_incarnation", sa.LargeBinary),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    # The config's own cooldown rule (migration 0008); NULL takes the service's default.
    sa.Column("health_failure_threshold", sa.Integer),
    sa.Column("health_failure_window_seconds", sa.Float),
    sa.Column("health_base_cooldown_seconds", sa.Float),
    sa.Column("health_max_cooldown_seconds", sa.Float),
)

model_configs = sa.Table(
    "model_configs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("family", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("is_default", sa.Boolean, nullable=False),
    sa.Column("context_limit", sa.Integer, nullable=False),
    sa.Column("compression_threshold", sa.Integer, nullable=False),
    sa.Column("max_output_tokens", sa.Integer),
    sa.Column("temperature", sa.Float),
    sa.Column("top_p", sa.Float),
    sa.Column("top_k", sa.Integer),
    sa.Column("presence_penalty", sa.Float),
    sa.Column("frequency_penalty", sa.Float),
    sa.Column("input_price_per_mtok", sa.Float),
    sa.Column("output_price_per_mtok", sa.Float),
    sa.Column("cache_read_price_per_mtok", sa.Float),
    sa.Column("cache_write_price_per_mtok", sa.Float),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delete_time", sa.DateTime(timezone=True)),
    sa.Column("revision", sa.BigInteger, nullable=False),
)

model_attachments = sa.Table(
    "model_attachments",
    metadata,
    sa.Column("model_config_id", sa.Text, primary_key=True),
    sa.Column("provider_config_id", sa.Text, primary_key=True),
    # The provider config's family (its foreign key); `model_family` is the model's (migration 0006).
    sa.Column("family", sa.Text, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("model_family", sa.Text, nullable=False),
    # The upstream model name sent to this provider config instead of the model's own; NULL: none.
    sa.Column("model_override", sa.Text),
)

user_provider_keys = sa.Table(
    "user_provider_keys",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("provider_config_id", sa.Text, primary_key=True),
    sa.Column("api_key_ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("api_key_key_id", sa.Text, nullable=False),
    sa.Column("key_incarnation", sa.LargeBinary),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    # The config revision of the key's last change; NULL: set before migration 0008.
    sa.Column("revision", sa.BigInteger),
)

# What attempt reports did to one (provider config, upstream model) (migration 0008).
provider_health = sa.Table(
    "provider_health",
    metadata,
    sa.Column("provider_config_id", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True)),
    sa.Column("window_failures", sa.Integer, nullable=False),
    sa.Column("trips", sa.Integer, nullable=False),
    sa.Column("last_cooldown_seconds", sa.Float, nullable=False),
    sa.Column("cooldown_until", sa.DateTime(timezone=True)),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
)

# Keys a provider refused, by a keyed fingerprint (never the key); user '' for the central key.
key_rejections = sa.Table(
    "key_rejections",
    metadata,
    sa.Column("provider_config_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("key_source", sa.Text, nullable=False),
    sa.Column("key_fingerprint", sa.LargeBinary, nullable=False),
    sa.Column("rejected_time", sa.DateTime(timezone=True), nullable=False),
)

access_tokens = sa.Table(
    "access_tokens",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("token_sha256", sa.LargeBinary, nullable=False),
    sa.Column("roles", postgresql.ARRAY(sa.Text), nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expire_time", sa.DateTime(timezone=True)),
    sa.Column("revoke_time", sa.DateTime(timezone=True)),
    sa.Column("creator", sa.Text, nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("revision", sa.BigInteger),
    sa.Column("user_id", sa.Text),
    sa.Column("changes", postgresql.JSONB, nullable=False),
)
