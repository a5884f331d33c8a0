"""LangGraph: checkpoints, their channel values and pending writes; long-term memory items and
their embeddings.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSON everywhere, declared TEXT on SQLite (see schema.json_document and revision 0003).
_JSON = sa.JSON(none_as_null=True).with_variant(sa.Text(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "lg_checkpoints",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("checkpoint_id", sa.Text(), nullable=False),
        sa.Column("parent_checkpoint_id", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("checkpoint_type", sa.String(length=32), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column("metadata", _JSON, nullable=True),
        sa.Column("channel_versions", _JSON, nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "thread_id", "checkpoint_ns", "checkpoint_id", name="pk_lg_checkpoints"
        ),
    )
    op.create_index("ix_lg_checkpoints_run_id", "lg_checkpoints", ["run_id"], unique=False)
    op.create_table(
        "lg_blobs",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("value_type", sa.String(length=32), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint(
            "thread_id", "checkpoint_ns", "channel", "version", name="pk_lg_blobs"
        ),
    )
    op.create_table(
        "lg_writes",
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("checkpoint_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("task_path", sa.Text(), nullable=False),
        sa.Column("value_type", sa.String(length=32), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint(
            "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", name="pk_lg_writes"
        ),
    )
    op.create_table(
        "memory_items",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", _JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("ttl_minutes", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("namespace", "key", name="pk_memory_items"),
    )
    op.create_index("ix_memory_items_expires_at", "memory_items", ["expires_at"], unique=False)
    op.create_table(
        "memory_vectors",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("field", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace", "key"],
            ["memory_items.namespace", "memory_items.key"],
            name="fk_memory_vectors_namespace_memory_items",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("namespace", "key", "field", name="pk_memory_vectors"),
    )


def downgrade() -> None:
    op.drop_table("memory_vectors")
    op.drop_index("ix_memory_items_expires_at", table_name="memory_items")
    op.drop_table("memory_items")
    op.drop_table("lg_writes")
    op.drop_table("lg_blobs")
    op.drop_index("ix_lg_checkpoints_run_id", table_name="lg_checkpoints")
    op.drop_table("lg_checkpoints")
