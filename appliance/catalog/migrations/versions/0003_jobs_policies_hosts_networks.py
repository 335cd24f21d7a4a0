"""Jobs, events, policies, deletion protection, checkpoints, snapshot intents, boot tests,
VM options and scheduling groups, pools, networks and hosts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('address_pools',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('subnet', sa.String(length=18), nullable=False),
    sa.Column('gateway', sa.String(length=15), nullable=False),
    sa.Column('first', sa.String(length=15), nullable=False),
    sa.Column('last', sa.String(length=15), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('boot_tests',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('backup_id', sa.String(length=64), nullable=False),
    sa.Column('vm_name', sa.String(length=63), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('console', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('boot_tests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_boot_tests_backup_id'), ['backup_id'], unique=False)

    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('vm_name', sa.String(length=63), nullable=False),
    sa.Column('disk', sa.String(length=63), nullable=False),
    sa.Column('bitmap', sa.String(length=96), nullable=False),
    sa.Column('backup_id', sa.String(length=64), nullable=False),
    sa.Column('image_file', sa.Text(), nullable=False),
    sa.Column('node', sa.String(length=63), nullable=True),
    sa.Column('incrementals', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_backup_id'), ['backup_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoints_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoints_vm_name'), ['vm_name'], unique=False)

    op.create_table('compute_pools',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('hosts', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('deletion_rules',
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('delay_seconds', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('kind')
    )
    op.create_table('events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('resource', sa.String(length=160), nullable=True),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_resource'), ['resource'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_severity'), ['severity'], unique=False)

    op.create_table('hosts',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=160), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('limits', sa.JSON(), nullable=False),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('memo', sa.JSON(), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('policy_id', sa.String(length=32), nullable=True),
    sa.Column('runner_pid', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_policy_id'), ['policy_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_resource'), ['resource'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_state'), ['state'], unique=False)

    op.create_table('policies',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scheduled_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('policies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_policies_kind'), ['kind'], unique=False)

    op.create_table('recycle_bin',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=160), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('purge_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('recycle_bin', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recycle_bin_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_recycle_bin_purge_at'), ['purge_at'], unique=False)

    op.create_table('scheduling_groups',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('policy', sa.String(length=32), nullable=False),
    sa.Column('enforcement', sa.String(length=16), nullable=False),
    sa.Column('vms', sa.JSON(), nullable=False),
    sa.Column('hosts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('snapshot_intents',
    sa.Column('vm_name', sa.String(length=63), nullable=False),
    sa.Column('intent', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('vm_name')
    )
    op.create_table('storage_pools',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('vm_options',
    sa.Column('vm_name', sa.String(length=63), nullable=False),
    sa.Column('ha_enabled', sa.Boolean(), nullable=False),
    sa.Column('ha_max_restarts', sa.Integer(), nullable=False),
    sa.Column('ha_window_seconds', sa.Integer(), nullable=False),
    sa.Column('ha_gave_up_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('linked_to', sa.String(length=63), nullable=True),
    sa.PrimaryKeyConstraint('vm_name')
    )
    with op.batch_alter_table('vm_options', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vm_options_linked_to'), ['linked_to'], unique=False)

    op.create_table('vm_tags',
    sa.Column('vm_name', sa.String(length=63), nullable=False),
    sa.Column('tag', sa.String(length=63), nullable=False),
    sa.PrimaryKeyConstraint('vm_name', 'tag')
    )
    with op.batch_alter_table('vm_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vm_tags_tag'), ['tag'], unique=False)

    op.create_table('address_leases',
    sa.Column('pool', sa.String(length=63), nullable=False),
    sa.Column('address', sa.String(length=15), nullable=False),
    sa.Column('owner', sa.String(length=127), nullable=False),
    sa.Column('nic', sa.String(length=8), nullable=True),
    sa.Column('mac', sa.String(length=17), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pool'], ['address_pools.name'], ),
    sa.PrimaryKeyConstraint('pool', 'address')
    )
    with op.batch_alter_table('address_leases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_address_leases_owner'), ['owner'], unique=False)

    op.create_table('networks',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('bridge', sa.String(length=15), nullable=False),
    sa.Column('address_pool', sa.String(length=63), nullable=False),
    sa.Column('netns', sa.String(length=63), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['address_pool'], ['address_pools.name'], ),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('address_pool'),
    sa.UniqueConstraint('bridge')
    )


def downgrade() -> None:
    op.drop_table('networks')
    with op.batch_alter_table('address_leases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_address_leases_owner'))

    op.drop_table('address_leases')
    with op.batch_alter_table('vm_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vm_tags_tag'))

    op.drop_table('vm_tags')
    with op.batch_alter_table('vm_options', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vm_options_linked_to'))

    op.drop_table('vm_options')
    op.drop_table('storage_pools')
    op.drop_table('snapshot_intents')
    op.drop_table('scheduling_groups')
    with op.batch_alter_table('recycle_bin', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recycle_bin_purge_at'))
        batch_op.drop_index(batch_op.f('ix_recycle_bin_kind'))

    op.drop_table('recycle_bin')
    with op.batch_alter_table('policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_policies_kind'))

    op.drop_table('policies')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_state'))
        batch_op.drop_index(batch_op.f('ix_jobs_resource'))
        batch_op.drop_index(batch_op.f('ix_jobs_policy_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_kind'))
        batch_op.drop_index(batch_op.f('ix_jobs_created_at'))

    op.drop_table('jobs')
    op.drop_table('hosts')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_severity'))
        batch_op.drop_index(batch_op.f('ix_events_resource'))
        batch_op.drop_index(batch_op.f('ix_events_kind'))
        batch_op.drop_index(batch_op.f('ix_events_job_id'))
        batch_op.drop_index(batch_op.f('ix_events_created_at'))

    op.drop_table('events')
    op.drop_table('deletion_rules')
    op.drop_table('compute_pools')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_vm_name'))
        batch_op.drop_index(batch_op.f('ix_checkpoints_state'))
        batch_op.drop_index(batch_op.f('ix_checkpoints_backup_id'))

    op.drop_table('checkpoints')
    with op.batch_alter_table('boot_tests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_boot_tests_backup_id'))

    op.drop_table('boot_tests')
    op.drop_table('address_pools')
