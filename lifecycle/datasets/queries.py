"""The ingest's out-of-core steps as DuckDB queries over its scratch folder's Parquet files.

What is database work — the first row of each key, LSH buckets to candidate pairs, distinct
pairs, pairs in the order keep-first walks them — is SQL here, run under DuckDB's
`memory_limit` with its `temp_directory` in the ingest's scratch folder: past the limit
DuckDB spills to that folder instead of growing, so the bound is the engine's. What no
engine does for us stays in numpy beside it (dedup.py: MinHash, the shingle check, keep-first,
components; splits.py: the split).

The scratch folder holds `rows.parquet` (the staged rows, in row order) and `facts.parquet`
(per row: its number, label id, group id, time, content key, given split, 16-bit MinHash
signature and LSH band keys); it is removed with everything in it when the ingest ends.
"""
import shutil
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings

from lifecycle.core.artifacts import get_store
from lifecycle.datasets import dedup
from lifecycle.datasets.rows import joined_text

BANDS = dedup.DEFAULT_BANDS
FACTS_SCHEMA = pa.schema(
    [("row", pa.int64()), ("label", pa.int32()), ("group_id", pa.int64()), ("time", pa.float64()), ("key", pa.int64()),
     ("split", pa.int8()), ("signature", pa.binary(2 * dedup.DEFAULT_NUM_PERM))]
    + [(f"band{band}", pa.uint64()) for band in range(BANDS)])
FETCH = 1 << 16  # rows per record batch handed back to numpy
# Pairs of texts per batch: a batch's texts and their shingles are what the check holds.
TEXT_PAIRS_PER_BATCH = 1 << 13


class QueryFailed(Exception):
    """A DuckDB step could not finish (out of its memory limit or of disk): the ingest fails
    with this message instead of a traceback."""


class Scratch:
    """The ingest's scratch folder and its DuckDB connection; a context manager that removes
    the folder (DuckDB's spill files included) on success, failure and cancel alike."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="lifecycle-ingest-", dir=settings.DATASET_SCRATCH_DIR))
        self.rows_path, self.facts_path = self.path / "rows.parquet", self.path / "facts.parquet"
        self._db = None

    @property
    def db(self):
        if self._db is None:
            config = {"memory_limit": f"{settings.DATASET_QUERY_MEMORY_MB}MB", "temp_directory": str(self.path / "spill"),
                      "threads": settings.DATASET_QUERY_THREADS, "preserve_insertion_order": False,
                      # Memory DuckDB frees goes back to the system at once, and the Parquet
                      # files are not cached beside its buffers: what it holds is its limit.
                      "allocator_flush_threshold": "8MB", "allocator_bulk_deallocation_flush_threshold": "8MB",
                      "enable_external_file_cache": False}
            if settings.DATASET_QUERY_SPILL_MB:
                config["max_temp_directory_size"] = f"{settings.DATASET_QUERY_SPILL_MB}MB"
            self._db = duckdb.connect(config=config)
        return self._db

    def sql(self, query, params=None):
        try:
            return self.db.execute(query, params or [])
        except (duckdb.OutOfMemoryException, duckdb.IOException) as exc:
            raise QueryFailed(_room(exc)) from None

    def done_querying(self):
        """Close DuckDB, giving back its memory (the write that follows needs none of it)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self):
        self.done_querying()
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def facts(self):
        return f"read_parquet('{self.facts_path}')"

    def rows(self):
        return f"read_parquet('{self.rows_path}', file_row_number = true)"

    def batches(self, query, size=FETCH):
        """The query's result as Arrow record batches of `size` rows, read on a connection of
        its own (a cursor: the same database), so the caller may write while it reads."""
        cursor = self.db.cursor()
        try:
            yield from cursor.sql(query).to_arrow_reader(size)
        except (duckdb.OutOfMemoryException, duckdb.IOException) as exc:
            raise QueryFailed(_room(exc)) from None
        except OSError as exc:  # the same, raised through Arrow's reader
            if not str(exc).startswith(("Out of Memory Error", "IO Error")):
                raise
            raise QueryFailed(_room(exc)) from None
        finally:
            cursor.close()

    def by_row(self, query, n, dtype):
        """A (row, value) query over rows 0..n-1 as one numpy array of the values in row order:
        each batch put in place as it comes, so no sort and no second copy of the column."""
        values = np.empty(n, dtype)
        for batch in self.batches(query):
            values[batch.column(0).to_numpy()] = batch.column(1).to_numpy(zero_copy_only=False)
        return values


def facts_table(start, *, key, signatures, band_keys, label=None, group_id=None, time=None, split=None):
    """One batch of facts.parquet: rows start, start + 1, ...; what a step does not need
    (a child's labels, say) left at "none" (-1, or NaN for the time)."""
    n = len(key)
    signatures = np.ascontiguousarray(signatures, dtype=np.uint16)
    columns = {
        "row": np.arange(start, start + n), "label": np.full(n, -1) if label is None else label,
        "group_id": np.full(n, -1) if group_id is None else group_id, "time": np.full(n, np.nan) if time is None else time,
        "key": key, "split": np.full(n, -1) if split is None else split,
        "signature": pa.FixedSizeBinaryArray.from_buffers(FACTS_SCHEMA.field("signature").type, n,
                                                          [None, pa.py_buffer(signatures.tobytes())]),
    }
    columns |= {f"band{band}": np.ascontiguousarray(keys) for band, keys in enumerate(np.asarray(band_keys).T)}
    return pa.Table.from_pydict(columns, schema=FACTS_SCHEMA)


def stage_version(scratch, version):
    """A version's rows as the scratch folder's rows.parquet (its artifact, copied) and the
    facts a duplicate search queries: content keys, MinHash signatures, band keys."""
    get_store().copy_to(version.rows_sha256, str(scratch.rows_path))
    hasher, start = dedup.MinHasher(), 0
    with pq.ParquetWriter(scratch.facts_path, FACTS_SCHEMA) as writer:
        for batch in pq.ParquetFile(scratch.rows_path).iter_batches(batch_size=5_000,
                                                                    columns=["text", "response", "content_key"]):
            texts = [joined_text(text, response) for text, response in
                     zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())]
            signatures = hasher.signatures(texts)
            writer.write_table(facts_table(start, key=batch.column(2).to_numpy(), signatures=signatures & 0xFFFF,
                                           band_keys=hasher.band_keys(signatures)))
            start += batch.num_rows
    return start


def _room(exc):
    return (f"the duplicate search ran out of room ({str(exc).splitlines()[0]}); raise DATASET_QUERY_MEMORY_MB "
            "or free disk space where it spills")


def _first_rows_sql(scratch, column, ignore_negative=False):
    """(row, first): each row's first row with the same value of `column`. An aggregate and
    a join, not a window: both spill to disk past the memory limit."""
    own = f"WHERE {column} >= 0" if ignore_negative else ""
    return f"""
        SELECT f.row, coalesce(k.first, f.row) AS first FROM {scratch.facts()} f
        LEFT JOIN (SELECT {column} AS value, min(row) AS first FROM {scratch.facts()} {own} GROUP BY {column}) k
          ON k.value = f.{column}"""


def first_rows(scratch, column, n, *, ignore_negative=False):
    """Each row's first row with the same value of `column` (a value's first row is its own),
    as dedup.first_rows gives; with ignore_negative, rows with a negative value are their own."""
    return scratch.by_row(_first_rows_sql(scratch, column, ignore_negative), n, dedup.row_kind(n))


def create_firsts(scratch):
    """Table `firsts(row, first)`: each row's first row with its content key."""
    scratch.sql(f"CREATE TABLE firsts AS {_first_rows_sql(scratch, 'key')}")


# Rows whose band keys one bucket query groups: parted by a hash of the key beyond this, so
# each query's aggregate (a bucket's first rows are a list, which DuckDB cannot spill) holds
# the same number of buckets however many rows.
ROWS_PER_QUERY = 500_000


def create_candidates(scratch, n, max_partners, rows_per_query=ROWS_PER_QUERY):
    """Table `candidates(low, high)`: row pairs sharing a band key, without repeats — in each
    bucket every row with each of the bucket's first `max_partners` rows before it (all pairs
    of a small bucket, still connected in a big one), as tests/datasets/reference.py's
    candidate_pairs. A band and a part of its keys at a time, through an aggregate and a join,
    not a window over every key."""
    parts = max(1, -(-n // rows_per_query))
    scratch.sql("CREATE TABLE found (low BIGINT, high BIGINT)")
    for band in range(BANDS):
        for part in range(parts):
            keys = f"SELECT row, band{band} AS key FROM {scratch.facts()} WHERE band{band} <> 0" + \
                (f" AND hash(band{band}) % {parts} = {part}" if parts > 1 else "")
            scratch.sql(f"""
                INSERT INTO found
                WITH buckets AS (SELECT key, min(row, {int(max_partners)}) AS hubs FROM ({keys}) GROUP BY key
                                 HAVING count(*) > 1)
                SELECT hub, f.row FROM (SELECT key, unnest(hubs) AS hub FROM buckets) h
                JOIN ({keys}) f ON f.key = h.key AND h.hub < f.row""")
    scratch.sql("CREATE TABLE candidates AS SELECT DISTINCT low, high FROM found")
    scratch.sql("DROP TABLE found")


def _joined_twice(scratch, pairs, values, value, size=FETCH):
    """Each pair of table `pairs` with both rows' `value` from `values` (a table or query with
    `row`), a batch at a time: joined on the smaller row into a table, then on the larger as
    it streams out. Two plain joins, which DuckDB spills past its limit, each one pass over
    `values` whatever the number of pairs (a join per part of the pairs would scan it per part)."""
    scratch.sql(f"""CREATE TABLE half_joined AS SELECT p.low, p.high, v.{value} AS low_{value}
                    FROM {pairs} p JOIN {values} v ON v.row = p.low""")
    yield from scratch.batches(f"""SELECT h.low, h.high, h.low_{value}, v.{value} AS high_{value}
                                   FROM half_joined h JOIN {values} v ON v.row = h.high""", size)
    scratch.sql("DROP TABLE half_joined")


def candidates_with_signatures(scratch):
    """The candidates a batch at a time with both rows' signatures."""
    return _joined_twice(scratch, "candidates", scratch.facts(), "signature")


def text_pairs_with_texts(scratch):
    """Table `text_pairs(low, high)` with both texts (prompt, then "\\n" and the response where
    there is one), a batch at a time."""
    joined = "CASE WHEN coalesce(response, '') <> '' THEN text || chr(10) || response ELSE text END"
    texts = f"(SELECT file_row_number AS row, {joined} AS text FROM {scratch.rows()})"
    return _joined_twice(scratch, "text_pairs", texts, "text", size=TEXT_PAIRS_PER_BATCH)


def packed(scratch, query):
    """A two-column (low, high) query's pairs packed (dedup.pack_pairs), a batch at a time."""
    for batch in scratch.batches(query):
        low, high = (batch.column(i).to_numpy(zero_copy_only=False) for i in (0, 1))
        yield dedup.pack_rows(low, high)
