"""backups.sequence: the order backups were begun in, which retention goes by instead of the
clock; the backups there are numbered in the order of their start times

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('backups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sequence', sa.BigInteger(), nullable=True))
    backups = sa.table('backups', sa.column('id', sa.String), sa.column('started_at', sa.DateTime),
                       sa.column('sequence', sa.BigInteger))
    conn = op.get_bind()
    ids = conn.execute(sa.select(backups.c.id).order_by(backups.c.started_at, backups.c.id)).scalars().all()
    if ids:
        conn.execute(backups.update().where(backups.c.id == sa.bindparam('backup')).values(sequence=sa.bindparam('n')),
                     [{'backup': backup_id, 'n': n} for n, backup_id in enumerate(ids, 1)])
    with op.batch_alter_table('backups', schema=None) as batch_op:
        batch_op.alter_column('sequence', existing_type=sa.BigInteger(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('backups', schema=None) as batch_op:
        batch_op.drop_column('sequence')
