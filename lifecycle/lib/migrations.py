"""Raw SQL in migrations that differs between PostgreSQL and SQLite (triggers, indexes)."""


def execute_for_vendor(schema_editor, postgres_sql, sqlite_statements):
    """Run `postgres_sql` on PostgreSQL or each of `sqlite_statements` on SQLite.

    params=None: the SQL is passed to the driver as is, so a `%` in a PL/pgSQL message is
    not taken for a query parameter.
    """
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(postgres_sql, params=None)
    elif vendor == "sqlite":
        for statement in sqlite_statements:
            schema_editor.execute(statement)
