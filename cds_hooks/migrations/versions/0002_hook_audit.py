"""hook audit table

Revision ID: 0002_hook_audit
Revises: 0001
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_hook_audit"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("client_iss", sa.String(512), nullable=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook_instance", sa.String(64), nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("cards", sa.SmallInteger(), nullable=False),
        sa.Column("card_kinds", sa.String(64), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("patient_pseudonym", sa.String(128), nullable=True),
    )
    op.create_index("ix_hook_audit_at", "hook_audit", ["at"])


def downgrade() -> None:
    op.drop_index("ix_hook_audit_at", table_name="hook_audit")
    op.drop_table("hook_audit")
