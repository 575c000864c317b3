"""Chat sessions: one row per message, so a conversation goes on in any process.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

A revision is a frozen copy of the schema as it was: it never imports ``engine.store.tables``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "chat_turns",
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_chat_turns"),
    )


def downgrade() -> None:
    op.drop_table("chat_turns")
