"""The catalog as it was before migrations: VMs, backups, snapshot trees.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vms",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "backups",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("vm_name", sa.String(63), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("checkpoint", sa.String(96), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("bytes_read", sa.BigInteger(), nullable=False),
        sa.Column("bytes_stored", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("runner_pid", sa.BigInteger(), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("damage", sa.JSON(), nullable=False),
    )
    op.create_index("ix_backups_vm_name", "backups", ["vm_name"])
    op.create_index("ix_backups_status", "backups", ["status"])
    op.create_table(
        "snapshot_trees",
        sa.Column("vm_name", sa.String(63), primary_key=True),
        sa.Column("tree", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("snapshot_trees")
    op.drop_index("ix_backups_status", "backups")
    op.drop_index("ix_backups_vm_name", "backups")
    op.drop_table("backups")
    op.drop_table("vms")
