"""backups.protected: whether the store marks the backup never to be pruned, as the catalog last
saw it (the store's `protected` file is the truth: appliance/backups/protection.py). Backups
recorded before start unprotected here; a marker set in the store before this revision shows
once the VM's next prune, or a protect or unprotect of the backup, reads it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('backups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('protected', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('backups', schema=None) as batch_op:
        batch_op.drop_column('protected')
