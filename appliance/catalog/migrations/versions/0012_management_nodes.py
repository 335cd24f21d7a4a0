"""Management nodes: nodes, leader_lease, jobs.runner_node

Jobs recorded before have no node: their runner was on the one node there was, and is judged
by its pid and start by whichever node looks (jobs/nodes.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leader_lease',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node', sa.String(length=64), nullable=True),
    sa.Column('pid', sa.BigInteger(), nullable=True),
    sa.Column('start', sa.String(length=64), nullable=True),
    sa.Column('term', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('nodes',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('boot_id', sa.String(length=64), nullable=False),
    sa.Column('serve_pid', sa.BigInteger(), nullable=True),
    sa.Column('serve_start', sa.String(length=64), nullable=True),
    sa.Column('address', sa.String(length=255), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runner_node', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('runner_node')

    op.drop_table('nodes')
    op.drop_table('leader_lease')
