"""Backups indexed by start time, alone (the listing's default order, newest-first pages) and
after their VM (a VM's backups in order, each VM's newest), which replaces the index on the VM alone

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
from __future__ import annotations

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('backups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_backups_started_at'), ['started_at'], unique=False)
        batch_op.create_index('ix_backups_vm_name_started_at', ['vm_name', 'started_at'], unique=False)
        batch_op.drop_index('ix_backups_vm_name')


def downgrade() -> None:
    with op.batch_alter_table('backups', schema=None) as batch_op:
        batch_op.create_index('ix_backups_vm_name', ['vm_name'], unique=False)
        batch_op.drop_index('ix_backups_vm_name_started_at')
        batch_op.drop_index(batch_op.f('ix_backups_started_at'))
