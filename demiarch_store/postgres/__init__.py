"""The PostgreSQL engine: the same projects, repositories and records on a server.

Chosen by ``StoreConfig(database_url=...)`` (or ``DEMIARCH_DATABASE_URL``). Every project lives
in one set of shared tables, ``project_id`` leading every key, each unit of work bound to its
project by row-level security (``ddl``); one bounded ``psycopg_pool`` per store (``engine``),
where units of work and snapshots (``session``) run the repositories' SQL,
retried whole on serialization failures and deadlocks. Driver errors become the library's
errors in ``translate``. Importing ``demiarch_store`` never imports this package: ``Store``
imports it only when a URL is configured.
"""

__all__: list[str] = []
