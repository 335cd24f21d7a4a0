"""VMs on a pool of hosts: vms.host, vms.should_run, vm_options.compute_pool

Every VM so far ran on this machine ("local"); none is marked as meant to run, so HA restarts
none elsewhere until Cairn starts it once more (its local crash restarts are as before).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('vm_options', schema=None) as batch_op:
        batch_op.add_column(sa.Column('compute_pool', sa.String(length=63), nullable=True))

    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host', sa.String(length=63), server_default='local', nullable=False))
        batch_op.add_column(sa.Column('should_run', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_column('should_run')
        batch_op.drop_column('host')

    with op.batch_alter_table('vm_options', schema=None) as batch_op:
        batch_op.drop_column('compute_pool')
