"""Agent frameworks' sessions: ``agent_sessions`` (one conversation each) and ``agent_states``.

The OpenAI Agents SDK's sessions and Google ADK's sessions live in the store's conversations
(their items and events are messages); ``agent_sessions`` maps a framework's session key to its
conversation and holds the session's state, ``agent_states`` the state ADK shares between the
sessions of an app (``app:`` keys) or of one user in an app (``user:`` keys).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    # TEXT on SQLite, so the JSON text is kept as written (see revision 0003); JSON elsewhere.
    return sa.JSON(none_as_null=True).with_variant(sa.Text(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("framework", sa.String(length=32), nullable=False),
        sa.Column("app_name", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("session_id", sa.String(length=512), nullable=False),
        sa.Column("conversation_id", sa.String(length=32), nullable=False),
        sa.Column("state", _json(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agent_sessions"),
        sa.UniqueConstraint(
            "framework",
            "app_name",
            "user_id",
            "session_id",
            name="uq_agent_sessions_framework_app_name_user_id_session_id",
        ),
        sa.UniqueConstraint("conversation_id", name="uq_agent_sessions_conversation_id"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_agent_sessions_conversation_id_conversations",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "agent_states",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("framework", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("app_name", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("state", _json(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agent_states"),
        sa.UniqueConstraint(
            "framework",
            "scope",
            "app_name",
            "user_id",
            name="uq_agent_states_framework_scope_app_name_user_id",
        ),
    )


def downgrade() -> None:
    op.drop_table("agent_states")
    op.drop_table("agent_sessions")
