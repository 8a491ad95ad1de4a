"""Versioned schema migrations, one module each: ``mNNNN_name.py`` with ``STATEMENTS``.

Modules are discovered by name, applied in version order and recorded in
``schema_migrations``. Statements must be idempotent (``IF NOT EXISTS``) so a migration
interrupted half-way can simply run again. Never edit a released migration: add one.
"""
