"""Alembic migrations for the cards and feedback tables (run by cds_hooks.store.Store.migrate)."""
