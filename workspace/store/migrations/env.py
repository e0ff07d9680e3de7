"""Alembic environment of the store, configured in code (no alembic.ini).

``workspace.store.migrations.upgrade`` passes an open connection in
``config.attributes["connection"]`` (already in the transaction the caller commits).
Without one (``python -m workspace.store.migrations ... --url URL``), an engine is made
from the ``sqlalchemy.url`` option. ``--sql`` (offline) mode writes the DDL instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alembic import context
from alembic.operations import ops
from sqlalchemy import DefaultClause, create_engine
from sqlalchemy.engine import Connection

import workspace.store.engines as engines
from workspace.store.migrations import defaults
from workspace.store.models import Base

config = context.config
target_metadata = Base.metadata


def _added_columns(op_list: Iterable[ops.MigrateOperation]) -> Iterable[ops.AddColumnOp]:
    for op in op_list:
        if isinstance(op, ops.AddColumnOp):
            yield op
        elif isinstance(op, ops.ModifyTableOps):
            yield from _added_columns(op.ops)


def _fill_new_columns(_context: Any, _revision: Any, directives: list[Any]) -> None:
    """Autogenerate: a NOT NULL column added to a table gets a DEFAULT (the model's
    default) so that the table's existing rows can take it."""
    for script in directives:
        for upgrade_ops in script.upgrade_ops_list:
            for op in _added_columns(upgrade_ops.ops):
                col = op.column
                if col.nullable or col.server_default is not None:
                    continue
                model = target_metadata.tables[op.table_name].c[col.name]
                value = defaults.server_default(model)
                if value is not None:
                    col.server_default = DefaultClause(value)


def _configure(connection: Connection, in_transaction: bool = False) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead (the
        # rendered batch blocks are plain ALTERs on other databases).
        render_as_batch=True,
        compare_type=True,
        process_revision_directives=_fill_new_columns,
        # the caller's transaction holds the DDL too (on SQLite: BEGIN IMMEDIATE)
        transactional_ddl=True if in_transaction else None,
    )


def run_offline() -> None:
    context.configure(
        url=engines.normalize_url(config.get_main_option("sqlalchemy.url") or ""),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection, in_transaction=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(engines.normalize_url(config.get_main_option("sqlalchemy.url") or ""))
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
