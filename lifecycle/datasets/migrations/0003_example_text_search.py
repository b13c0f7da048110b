"""The example browser's full-text index moves from datasets_example to a table of its own,
datasets_exampletext (see models.ExampleText): an upload fills it on a second connection while
it still looks for duplicates. Existing versions' texts are copied over; the table is immutable
like the examples."""
import django.db.models.deletion
from django.db import migrations, models

from lifecycle.lib.migrations import execute_for_vendor

POSTGRES_FORWARD = """
DROP INDEX IF EXISTS datasets_example_text_search;
INSERT INTO datasets_exampletext (version_id, "row", text) SELECT version_id, "row", text FROM datasets_example;
CREATE INDEX datasets_exampletext_search ON datasets_exampletext USING gin (to_tsvector('simple', text));
CREATE TRIGGER datasets_exampletext_immutable BEFORE UPDATE ON datasets_exampletext
    FOR EACH ROW EXECUTE FUNCTION datasets_refuse_update();
"""
POSTGRES_BACKWARD = """
DROP TRIGGER IF EXISTS datasets_exampletext_immutable ON datasets_exampletext;
DROP INDEX IF EXISTS datasets_exampletext_search;
CREATE INDEX datasets_example_text_search ON datasets_example USING gin (to_tsvector('simple', text));
"""
SQLITE_FORWARD = ["""CREATE TRIGGER datasets_exampletext_immutable BEFORE UPDATE ON datasets_exampletext
    BEGIN SELECT RAISE(ABORT, 'dataset versions are immutable (UPDATE refused); make a child version'); END;"""]
SQLITE_BACKWARD = ["DROP TRIGGER IF EXISTS datasets_exampletext_immutable;"]


def forward(apps, schema_editor):
    execute_for_vendor(schema_editor, POSTGRES_FORWARD, SQLITE_FORWARD)


def backward(apps, schema_editor):
    execute_for_vendor(schema_editor, POSTGRES_BACKWARD, SQLITE_BACKWARD)


class Migration(migrations.Migration):

    dependencies = [
        ('datasets', '0002_immutable_versions_and_search'),
    ]

    operations = [
        migrations.CreateModel(
            name='ExampleText',
            fields=[
                ('pk', models.CompositePrimaryKey('version', 'row', blank=True, editable=False, primary_key=True, serialize=False)),
                ('row', models.PositiveIntegerField()),
                ('text', models.TextField()),
                ('version', models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='datasets.datasetversion')),
            ],
        ),
        migrations.RunPython(forward, backward),
    ]
