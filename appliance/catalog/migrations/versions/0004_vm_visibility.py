"""Per-user and group VM visibility: users.groups, vm_access

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('vm_access',
    sa.Column('vm_name', sa.String(length=63), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=True),
    sa.Column('group', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('vm_name')
    )
    with op.batch_alter_table('vm_access', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vm_access_group'), ['group'], unique=False)
        batch_op.create_index(batch_op.f('ix_vm_access_owner'), ['owner'], unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('groups', sa.JSON(), server_default='[]', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('groups')

    with op.batch_alter_table('vm_access', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vm_access_owner'))
        batch_op.drop_index(batch_op.f('ix_vm_access_group'))

    op.drop_table('vm_access')
