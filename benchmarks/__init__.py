"""Benchmarks of demiarch-store against raw sqlite3, aiosqlite and SQLAlchemy: `make bench`."""
