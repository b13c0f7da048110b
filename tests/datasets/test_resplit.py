"""A split again keeps near duplicates together and reports their leakage as an upload does:
its near-duplicate pairs are found again from the parent's rows (they are not stored)."""
import numpy as np
import pytest

from lifecycle.datasets import ingest, operations, pipeline, splits
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.readers import ColumnMapping
from lifecycle.datasets.synthetic import write_jsonl

pytestmark = pytest.mark.django_db


@pytest.fixture
def parent(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    write_jsonl(tmp_path / "d.jsonl", 3_000, seed=4, dup_rate=0.2)
    dataset = Dataset.create(None, slug="near", name="Near", pii_policy=Dataset.PiiPolicy.ALLOW)
    options = ingest.Options.for_dataset(dataset, ColumnMapping({}), "reject")
    [version] = pipeline.upload(dataset, str(tmp_path / "d.jsonl"), "jsonl", options)
    assert version.dedup_report["near_duplicate_pairs"] > 50
    return version


def _split_of(version):
    return dict(version.examples.values_list("row", "split"))


def test_no_near_duplicate_pair_crosses_the_splits_of_a_split_again(parent):
    pairs = parent.dedup_report["pairs"]  # the lowest 50 confirmed pairs
    for seed in range(1, 6):
        child = operations.resplit_version(parent, splits.SplitOptions(seed=seed))
        split = _split_of(child)
        assert [pair for pair in pairs if split[pair[0]] != split[pair[1]]] == []
        assert child.leakage_report["near_duplicates"]["pairs"] == 0


def test_a_split_again_that_lets_duplicates_apart_counts_the_near_pairs_that_cross(parent):
    child = operations.resplit_version(parent, splits.SplitOptions(seed=2, keep_together="groups"))
    split = _split_of(child)
    crossing = [pair for pair in parent.dedup_report["pairs"] if split[pair[0]] != split[pair[1]]]
    near = child.leakage_report["near_duplicates"]
    assert crossing and near["pairs"] >= len(crossing)
    assert near["pairs"] <= parent.dedup_report["near_duplicate_pairs"]
    assert np.all([split[a] != split[b] for a, b in near["examples"]])
    assert child.leakage_report["accepted"] == ["near_duplicates", "exact_duplicates"]
