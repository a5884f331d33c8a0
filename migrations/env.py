"""Alembic environment: runs on the connection demiarch-store hands it, inside its transaction."""

from alembic import context

from demiarch_store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the store always passes its own connection
    raise RuntimeError("demiarch-store runs its migrations itself; use `demiarch-store migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
    on_version_apply=context.config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
