"""JSON columns with TEXT affinity on SQLite, so a top-level number keeps its JSON text.

Declared ``JSON``, a column has NUMERIC affinity in SQLite, which converts the JSON text of a
top-level number into a number: ``1.0`` became the integer 1, ``1e5`` the integer 100000. Every
JSON column is now declared ``TEXT`` on SQLite (still ``JSON`` elsewhere: this revision changes
nothing on other databases).

SQLite cannot change a column's type in place, so each table holding a JSON column is rebuilt:
its indexes are dropped with it, the old table is renamed aside, the new one created with the
same columns, constraints and names, the rows copied, the old table dropped and the indexes
created again. The new table is created under its own name (not renamed into place), so the
SQL that SQLite keeps is exactly what a new database gets from the metadata. The rename runs
with ``legacy_alter_table`` on and foreign keys off, so the foreign keys of other tables keep
naming the table, not its renamed copy, and dropping the old copy cascades nothing.

On the way up, the numbers the old affinity made of top-level JSON numbers become their JSON text
again (``json.dumps``: the shortest text of a float that reads back as the same float). What the
conversion already lost cannot come back: a float with an integral value stays an integer. On
the way down, SQLite's NUMERIC affinity converts them again, as revision 0002 stored them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, its JSON columns, its indexes): every table of revision 0002 with a JSON column.
_TABLES: list[tuple[str, tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]] = [
    ("projects", ("config",), ()),
    ("conversations", ("meta",), ()),
    ("messages", ("meta",), (("ix_messages_conversation_id_id", ("conversation_id", "id")),)),
    ("agents", ("config", "state"), (("ix_agents_status_id", ("status", "id")),)),
    (
        "checkpoints",
        ("meta",),
        (
            ("ix_checkpoints_parent_id", ("parent_id",)),
            ("ix_checkpoints_run_id_id", ("run_id", "id")),
        ),
    ),
    ("plugins", ("config", "state"), ()),
    (
        "code_generation",
        ("meta",),
        (
            ("ix_code_generation_agent_id", ("agent_id",)),
            ("ix_code_generation_conversation_id", ("conversation_id",)),
        ),
    ),
    (
        "sessions",
        ("meta",),
        (
            ("ix_sessions_agent_id", ("agent_id",)),
            ("ix_sessions_ended_at_id", ("ended_at", "id")),
        ),
    ),
    ("skills", ("definition",), (("ix_skills_agent_id", ("agent_id",)),)),
]


def _definition(name: str, json_type: sa.types.TypeEngine[Any]) -> list[Any]:
    """The columns and constraints of ``name`` as revisions 0001 and 0002 create it, with
    ``json_type`` for its JSON columns (the same order, so SQLite keeps the same SQL)."""
    if name == "projects":
        return [
            sa.Column("id", sa.String(64), nullable=False),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("description", sa.Text(), nullable=True),
            sa.Column("config", json_type, nullable=True),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_projects"),
        ]
    if name == "conversations":
        return [
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("title", sa.Text(), nullable=True),
            sa.Column("meta", json_type, nullable=True),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        ]
    if name == "messages":
        return [
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("conversation_id", sa.String(32), nullable=False),
            sa.Column("role", sa.String(32), nullable=False),
            sa.Column("content", sa.Text(), nullable=False),
            sa.Column("meta", json_type, nullable=True),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.ForeignKeyConstraint(
                ["conversation_id"],
                ["conversations.id"],
                name="fk_messages_conversation_id_conversations",
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name="pk_messages"),
        ]
    if name == "agents":
        return [
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("role", sa.String(length=100), nullable=True),
            sa.Column("status", sa.String(length=32), nullable=False),
            sa.Column("config", json_type, nullable=True),
            sa.Column("state", json_type, nullable=True),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id", name="pk_agents"),
        ]
    if name == "checkpoints":
        return [
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("run_id", sa.String(length=200), nullable=False),
            sa.Column("parent_id", sa.String(length=32), nullable=True),
            sa.Column("state", sa.LargeBinary(), nullable=False),
            sa.Column("state_hash", sa.String(length=64), nullable=False),
            sa.Column("meta", json_type, nullable=True),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.ForeignKeyConstraint(
                ["parent_id"],
                ["checkpoints.id"],
                name="fk_checkpoints_parent_id_checkpoints",
                ondelete="SET NULL",
            ),
            sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        ]
    if name == "plugins":
        return [
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("version", sa.String(length=64), nullable=True),
            sa.Column("enabled", sa.Boolean(), nullable=False),
            sa.Column("config", json_type, nullable=True),
            sa.Column("state", json_type, nullable=True),
            sa.Column("installed_at", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.UniqueConstraint("name", name="uq_plugins_name"),
            sa.PrimaryKeyConstraint("id", name="pk_plugins"),
        ]
    if name == "code_generation":
        return [
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("path", sa.String(length=1000), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("language", sa.String(length=64), nullable=True),
            sa.Column("content", sa.Text(), nullable=False),
            sa.Column("content_hash", sa.String(length=64), nullable=False),
            sa.Column("agent_id", sa.String(length=32), nullable=True),
            sa.Column("conversation_id", sa.String(length=32), nullable=True),
            sa.Column("meta", json_type, nullable=True),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.UniqueConstraint("path", "version", name="uq_code_generation_path_version"),
            sa.ForeignKeyConstraint(
                ["agent_id"],
                ["agents.id"],
                name="fk_code_generation_agent_id_agents",
                ondelete="SET NULL",
            ),
            sa.ForeignKeyConstraint(
                ["conversation_id"],
                ["conversations.id"],
                name="fk_code_generation_conversation_id_conversations",
                ondelete="SET NULL",
            ),
            sa.PrimaryKeyConstraint("id", name="pk_code_generation"),
        ]
    if name == "sessions":
        return [
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("user_id", sa.String(length=200), nullable=True),
            sa.Column("agent_id", sa.String(length=32), nullable=True),
            sa.Column("meta", json_type, nullable=True),
            sa.Column("started_at", sa.BigInteger(), nullable=False),
            sa.Column("last_active_at", sa.BigInteger(), nullable=False),
            sa.Column("ended_at", sa.BigInteger(), nullable=True),
            sa.ForeignKeyConstraint(
                ["agent_id"], ["agents.id"], name="fk_sessions_agent_id_agents", ondelete="SET NULL"
            ),
            sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        ]
    if name == "skills":
        return [
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=False),
            sa.Column("description", sa.Text(), nullable=True),
            sa.Column("definition", json_type, nullable=True),
            sa.Column("agent_id", sa.String(length=32), nullable=True),
            sa.Column("uses", sa.Integer(), nullable=False),
            sa.Column("successes", sa.Integer(), nullable=False),
            sa.Column("failures", sa.Integer(), nullable=False),
            sa.Column("last_used_at", sa.BigInteger(), nullable=True),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.UniqueConstraint("name", name="uq_skills_name"),
            sa.ForeignKeyConstraint(
                ["agent_id"], ["agents.id"], name="fk_skills_agent_id_agents", ondelete="SET NULL"
            ),
            sa.PrimaryKeyConstraint("id", name="pk_skills"),
        ]
    raise AssertionError(f"no definition for table {name}")


def _rebuild(json_type: sa.types.TypeEngine[Any], *, numbers_to_text: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return  # elsewhere the columns are, and stay, JSON
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        # Dropping a parent table with foreign keys on would delete (or null) its children.
        raise RuntimeError("revision 0003 rebuilds tables and must run with foreign keys off")
    legacy = bind.exec_driver_sql("PRAGMA legacy_alter_table").scalar()
    bind.exec_driver_sql("PRAGMA legacy_alter_table = ON")
    try:
        for name, json_columns, indexes in _TABLES:
            old = f"_0003_old_{name}"
            elements = _definition(name, json_type)
            columns = ", ".join(e.name for e in elements if isinstance(e, sa.Column))
            for index, _ in indexes:
                op.drop_index(index, table_name=name)
            op.rename_table(name, old)
            op.create_table(name, *elements)
            op.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {old}")
            if numbers_to_text:
                # Copied into TEXT, a REAL keeps 15 significant digits only: write the JSON
                # text of every number again, exactly, from the old table.
                for column in json_columns:
                    rows = bind.exec_driver_sql(
                        f"SELECT id, {column} FROM {old} "
                        f"WHERE typeof({column}) IN ('integer', 'real')"
                    ).fetchall()
                    if rows:
                        bind.exec_driver_sql(
                            f"UPDATE {name} SET {column} = ? WHERE id = ?",
                            [(json.dumps(value), id_) for id_, value in rows],
                        )
            op.drop_table(old)
            for index, index_columns in indexes:
                op.create_index(index, name, list(index_columns), unique=False)
    finally:
        bind.exec_driver_sql(f"PRAGMA legacy_alter_table = {'ON' if legacy else 'OFF'}")


def upgrade() -> None:
    _rebuild(sa.Text(), numbers_to_text=True)


def downgrade() -> None:
    _rebuild(sa.JSON(none_as_null=True), numbers_to_text=False)
