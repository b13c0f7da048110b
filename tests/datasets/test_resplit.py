"""A split again keeps near duplicates together and reports their leakage as an upload does:
its near-duplicate pairs are found again from the parent's rows (they are not stored)."""
import json
import random

import pytest

from lifecycle.datasets import duplicates, ingest, operations, pipeline, queries, splits
from lifecycle.datasets.models import Dataset
from lifecycle.datasets.readers import ColumnMapping
from lifecycle.datasets.synthetic import write_jsonl

pytestmark = pytest.mark.django_db


def _chains(n, rng):
    """n chains of three messages, each one word away from the one before: A≈B and B≈C are
    near duplicates, A and C two words apart are not (keep-first makes the sets {A, B}, {C})."""
    words = [f"{rng.choice('bcdfghklmnprst')}{rng.choice('aeiou')}{rng.choice('bcdfghklmnprst')}{rng.choice('aeiou')}"
             f"{rng.choice('nrst')}" for _ in range(3000)]
    for chain in range(n):
        message = [rng.choice(words) for _ in range(24)]
        for step in range(3):
            if step:
                message[(step - 1) * 12] = rng.choice(words)
            yield {"text": " ".join(message), "label": ("billing", "shipping", "returns")[chain % 3]}


@pytest.fixture
def parent(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    write_jsonl(tmp_path / "d.jsonl", 3_000, seed=4, dup_rate=0.2)
    with open(tmp_path / "d.jsonl", "a") as out:
        out.writelines(json.dumps(row) + "\n" for row in _chains(150, random.Random(1)))
    dataset = Dataset.create(None, slug="near", name="Near", pii_policy=Dataset.PiiPolicy.ALLOW)
    options = ingest.Options.for_dataset(dataset, ColumnMapping({}), "reject")
    [version] = pipeline.upload(dataset, str(tmp_path / "d.jsonl"), "jsonl", options)
    assert version.dedup_report["near_duplicate_pairs"] > 50
    return version


def _split_of(version):
    return dict(version.examples.values_list("row", "split"))


def _near_pairs(version):
    """Every confirmed near-duplicate pair of the version's rows (the upload found the same)."""
    with queries.Scratch() as scratch:
        duplicates.find(scratch, queries.stage_version(scratch, version))
        pairs = scratch.sql("SELECT low, high FROM near").fetchall()
    assert len(pairs) == version.dedup_report["near_duplicate_pairs"]
    return pairs


def test_no_near_duplicate_pair_crosses_the_splits_of_a_split_again(parent):
    pairs = _near_pairs(parent)
    cluster = dict(parent.examples.values_list("row", "duplicate_cluster"))
    # Pairs between two duplicate sets (A≈B≈C, A≉C: keep-first makes {A, B} and {C}): a split
    # that keeps only the sets together can put B and C apart.
    between_sets = [(a, b) for a, b in pairs if cluster[a] != cluster[b]]
    assert len(between_sets) >= 10
    for seed in range(1, 4):
        child = operations.resplit_version(parent, splits.SplitOptions(seed=seed))
        split = _split_of(child)
        assert [pair for pair in pairs if split[pair[0]] != split[pair[1]]] == []
        assert child.leakage_report["near_duplicates"]["pairs"] == 0


def test_a_split_again_that_lets_duplicates_apart_counts_the_near_pairs_that_cross(parent):
    child = operations.resplit_version(parent, splits.SplitOptions(seed=2, keep_together="groups"))
    split = _split_of(child)
    crossing = sorted([a, b] for a, b in _near_pairs(parent) if split[a] != split[b])
    near = child.leakage_report["near_duplicates"]
    assert crossing and near["pairs"] == len(crossing)
    assert near["examples"] == crossing[:len(near["examples"])]
    assert child.leakage_report["accepted"] == ["near_duplicates", "exact_duplicates"]
