"""Jobs claim their resource in the catalog: resource_claims, jobs.fence

A job that runs or undoes its steps while the catalog is upgraded holds its resource from now
on, with token 1 (so a job that the next process takes over is not overtaken by a new one).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('resource_claims',
    sa.Column('resource', sa.String(length=160), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('token', sa.BigInteger(), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('resource')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fence', sa.BigInteger(), nullable=True))

    # One holder per resource: the oldest of its running jobs (there is one, unless a crash of
    # the old engine left several; the others still wait their turn, as interrupted jobs).
    op.execute("""
        INSERT INTO resource_claims (resource, job_id, token, claimed_at)
        SELECT j.resource, MIN(j.id), 1, CURRENT_TIMESTAMP FROM jobs j
        WHERE j.state IN ('running', 'undoing')
        GROUP BY j.resource
    """)
    op.execute("""
        UPDATE jobs SET fence = 1
        WHERE id IN (SELECT job_id FROM resource_claims)
    """)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('fence')

    op.drop_table('resource_claims')
