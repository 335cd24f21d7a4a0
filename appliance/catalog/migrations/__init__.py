"""Alembic migrations of the catalog; run through appliance.migrate, not the alembic command."""
