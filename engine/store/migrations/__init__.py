"""Alembic's migrations of the run store's schema (applied by ``engine.store.migrate``)."""
