"""Alembic's entry point: appliance.migrate hands over an open connection; nothing is read from an ini file."""
from alembic import context

from appliance.catalog.schema import all_tables

context.configure(connection=context.config.attributes["connection"], target_metadata=all_tables(),
                  # SQLite cannot ALTER most things: batch mode copies the table instead.
                  render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
