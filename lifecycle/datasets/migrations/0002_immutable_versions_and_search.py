"""Versions and their examples are immutable in the database itself (UPDATE refused), and
example text gets a full-text index on PostgreSQL for the example browser's search."""
from django.db import migrations

from lifecycle.lib.migrations import execute_for_vendor

TABLES = ("datasets_datasetversion", "datasets_example")

POSTGRES_FORWARD = """
CREATE OR REPLACE FUNCTION datasets_refuse_update() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'dataset versions are immutable (UPDATE of % refused); make a child version', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
""" + "".join(
    f"CREATE TRIGGER {table}_immutable BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION datasets_refuse_update();\n"
    for table in TABLES
) + "CREATE INDEX datasets_example_text_search ON datasets_example USING gin (to_tsvector('simple', text));\n"

POSTGRES_BACKWARD = "DROP INDEX IF EXISTS datasets_example_text_search;\n" + "".join(
    f"DROP TRIGGER IF EXISTS {table}_immutable ON {table};\n" for table in TABLES
) + "DROP FUNCTION IF EXISTS datasets_refuse_update();\n"

SQLITE_FORWARD = [
    f"""CREATE TRIGGER {table}_immutable BEFORE UPDATE ON {table}
        BEGIN SELECT RAISE(ABORT, 'dataset versions are immutable (UPDATE refused); make a child version'); END;"""
    for table in TABLES
]
SQLITE_BACKWARD = [f"DROP TRIGGER IF EXISTS {table}_immutable;" for table in TABLES]


def forward(apps, schema_editor):
    execute_for_vendor(schema_editor, POSTGRES_FORWARD, SQLITE_FORWARD)


def backward(apps, schema_editor):
    execute_for_vendor(schema_editor, POSTGRES_BACKWARD, SQLITE_BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("datasets", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
