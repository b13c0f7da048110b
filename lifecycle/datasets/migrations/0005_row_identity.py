"""Each example keeps its row identity across versions (origin_row), indexed with its version
for the diff's join. A nullable column without a default: both databases add it in place, so
the immutability triggers stay (SQLite would otherwise rebuild the table)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('datasets', '0004_pii_rows_index'),
    ]

    operations = [
        migrations.AddField(
            model_name='example',
            name='origin_row',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name='example',
            index=models.Index(fields=['version', 'origin_row'], name='example_origin_row_idx'),
        ),
    ]
