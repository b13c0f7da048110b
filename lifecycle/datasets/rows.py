"""What is computed from each row on its own: its content hash, PII matches, exact key and
LSH band keys. Free of Django, so a helper process can run it on batches (see ingest.py)."""
import hashlib
import json
from datetime import timezone as dt_timezone

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


def analyse(rows, hasher):
    """For a batch of clean rows: PII matches, content keys, row hashes, metadata as canonical
    JSON text, LSH band keys, and the
    low 16 bits of the MinHash signatures (kept to confirm near-duplicate candidates later:
    two different values agree by chance once in 65,536, for half the bytes)."""
    texts = [joined_text(row["text"], row["response"]) for row in rows]
    matches = pii.scan_many(texts)
    keys = [dedup.exact_key(text) for text in texts]
    metadata = [metadata_json(row["metadata"]) for row in rows]
    hashes = [row_sha256(r["text"], r["response"], r["label"], r["group"], r["timestamp"], m) for r, m in zip(rows, metadata)]
    signatures = hasher.signatures(texts)
    return matches, keys, hashes, metadata, hasher.band_keys(signatures), (signatures & 0xFFFF).astype("uint16")
