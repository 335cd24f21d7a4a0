"""The catalog: the appliance's database (SQLAlchemy 2; SQLite in WAL mode or PostgreSQL).

It is an index, not the truth about backup data: the store alone can restore. Each domain
package owns its tables (its `records.py`); this package holds the declarative base, the
engine, the alembic migrations (`migrations/`) and the list query language of the API.
"""
