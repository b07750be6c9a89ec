"""Postgres schema, sessions, queries and migrations."""
