"""Alembic environment: runs on a connection handed in by modelroute, or on
MODELROUTE_DATABASE_URL when alembic is invoked by hand."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

config = context.config
connection = config.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    from modelroute_server.adapters.database import sqlalchemy_url

    url = config.get_main_option("sqlalchemy.url") or os.environ["MODELROUTE_DATABASE_URL"]
    engine = sa.create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        context.configure(connection=conn, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
