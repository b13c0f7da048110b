"""What is computed from each row on its own: its content hash, PII matches, exact key and
LSH band keys. Free of Django, so a helper process can run it on batches (see ingest.py)."""
import gc
import hashlib
import json
import math
from contextlib import contextmanager
from datetime import timezone as dt_timezone

import numpy as np

from lifecycle.datasets import dedup, pii


def _plain(value):
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def metadata_json(metadata):
    """The one text form of a row's metadata: sorted keys, no spaces, dates as ISO 8601."""
    if isinstance(metadata, str):
        return metadata
    return json.dumps(metadata or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)


def row_sha256(text, response, label, group, timestamp, metadata):
    """The content hash of one row: sha256 of the JSON array [text, response, label, group,
    timestamp (UTC, ISO 8601), metadata as its canonical JSON text]. The split is the version's
    choice, not the row's content, so it is hashed into the version instead."""
    when = timestamp.astimezone(dt_timezone.utc).isoformat() if timestamp else None
    fields = [text, response, label, group, when, metadata_json(metadata)]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def joined_text(text, response):
    """What PII scanning and duplicate detection look at: the text, and the response if any."""
    return text + ("\n" + response if response else "")


def group_id(group):
    """A stable 63-bit id for a group name, -1 for none. Not Python's hash(): that is salted
    per process, and the seeded split must come out the same in every process."""
    if not group:
        return -1
    return int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "little") & 0x7FFFFFFFFFFFFFFF


def analyse(rows, hasher):
    """For a batch of clean rows, what the ingest keeps of each, by name: the rows' PII
    matches (only rows with some, by position in the batch) and their kinds as text, content
    keys, row hashes, metadata as canonical JSON text, group ids and times (arrays), LSH band
    keys, and the low 16 bits of the MinHash signatures (kept to confirm near-duplicate
    candidates later: two different values agree by chance once in 65,536, for half the bytes)."""
    texts = [joined_text(row["text"], row["response"]) for row in rows]
    matches = pii.scan_many(texts)
    metadata = [metadata_json(row["metadata"]) for row in rows]
    signatures = hasher.signatures(texts)
    return {
        "pii": [(offset, found) for offset, found in enumerate(matches) if found],
        "pii_kinds": [",".join(sorted({m.kind for m in found})) if found else "" for found in matches],
        "content_key": np.fromiter((dedup.exact_key(text) for text in texts), dtype=np.int64, count=len(texts)),
        "row_sha256": [row_sha256(r["text"], r["response"], r["label"], r["group"], r["timestamp"], m)
                       for r, m in zip(rows, metadata)],
        "metadata": metadata,
        "group_id": np.fromiter((group_id(row["group"]) for row in rows), dtype=np.int64, count=len(rows)),
        "time": np.fromiter((row["timestamp"].timestamp() if row["timestamp"] else math.nan for row in rows),
                            dtype=np.float64, count=len(rows)),
        "band_keys": hasher.band_keys(signatures),
        "signatures": (signatures & 0xFFFF).astype("uint16"),
    }


# --- garbage collection -------------------------------------------------------------------------
#
# A batch of rows is thousands of small dicts and lists, which trigger Python's cyclic garbage
# collector every 700 allocations; its full passes walk every object of the process (Django,
# pyarrow, the name tables), and rows hold no reference cycles for it to find. Freezing what
# exists and collecting less often cut the streaming pass's CPU by a sixth in the main process
# (measured in bench/RESULTS.md).
FEWER_COLLECTIONS = (20_000, 20, 100)


@contextmanager
def fewer_collections():
    """While streaming rows: older objects frozen out of the collector, young ones collected
    every 20,000 allocations instead of 700. Restored on the way out."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*FEWER_COLLECTIONS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def start_helper():
    """Initializer of a helper process that analyses batches (see ingest.analysis_pool)."""
    gc.freeze()
    gc.set_threshold(*FEWER_COLLECTIONS)
