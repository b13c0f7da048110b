"""The ingest's DuckDB steps against the in-memory numpy forms they replace, and its scratch
folder: gone on success, refusal, failure and cancel; DuckDB out of room is a clear failure."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifecycle.datasets import dedup, duplicates, ingest, pipeline, queries
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.readers import ColumnMapping
from lifecycle.datasets.synthetic import write_jsonl
from tests.datasets import reference
from tests.datasets.test_dedup import crowded_corpus


@pytest.fixture
def scratch_dir(settings, tmp_path):
    settings.DATASET_SCRATCH_DIR = str(tmp_path / "scratch")
    (tmp_path / "scratch").mkdir()
    return tmp_path / "scratch"


def _stage(scratch, texts, keys=None, groups=None):
    """Facts and rows as the streaming pass stages them, for these texts."""
    hasher = dedup.MinHasher()
    signatures = hasher.signatures(texts)
    n = len(texts)
    facts = {"row": np.arange(n), "label": np.zeros(n, np.int32),
             "group_id": np.full(n, -1) if groups is None else np.asarray(groups), "time": np.full(n, np.nan),
             "key": reference.exact_keys(texts) if keys is None else np.asarray(keys), "split": np.full(n, -1, np.int8),
             "signature": pa.FixedSizeBinaryArray.from_buffers(
                 pa.binary(128), n, [None, pa.py_buffer((signatures & 0xFFFF).astype(np.uint16).tobytes())])}
    facts |= {f"band{b}": column for b, column in enumerate(hasher.band_keys(signatures).T)}
    pq.write_table(pa.Table.from_pydict(facts, schema=queries.FACTS_SCHEMA), scratch.facts_path, row_group_size=97)
    pq.write_table(pa.table({"text": texts, "response": [""] * n}), scratch.rows_path, row_group_size=97)


def test_candidates_are_the_in_memory_candidate_pairs_with_big_buckets(scratch_dir):
    texts = crowded_corpus()
    hasher = dedup.MinHasher()
    expected = reference.candidate_pairs(hasher.band_keys(hasher.signatures(texts)), max_partners=4)
    assert len(expected) > 500  # big buckets: the partner cap is in play
    with queries.Scratch() as scratch:
        _stage(scratch, texts)
        queries.create_candidates(scratch, len(texts), max_partners=4)
        found = scratch.sql("SELECT low, high FROM candidates ORDER BY low, high").fetchnumpy()
        scratch.sql("DROP TABLE candidates")
        # The same in parts of the band keys (as a big upload runs it).
        queries.create_candidates(scratch, len(texts), max_partners=4, rows_per_query=len(texts) // 7)
        parted = scratch.sql("SELECT low, high FROM candidates ORDER BY low, high").fetchnumpy()
    assert np.array_equal(np.stack([found["low"], found["high"]], axis=1), expected)
    assert np.array_equal(np.stack([parted["low"], parted["high"]], axis=1), expected)


def test_first_rows_are_dedups_for_keys_and_groups(scratch_dir):
    rng = np.random.default_rng(3)
    keys = rng.integers(-2**63, 2**63 - 1, 400)[rng.integers(0, 400, 1000)]
    groups = rng.integers(-1, 30, 1000)
    with queries.Scratch() as scratch:
        _stage(scratch, [f"text {i}" for i in range(1000)], keys=keys, groups=groups)
        assert queries.first_rows(scratch, "key", 1000).tolist() == dedup.first_rows(keys).tolist()
        grouped = queries.first_rows(scratch, "group_id", 1000, ignore_negative=True)
        assert grouped.tolist() == dedup.first_rows(groups, ignore_negative=True).tolist()


def test_confirmed_pairs_are_every_candidate_checked_on_its_own(scratch_dir):
    """Sure on the estimate, unsure ones by their texts' shingles, checked once per pair of
    distinct texts: the same pairs a check of every candidate on the same rules gives."""
    texts = crowded_corpus() + ["where is my order 123", "Where is my order 123!", "where is my  order 123"]
    hasher = dedup.MinHasher()
    signatures = (hasher.signatures(texts) & 0xFFFF).astype(np.uint16)
    candidates = reference.candidate_pairs(hasher.band_keys(hasher.signatures(texts)), max_partners=4)
    estimate = (signatures[candidates[:, 0]] == signatures[candidates[:, 1]]).mean(axis=1)
    unsure = candidates[(estimate >= 0.7) & (estimate < 0.9)]
    checked = reference.verify_pairs(unsure, lambda rows: [texts[i] for i in rows])
    expected = {tuple(p) for p in candidates[estimate >= 0.9].tolist()} | {tuple(p) for p in checked.tolist()}
    assert len(unsure) and len(checked) < len(unsure)  # the shingles decided some of them
    with queries.Scratch() as scratch:
        _stage(scratch, texts)
        queries.create_firsts(scratch)
        duplicates.confirm_pairs(scratch, len(texts))
        found = {tuple(p) for p in scratch.sql("SELECT low, high FROM near").fetchall()}
    assert found == expected


def _upload(tmp_path, progress=None, on_error="reject", rows=800):
    write_jsonl(tmp_path / "d.jsonl", rows, seed=3, pii_rate=0.1, dup_rate=0.1)
    dataset = Dataset.objects.create(name="D", slug=f"d-{on_error}", pii_policy=Dataset.PiiPolicy.ALLOW)
    options = ingest.Options.for_dataset(dataset, ColumnMapping({"group": "customer_id"}), on_error)
    return dataset, lambda: pipeline.upload(dataset, str(tmp_path / "d.jsonl"), "jsonl", options, progress=progress)


@pytest.mark.django_db
def test_the_scratch_folder_is_gone_after_success_refusal_and_cancel(tmp_path, scratch_dir, settings):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    _, run = _upload(tmp_path)
    [version] = run()
    assert version.row_count == 800 and list(scratch_dir.iterdir()) == []

    (tmp_path / "bad.jsonl").write_text('{"text": "hello"}\n')  # no label: refused
    dataset = Dataset.objects.create(name="Bad", slug="bad")
    options = ingest.Options.for_dataset(dataset, ColumnMapping({}), "reject")
    with pytest.raises(ingest.IngestRejected):
        pipeline.upload(dataset, str(tmp_path / "bad.jsonl"), "jsonl", options)
    assert list(scratch_dir.iterdir()) == []

    class Cancelled(Exception):
        pass

    seen = []

    def cancel_while_splitting(phase, *args, **kwargs):
        seen.append(list(scratch_dir.rglob("*")))
        if phase == "splitting":  # mid-step: DuckDB's tables made, the facts staged
            raise Cancelled()

    dataset, run = _upload(tmp_path, progress=cancel_while_splitting, on_error="drop")
    with pytest.raises(Cancelled):
        run()
    assert any(seen) and list(scratch_dir.iterdir()) == []
    assert not dataset.versions.exists()


@pytest.mark.django_db
def test_duckdb_out_of_room_fails_the_upload_with_a_clear_message(tmp_path, scratch_dir, settings):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.DATASET_QUERY_MEMORY_MB = settings.DATASET_QUERY_SPILL_MB = 1  # and no room to spill
    dataset, run = _upload(tmp_path, rows=20_000)
    with pytest.raises(ingest.IngestRejected, match="ran out of room.*DATASET_QUERY_MEMORY_MB"):
        run()
    assert list(scratch_dir.iterdir()) == [] and not dataset.versions.exists()
