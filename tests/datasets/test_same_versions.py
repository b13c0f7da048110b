"""The same input and seed give the same versions, byte for byte: the rows (content_sha256)
of an upload and of each kind of child, and the upload's duplicate and leakage reports.
Pinned, so a rewrite of the pipeline's steps shows any change it makes to what users get;
a deliberate change re-pins them and says why in its commit."""
import hashlib
import json

import pytest

from lifecycle.datasets import ingest, operations, pipeline, splits
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.readers import ColumnMapping
from lifecycle.datasets.synthetic import write_jsonl

pytestmark = pytest.mark.django_db

MAPPING = {"group": "customer_id", "timestamp": "created_at"}


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.DATASET_PARALLEL_MIN_BYTES = 10**12  # one process: tests/datasets/test_ingest.py checks the helpers agree


def _upload(tmp_path, slug, policy, **extra):
    write_jsonl(tmp_path / f"{slug}.jsonl", 6_000, seed=11, pii_rate=0.1)
    dataset = Dataset.create(None, slug=slug, name=slug.title(), pii_policy=policy)
    options = ingest.Options.for_dataset(dataset, ColumnMapping(MAPPING), "reject", **extra)
    return pipeline.upload(dataset, str(tmp_path / f"{slug}.jsonl"), "jsonl", options)


def _digest(report):
    return hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()[:16]


def test_an_upload_and_its_children_are_the_versions_they_were(tmp_path):
    raw, redacted = _upload(tmp_path, "pinned", Dataset.PiiPolicy.REDACT)
    [by_time] = _upload(tmp_path, "by-time", Dataset.PiiPolicy.ALLOW, by_time=True)
    deduplicated = operations.remove_duplicates(raw)
    resplit = operations.resplit_version(raw, splits.SplitOptions(seed=5))
    got = {
        "upload": raw.content_sha256, "redacted": redacted.content_sha256, "by_time": by_time.content_sha256,
        "deduplicated": deduplicated.content_sha256, "resplit": resplit.content_sha256,
        "upload_dedup_report": _digest(raw.dedup_report), "upload_leakage_report": _digest(raw.leakage_report),
    }
    assert got == PINNED
    # What the pins cover: PII redacted, exact and near duplicates, groups and times.
    assert raw.dedup_report["exact_duplicate_rows"] and raw.dedup_report["near_duplicate_pairs"]
    assert raw.pii_report["rows_with_pii"] and raw.leakage_report["groups"] is not None


PINNED = {
    "upload": "8d01bf14f592a3c1aba306538303ee9dcc88915d4afa0e18b76e6fa476dfea4f",
    "redacted": "2fb6d0c07bec549304822de2e03e33308877c80f50689acc86be2ea06c8f1f2d",
    "by_time": "912b5608c2136e76c72a10267cbc0ffc92230ae3c53e93e99856c60e2e04b675",
    "deduplicated": "47de1449be2e884017cc025a442cb0654419cda8608cec13f0257acaddd4add9",
    # 2026-12-07: a split again keeps whole near-duplicate components together, as an upload
    # does (before, only the keep-first sets: near pairs between two sets could cross).
    "resplit": "8397cd57076395701fa1d313a73b1184960bb004faffadce25fa97b70b4c3b66",
    "upload_dedup_report": "592da77d4d6dadd7",
    "upload_leakage_report": "ba3d68362399e4d5",
}
