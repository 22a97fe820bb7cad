"""The inspection log: append-only, hash-chained records of every decision (SQLite or PostgreSQL)."""
