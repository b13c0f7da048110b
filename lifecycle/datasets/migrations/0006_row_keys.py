"""Each version's row keys (the diff's input) as an artifact, named in a table of their own:
the version row is immutable, and versions made before get theirs on their first diff. The
(version, origin_row) index goes: the diff no longer joins in the database."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('datasets', '0005_row_identity'),
    ]

    operations = [
        migrations.RemoveIndex(model_name='example', name='example_origin_row_idx'),
        migrations.CreateModel(
            name='RowKeys',
            fields=[
                ('version', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True,
                                                 related_name='row_keys', serialize=False, to='datasets.datasetversion')),
                ('keys_sha256', models.CharField(max_length=64)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
        ),
    ]
