"""How a version's rows reach PostgreSQL: examples streamed in one COPY inside the version's
transaction, search texts filled on a second connection while the upload is still finding
duplicates. Outside a test transaction (transaction=True), as in a worker."""
import pytest
from django.db import connection

from lifecycle.core.jobs import JobCancelled
from lifecycle.datasets import ingest, operations, pipeline
from lifecycle.datasets.models import DatasetVersion, Example, ExampleText
from lifecycle.datasets.versions import TextIndexWriter, VersionWriter, verify_version
from tests.datasets.files import write_jsonl
from tests.datasets.test_ingest import artifact_files, make_dataset, rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    return settings.ARTIFACT_DIR


def upload(dataset, path, progress=None):
    options = ingest.Options.for_dataset(dataset, ingest.ColumnMapping({}), "reject")
    return pipeline.upload(dataset, str(path), "jsonl", options, progress=progress)


def other_connections():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


def test_an_upload_indexes_its_texts_on_a_second_connection_and_search_finds_them(tmp_path):
    data = rows(400)
    data[123]["text"] = "my parcel arrived with a broken zebra figurine inside"
    [version] = upload(make_dataset(), write_jsonl(tmp_path / "d.jsonl", data))
    assert ExampleText.objects.filter(version=version).count() == version.row_count == 400
    texts = dict(ExampleText.objects.filter(version=version).values_list("row", "text"))
    assert texts == dict(version.examples.values_list("row", "text"))
    assert list(version.examples.matching("zebra").values_list("row", flat=True)) == [123]
    assert version.examples.matching("figurine broken").count() == 1  # words, in any order
    assert version.examples.matching("zeb").count() == 0  # words, not substrings
    assert verify_version(version) == []
    assert other_connections() == 0  # the thread closed its connection


@pytest.mark.parametrize("phase", ["deduplicating", "writing"])
def test_a_cancel_while_texts_and_examples_stream_leaves_nothing(tmp_path, artifacts, phase):
    dataset = make_dataset()

    def progress(name, done, total, **extra):
        if name == phase and (phase != "writing" or done):  # writing: after rows went in
            raise JobCancelled("cancelled by the test")

    with pytest.raises(JobCancelled):
        upload(dataset, write_jsonl(tmp_path / "d.jsonl", rows(300)), progress)
    assert not DatasetVersion.objects.exists()
    assert not Example.objects.exists() and not ExampleText.objects.exists()
    assert artifact_files(artifacts) == []
    assert other_connections() == 0
    [version] = upload(dataset, write_jsonl(tmp_path / "d.jsonl", rows(300)))  # and the next upload works
    assert version.number == 1 and version.examples.count() == 300


def test_texts_whose_connection_failed_are_indexed_by_the_writer(tmp_path):
    [parent] = upload(make_dataset(), write_jsonl(tmp_path / "d.jsonl", rows(50)))
    broken = tmp_path / "not-parquet"
    broken.write_text("the second connection cannot read this")
    texts = TextIndexWriter.start(str(broken))
    writer = VersionWriter(parent.dataset, operation=DatasetVersion.Operation.RESPLIT, parent=parent, texts=texts)
    for batch in ingest_batches(parent):
        writer.add(batch)
    version = writer.commit(reports=operations.inherited_reports(parent), label_set=parent.label_set,
                            pii_status=parent.pii_status, has_leakage=parent.has_leakage)
    assert version.pk == texts.version_id and not texts.committed
    assert ExampleText.objects.filter(version=version).count() == 50
    assert version.examples.count() == 50 and verify_version(version) == []


def ingest_batches(version):
    from lifecycle.datasets.versions import iter_row_batches

    for batch in iter_row_batches(version):
        batch.pop("row")
        yield batch


def test_child_versions_stream_their_examples_and_texts_too(tmp_path):
    data = rows(60)
    data += [dict(data[0])]  # an exact duplicate to remove
    [parent] = upload(make_dataset(), write_jsonl(tmp_path / "d.jsonl", data))
    child = operations.remove_duplicates(parent)
    assert child.row_count == 60 == child.examples.count() == ExampleText.objects.filter(version=child).count()
    assert verify_version(child) == []
    assert child.examples.matching(data[5]["text"].split()[2]).exists()


def test_a_query_while_rows_stream_fails_clearly_instead_of_waiting_for_ever(tmp_path):
    from lifecycle.datasets.models import Dataset

    [parent] = upload(make_dataset(), write_jsonl(tmp_path / "d.jsonl", rows(30)))
    writer = VersionWriter(parent.dataset, operation=DatasetVersion.Operation.RESPLIT, parent=parent)
    writer.add(next(ingest_batches(parent)))
    with pytest.raises(RuntimeError, match="streaming a dataset version's rows"):
        Dataset.objects.count()
    writer.discard()
    assert Dataset.objects.count() == 1  # usable again, and nothing was written
    assert DatasetVersion.objects.count() == 1 and Example.objects.count() == 30
