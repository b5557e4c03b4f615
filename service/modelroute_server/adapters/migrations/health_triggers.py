"""The row triggers that log health changes (revision 0008 explains them); 0009 changes the kinds they log."""

from __future__ import annotations

from alembic import op

# TG_ARGV: the kind of a config's health change (cooldowns, the central key's mark), and of a user's mark.
LOG_HEALTH = """
CREATE FUNCTION modelroute_log_health() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    present record;
    changed boolean := true;
    mark_user text := '';
    logged_kind text := TG_ARGV[0];
BEGIN
    IF TG_OP = 'DELETE' THEN present := OLD; ELSE present := NEW; END IF;
    IF TG_TABLE_NAME = 'provider_health' THEN
        -- Failure counts are the reporting replica's business; only a cooldown that moves is news.
        changed := CASE TG_OP
            WHEN 'INSERT' THEN NEW.cooldown_until IS NOT NULL
            WHEN 'DELETE' THEN OLD.cooldown_until IS NOT NULL
            ELSE NEW.cooldown_until IS DISTINCT FROM OLD.cooldown_until END;
    ELSE
        mark_user := present.user_id;
        IF mark_user <> '' THEN logged_kind := TG_ARGV[1]; END IF;
        IF TG_OP = 'UPDATE' THEN
            changed := NEW.key_fingerprint IS DISTINCT FROM OLD.key_fingerprint;
        END IF;
    END IF;
    IF changed THEN
        INSERT INTO change_log (sequence, kind, entity_id, user_id)
        VALUES (modelroute_take_sequence(false), logged_kind, present.provider_config_id, mark_user)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$
"""
HEALTH_TABLES = ("provider_health", "key_rejections")


def create_health_triggers(health_kind: str, user_mark_kind: str) -> None:
    for table in HEALTH_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_log AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW "
            f"EXECUTE FUNCTION modelroute_log_health('{health_kind}', '{user_mark_kind}')"
        )


def drop_health_triggers() -> None:
    for table in HEALTH_TABLES:
        op.execute(f"DROP TRIGGER {table}_log ON {table}")
